#!/opt/twinlog/venv/bin/python
"""Run INSIDE a lab VM as the service user, with the deployed twinlog (/opt/twinlog/venv).

  twinwriter.py write TAG N [PAUSE]   write N entries through TwinLog.write(); one line each:
                                      ACK <id> <seconds the write took> <last_reason>
  twinwriter.py until TAG PAUSE       write until stdin closes (same ACK lines)
  twinwriter.py raw N                 the baseline: N lines appended to LOG_DIR/rawbench.log and
                                      PEER_DIR/rawbench.log, each under a lockf lock of that
                                      directory's rawbench.lock, fsync each; prints RAW <s>
  twinwriter.py bench N               N twinlog writes, prints TWIN <seconds>

Every mode prints READY when the TwinLog is open and DONE at the end.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import time

from twinlog import Config, TwinLog

CONFIG = os.environ.get("TWINLOG_CONFIG", "/etc/twinlog/twinlog.toml")


def _write(log: TwinLog, tag: str, i: int) -> None:
    started = time.monotonic()
    entry = log.write(f"{tag} {i}", tag=tag, i=i)
    took = time.monotonic() - started
    print(f"ACK {entry.id} {took:.4f} {log.last_reason}", flush=True)


def _stdin_closed() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and sys.stdin.readline() == ""


def _raw(config: Config, n: int) -> float:
    paths = [
        os.path.join(str(config.log_dir), "rawbench"),
        os.path.join(str(config.peer_dir), "rawbench"),
    ]
    fds = []
    for base in paths:
        lock = os.open(base + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        log = os.open(base + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        fds.append((lock, log))
    line = b'{"raw": "x' + b"y" * 60 + b'"}\n'
    started = time.monotonic()
    for _ in range(n):
        for lock, _ in fds:  # one fixed order, like twinlog's
            fcntl.lockf(lock, fcntl.LOCK_EX)
        for _, log in fds:
            os.write(log, line)
            os.fsync(log)
        for lock, _ in reversed(fds):
            fcntl.lockf(lock, fcntl.LOCK_UN)
    took = time.monotonic() - started
    for base in paths:
        for suffix in (".lock", ".log"):
            os.unlink(base + suffix)
    return took


def main(argv: list[str]) -> int:
    mode = argv[1]
    config = Config.load(CONFIG)
    if mode == "raw":
        print("READY", flush=True)
        print(f"RAW {_raw(config, int(argv[2])):.4f}", flush=True)
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
        elif mode == "bench":
            n = int(argv[2])
            started = time.monotonic()
            for i in range(n):
                log.write(f"bench {i}", i=i)
            print(f"TWIN {time.monotonic() - started:.4f}", flush=True)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
