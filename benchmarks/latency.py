"""Single-writer latency (peer up, peer down) and the cost of the peer probe.

The raw baselines do the durable work the promise of ``write()`` requires and nothing else: one
``write()`` of the same line to a file opened with ``O_APPEND`` and an ``fsync()``, per file, per
entry (descriptors kept open). Peer up: the local log and the peer's log through the mount.
Peer down: the local log and the local cache. twinlog and the baseline alternate in blocks so
that both see the same state of the machine.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._env import Row, bench_pair, percentile
from twinlog import TwinLog
from twinlog.entry import check_message, encode_entry

__all__ = ["FIELDS", "MESSAGE", "run_latency", "run_probe"]

MESSAGE = "cluster resource db-primary moved from node a to node b after a health-check failure"
FIELDS = {"level": "WARNING", "component": "pacemaker"}
_BLOCK = 50


def _raw_appender(paths: list[Path]) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640) for p in paths]

    def append(line: bytes) -> None:
        for fd in fds:
            os.write(fd, line)
            os.fsync(fd)

    def close() -> None:
        for fd in fds:
            os.close(fd)

    return append, close


def _interleaved(
    log: TwinLog, raw_paths: list[Path], samples: int
) -> tuple[list[float], list[float]]:
    """Latencies of ``log.write()`` and of the raw appends of the same line, in blocks."""
    fields_json = check_message(MESSAGE, FIELDS, log.config.max_message_bytes)
    entry = log.write(MESSAGE, **FIELDS)  # warm-up: starts the peer worker
    line = encode_entry(entry.node, entry.seq, entry.ts, MESSAGE, fields_json)
    append, close = _raw_appender(raw_paths)
    ours: list[float] = []
    raw: list[float] = []
    clock = time.perf_counter
    try:
        append(line)
        while len(ours) < samples:
            for _ in range(min(_BLOCK, samples - len(ours))):
                t0 = clock()
                log.write(MESSAGE, **FIELDS)
                ours.append(clock() - t0)
            for _ in range(min(_BLOCK, samples - len(raw))):
                t0 = clock()
                append(line)
                raw.append(clock() - t0)
    finally:
        close()
    return ours, raw


def _rows(prefix: str, label: str, ours: list[float], raw: list[float]) -> list[Row]:
    rows = []
    for pct in (50, 99):
        a, b = percentile(ours, pct) * 1e3, percentile(raw, pct) * 1e3
        ratio = a / b
        target = "<= 1.2" if pct == 50 else ""
        rows.append(
            Row(
                key=f"{prefix}.p{pct}",
                label=f"{label}: write() p{pct}",
                twinlog=f"{a:.3f} ms",
                baseline=f"{b:.3f} ms",
                ratio=ratio,
                target=target,
                met=(ratio <= 1.2) if target else None,
                note=f"{len(ours)} writes each",
            )
        )
    return rows


def run_latency(base: Path, samples: int) -> tuple[list[Row], float]:
    """The peer-up and peer-down rows, and the peer-up p50 of ``write()`` in seconds."""
    rows: list[Row] = []
    with bench_pair(base, "single") as pair:
        with pair.twin("a") as log:
            ours, raw = _interleaved(
                log,
                [pair.log_dir("a") / "bench-raw.log", pair.peer_dir("a") / "bench-raw.log"],
                samples,
            )
            assert log.last_reason == "ok", log.last_reason
        rows += _rows("single.peer_up", "1 writer, peer up", ours, raw)
        write_p50 = percentile(ours, 50)
        pair.cut("a")
        with pair.twin("a") as log:
            ours, raw = _interleaved(
                log,
                [pair.log_dir("a") / "bench-raw.log", pair.log_dir("a") / "bench-raw.cache"],
                samples,
            )
            assert log.last_reason == "not_mounted", log.last_reason
        rows += _rows("single.peer_down", "1 writer, peer down", ours, raw)
    return rows, write_p50


def _probe_once(log: TwinLog) -> None:
    # What each write() spends before it may touch the peer: the checks without peer I/O
    # (mount table, stuck workers) and the identity check in the worker.
    assert log._precheck() is None
    log._remote.call(
        "check_dir", log.config.peer, log._local_ops.dev_ino(), timeout=log.config.probe_timeout
    )


def run_probe(base: Path, samples: int, write_p50: float) -> list[Row]:
    rows: list[Row] = []
    with bench_pair(base, "probe") as pair, pair.twin("a") as log:
        log.write(MESSAGE, **FIELDS)
        costs = []
        for _ in range(samples):
            t0 = time.perf_counter()
            _probe_once(log)
            costs.append(time.perf_counter() - t0)
        cost = percentile(costs, 50)
        rows.append(
            Row(
                key="probe.cost",
                label="probe per write, healthy peer (p50)",
                twinlog=f"{cost * 1e6:.0f} us",
                baseline=f"{write_p50 * 1e3:.3f} ms write()",
                ratio=cost / write_p50,
                note="mount/stuck checks + identity check in the worker; ratio = share of write()",
            )
        )
        proc = log._remote._proc
        assert proc is not None
        timeout = log.config.probe_timeout
        os.kill(proc.pid, signal.SIGSTOP)  # the worker hangs like a call on a dead NFS mount
        try:
            t0 = time.perf_counter()
            log.write(MESSAGE, **FIELDS)
            hung = time.perf_counter() - t0
            reason = log.last_reason
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        rows.append(
            Row(
                key="probe.hung",
                label="hung peer (worker SIGSTOPped): write() returns",
                twinlog=f"{hung:.3f} s",
                baseline=f"probe_timeout {timeout:g} s",
                ratio=hung / timeout,
                target="<= 1.2",
                met=hung <= 1.2 * timeout and reason == "timeout",
                note=f"reason {reason!r}; entry cached",
            )
        )
        t0 = time.perf_counter()
        log.write(MESSAGE, **FIELDS)
        recover = time.perf_counter() - t0
        rows.append(
            Row(
                key="probe.recover",
                label="next write() after the hang (new worker, drain)",
                twinlog=f"{recover * 1e3:.1f} ms",
                note=f"reason {log.last_reason!r}",
            )
        )
    return rows
