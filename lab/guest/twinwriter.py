#!/opt/twinlog/venv/bin/python
"""Run INSIDE a lab VM as the service user, with the deployed twinlog (/opt/twinlog/venv).

  twinwriter.py write TAG N [PAUSE]   write N entries through TwinLog.write(); one line each:
                                      ACK <id> <seconds the write took> <last_reason>
  twinwriter.py until TAG PAUSE       write until stdin closes (same ACK lines)
  twinwriter.py raw N [B]             the baseline: N lines appended to LOG_DIR/rawbench.log and
                                      PEER_DIR/rawbench.log, B at a time (1), each batch under a
                                      lockf lock of that directory's rawbench.lock, one write and
                                      fsync per file; prints MEASURED
  twinwriter.py bench N               N twinlog writes after one unmeasured; prints MEASURED
  twinwriter.py bench_many N B        the same with write_many() of B entries; prints MEASURED
  twinwriter.py cache N B             N entries in write_many() batches of B, nothing measured;
                                      prints ACKED <first id> <last id>
  twinwriter.py reconcile             one reconcile(); prints MEASURED (N: pushed + pulled)
  twinwriter.py read                  read() of the whole log; prints MEASURED (N: entries)

MEASURED <mode> <N> <seconds> <JSON>: the JSON counts, by operation, the NFS RPCs the node made
on the peer mount meanwhile (from /proc/self/mountstats: the mount's counters, which every
process of the node adds to, twinlog's worker included). The modes that write print ACKED too.
Every mode prints READY when the TwinLog is open and DONE at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import sys
import time
from collections.abc import Callable

from twinlog import Config, Entry, TwinLog

CONFIG = os.environ.get("TWINLOG_CONFIG", "/etc/twinlog/twinlog.toml")
MOUNTSTATS = "/proc/self/mountstats"


def _write(log: TwinLog, tag: str, i: int) -> None:
    started = time.monotonic()
    entry = log.write(f"{tag} {i}", tag=tag, i=i)
    took = time.monotonic() - started
    print(f"ACK {entry.id} {took:.4f} {log.last_reason}", flush=True)


def _stdin_closed() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and sys.stdin.readline() == ""


def rpc_counts(mount_point: str) -> dict[str, int]:
    """RPCs made so far on the NFS mount at ``mount_point``, by operation: the first number of
    each line in its "per-op statistics" section (``OP: ops transmissions timeouts ...``)."""
    counts: dict[str, int] = {}
    ours = per_op = False
    with open(MOUNTSTATS) as stats:
        for line in stats:
            if line.startswith("device "):
                ours = f" mounted on {mount_point} with fstype nfs" in line
                per_op = False
            elif ours and line.strip() == "per-op statistics":
                per_op = True
            elif ours and per_op and ":" in line:
                op, _, numbers = line.strip().partition(":")
                counts[op] = int(numbers.split()[0])
    return counts


def _measured(mode: str, peer_dir: str, run: Callable[[], int]) -> None:
    """Time ``run`` (it returns its N) and count the peer mount's RPCs around it."""
    before = rpc_counts(peer_dir)
    started = time.monotonic()
    n = run()
    took = time.monotonic() - started
    after = rpc_counts(peer_dir)
    rpcs = {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}
    print(f"MEASURED {mode} {n} {took:.4f} {json.dumps(rpcs)}", flush=True)


def _acked(entries: list[Entry]) -> None:
    if entries:
        print(f"ACKED {entries[0].id} {entries[-1].id}", flush=True)


def _raw(config: Config, n: int, batch: int) -> None:
    paths = [
        os.path.join(str(config.log_dir), "rawbench"),
        os.path.join(str(config.peer_dir), "rawbench"),
    ]
    fds = []
    for base in paths:
        lock = os.open(base + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        log = os.open(base + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        fds.append((lock, log))
    lines = (b'{"raw": "x' + b"y" * 60 + b'"}\n') * batch

    def appends() -> int:
        for _ in range(n // batch):
            for lock, _ in fds:  # one fixed order, like twinlog's
                fcntl.lockf(lock, fcntl.LOCK_EX)
            for _, log in fds:
                os.write(log, lines)
                os.fsync(log)
            for lock, _ in reversed(fds):
                fcntl.lockf(lock, fcntl.LOCK_UN)
        return n // batch * batch

    _measured("raw" if batch == 1 else "raw_many", str(config.peer_dir), appends)
    for base in paths:
        for suffix in (".lock", ".log"):
            os.unlink(base + suffix)


def _batches(log: TwinLog, tag: str, n: int, batch: int) -> list[Entry]:
    entries: list[Entry] = []
    for first in range(0, n, batch):
        items = [(f"{tag} {i}", {"i": i}) for i in range(first, min(n, first + batch))]
        entries += log.write_many(items)
    return entries


def _bench(log: TwinLog, mode: str, argv: list[str]) -> None:
    peer_dir = str(log.config.peer_dir)
    entries: list[Entry] = []
    if mode == "bench":
        n = int(argv[2])
        entries.append(log.write("bench warm-up"))  # the first contact is not the steady state

        def writes() -> int:
            entries.extend(log.write(f"bench {i}", i=i) for i in range(n))
            return n

        _measured(mode, peer_dir, writes)
    elif mode == "bench_many":
        n, batch = int(argv[2]), int(argv[3])
        entries += log.write_many(["bench_many warm-up"])

        def batches() -> int:
            entries.extend(_batches(log, mode, n, batch))
            return n

        _measured(mode, peer_dir, batches)
    elif mode == "cache":
        entries = _batches(log, mode, int(argv[2]), int(argv[3]))
    elif mode == "reconcile":

        def reconcile() -> int:
            result = log.reconcile()
            print(f"RECONCILED {result}", flush=True)
            return result.pushed + result.pulled

        _measured(mode, peer_dir, reconcile)
    elif mode == "read":
        _measured(mode, peer_dir, lambda: sum(1 for _ in log.read()))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    _acked(entries)


def main(argv: list[str]) -> int:
    mode = argv[1]
    config = Config.load(CONFIG)
    if mode == "raw":
        print("READY", flush=True)
        _raw(config, int(argv[2]), int(argv[3]) if len(argv) > 3 else 1)
        print("DONE", flush=True)
        return 0
    with TwinLog(config) as log:
        print("READY", flush=True)
        if mode == "write":
            pause = float(argv[4]) if len(argv) > 4 else 0.0
            for i in range(int(argv[3])):
                _write(log, argv[2], i)
                if pause:
                    time.sleep(pause)
        elif mode == "until":
            i = 0
            while not _stdin_closed():
                _write(log, argv[2], i)
                i += 1
                time.sleep(float(argv[3]))
        else:
            _bench(log, mode, argv)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
