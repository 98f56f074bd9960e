"""Single-writer latency (peer up, peer down) and the cost of the peer probe.

The raw baselines do the durable work the promise of ``write()`` requires and nothing else: one
``write()`` of the same line to a file opened with ``O_APPEND`` and an ``fsync()``, per file, per
entry (descriptors kept open). Peer up: the local log and the peer's log through the mount.
Peer down: the local log and the local cache. twinlog and the baseline alternate in blocks so
that both see the same state of the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from benchmarks._env import Row, bench_pair, percentile, tmpfs
from twinlog import TwinLog
from twinlog.entry import check_message, encode_entry

__all__ = ["FIELDS", "MESSAGE", "Series", "run_latency", "run_overhead", "run_probe"]

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


def _helper_appender(
    local: Path, remote: Path, *, look_first: bool = False
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """The raw appends, the second one done by a helper process on request over a pipe: the
    least a design with killable peer I/O can cost (no Python in the helper's loop but the
    calls themselves, one round trip per entry).

    ``look_first``: one more round trip before the local append (the helper only ``fstat``s
    its file), the shape of a write that has to look at the peer (lock, tail, cache) before
    its local append, because a drain may have to come first, then append there after it."""
    req_r, req_w = os.pipe()
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper
        # Only its own two pipe ends: holding another helper's request pipe open would keep
        # that helper from ever seeing EOF (and its close() waiting for good).
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2 and int(name) not in (req_r, ack_w):
                with contextlib.suppress(OSError):
                    os.close(int(name))
        fd = os.open(remote, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        while data := os.read(req_r, 1 << 16):
            if data == b"?":
                os.fstat(fd)
            else:
                os.write(fd, data)
                os.fsync(fd)
            os.write(ack_w, b"k")
        os._exit(0)
    os.close(req_r)
    os.close(ack_w)
    lfd = os.open(local, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def append(line: bytes) -> None:
        if look_first:
            os.write(req_w, b"?")
            os.read(ack_r, 1)
        os.write(lfd, line)
        os.fsync(lfd)
        os.write(req_w, line)
        os.read(ack_r, 1)

    def close() -> None:
        os.close(lfd)
        os.close(req_w)
        os.waitpid(pid, 0)
        os.close(ack_r)

    return append, close


def _interleaved(
    log: TwinLog, raw_paths: list[Path], samples: int
) -> tuple[list[float], list[float]]:
    """Latencies of ``log.write()`` and of the raw appends of the same line, in blocks."""
    ours, series = _interleaved_with(log, [_raw_appender(raw_paths)], samples)
    return ours, series[0]


def _interleaved_with(
    log: TwinLog,
    appenders: list[tuple[Callable[[bytes], None], Callable[[], None]]],
    samples: int,
) -> tuple[list[float], list[list[float]]]:
    """Latencies of ``log.write()`` and of each appender's append of the same line, in turns
    of blocks (so that all see the same state of the machine)."""
    fields_json = check_message(MESSAGE, FIELDS, log.config.max_message_bytes)
    entry = log.write(MESSAGE, **FIELDS)  # warm-up: starts the peer worker
    line = encode_entry(entry.node, entry.seq, entry.ts, MESSAGE, fields_json)
    ours: list[float] = []
    series: list[list[float]] = [[] for _ in appenders]
    clock = time.perf_counter
    try:
        for append, _ in appenders:
            append(line)
        while len(ours) < samples:
            for _ in range(min(_BLOCK, samples - len(ours))):
                t0 = clock()
                log.write(MESSAGE, **FIELDS)
                ours.append(clock() - t0)
            for (append, _), samples_of in zip(appenders, series, strict=True):
                for _ in range(min(_BLOCK, samples - len(samples_of))):
                    t0 = clock()
                    append(line)
                    samples_of.append(clock() - t0)
    finally:
        for _, close in appenders:
            close()
    return ours, series


def _rows(
    prefix: str, label: str, ours: list[float], raw: list[float], extra: str = ""
) -> list[Row]:
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
                note=f"{len(ours)} writes each{extra}",
            )
        )
    return rows


class Series(NamedTuple):
    """The single-writer latencies of one run, in seconds: peer up (``write()``, the raw pair,
    the helper-process floor, the floor with a look first; how many writes made one round trip
    to the peer), then peer down (``write()``, the raw pair). Alternated in blocks."""

    up: list[float]
    raw_up: list[float]
    floor: list[float]
    floor2: list[float]
    one_trip: int
    down: list[float]
    raw_down: list[float]

    def p50(self, name: str) -> float:
        series: list[float] = getattr(self, name)
        return percentile(series, 50)


def _measure(base: Path, name: str, samples: int) -> Series:
    """Node a of a fresh pair under ``base``: peer up, then with the mount removed."""
    with bench_pair(base, name) as pair:
        local, remote = pair.log_dir("a"), pair.peer_dir("a")
        with pair.twin("a") as log:
            up, (raw_up, floor, floor2) = _interleaved_with(
                log,
                [
                    _raw_appender([local / "bench-raw.log", remote / "bench-raw.log"]),
                    _helper_appender(local / "bench-floor.log", remote / "bench-floor.log"),
                    _helper_appender(
                        local / "bench-floor2.log", remote / "bench-floor2.log", look_first=True
                    ),
                ],
                samples,
            )
            assert log.last_reason == "ok", log.last_reason
            one_trip = log.peer_worker_stats()["one_trip"]
        pair.cut("a")
        with pair.twin("a") as log:
            down, raw_down = _interleaved(
                log, [local / "bench-raw.log", local / "bench-raw.cache"], samples
            )
            assert log.last_reason == "not_mounted", log.last_reason
    return Series(up, raw_up, floor, floor2, one_trip, down, raw_down)


def run_latency(base: Path, samples: int) -> tuple[list[Row], Series]:
    """The peer-up and peer-down rows, and the latencies they come from."""
    m = _measure(base, "single", samples)
    rows = _rows(
        "single.peer_up",
        "1 writer, peer up",
        m.up,
        m.raw_up,
        f"; {m.one_trip} of {len(m.up) + 1} writes in one round trip to the peer",
    )
    b = m.p50("raw_up") * 1e3
    for key, series, label, note in (
        (
            "single.peer_up.floor",
            "floor",
            "raw with the peer append in a helper process (p50)",
            "the same appends, the second one a pipe round trip away: the floor of "
            "killable peer I/O, and the shape of a write with nothing to drain; write() "
            f"p50 is {m.p50('up') / m.p50('floor'):.2f}x this",
        ),
        (
            "single.peer_up.floor2",
            "floor2",
            "raw with a look at the helper first, then both appends (p50)",
            "two round trips (look at the peer, append here, append there): the shape of "
            "a write that has to look first",
        ),
    ):
        a = m.p50(series) * 1e3
        rows.append(
            Row(
                key=key,
                label=f"1 writer, peer up: {label}",
                twinlog=f"{a:.3f} ms",
                baseline=f"{b:.3f} ms",
                ratio=a / b,
                note=note,
            )
        )
    rows += _rows("single.peer_down", "1 writer, peer down", m.down, m.raw_down)
    return rows, m


def run_overhead(base: Path, samples: int, on_base: Series | None) -> list[Row]:
    """The single-writer series again with both directories on tmpfs, where fsync is free:
    what a ``write()`` costs outside the disk (Python, system calls, the round trip to the peer
    worker, wake-ups), against the raw appends (a few microseconds there). Free of the disk's
    noise, these rows are the ones to compare when changing the write path.

    Hot, too: nothing sleeps in an fsync, so the CPU's caches stay warm. With ``on_base`` (the
    same series measured on ``base`` by :func:`run_latency`), the note says what 1.2x of the
    raw pair there leaves for that cost."""
    with tmpfs(base) as fast:
        m = _measure(fast, "overhead", samples)
    rows: list[Row] = []
    for side, extra in (
        ("up", f" (the helper-process floor: {m.p50('floor') * 1e6:.0f} us)"),
        ("down", ""),
    ):
        ours, raw = m.p50(side), m.p50(f"raw_{side}")
        note = f"{(ours - raw) * 1e6:.0f} us outside the disk{extra}"
        if on_base is not None:
            here = on_base.p50(f"raw_{side}")
            note += f"; within 1.2x of the raw pair on {base} ({here * 1e3:.3f} ms) leaves "
            note += f"{here * 0.2 * 1e6:.0f} us"
        rows.append(
            Row(
                key=f"overhead.peer_{side}",
                label=f"1 writer, peer {side}, on tmpfs (fsync free): write() p50",
                twinlog=f"{ours * 1e6:.0f} us",
                baseline=f"{raw * 1e6:.0f} us",
                note=note,
            )
        )
    return rows


def _probe_once(log: TwinLog) -> None:
    # What each write() spends before it may touch the peer: the checks without peer I/O
    # (mount table, stuck workers). The identity check rides in the request that locks the
    # peer (measured apart, as a round trip of its own).
    assert log._sides.reach.precheck() is None


def _identity_check(log: TwinLog) -> None:
    log._sides.reach.ops.check_identity(log.config.peer, log._local_ops.dev_ino())


def _share_of_write_row(
    key: str, label: str, step: Callable[[], None], *, samples: int, write_p50: float, note: str
) -> Row:
    """The p50 cost of ``step`` over ``samples`` runs, as a share of a write's p50."""
    costs = []
    for _ in range(samples):
        t0 = time.perf_counter()
        step()
        costs.append(time.perf_counter() - t0)
    cost = percentile(costs, 50)
    return Row(
        key=key,
        label=label,
        twinlog=f"{cost * 1e6:.0f} us",
        baseline=f"{write_p50 * 1e3:.3f} ms write()",
        ratio=cost / write_p50,
        note=note,
    )


def run_probe(base: Path, samples: int, write_p50: float) -> list[Row]:
    rows: list[Row] = []
    with bench_pair(base, "probe") as pair, pair.twin("a") as log:
        log.write(MESSAGE, **FIELDS)
        rows.append(
            _share_of_write_row(
                "probe.cost",
                "probe per write, healthy peer (p50)",
                lambda: _probe_once(log),
                samples=samples,
                write_p50=write_p50,
                note="mount table + stuck workers; ratio = share of write()",
            )
        )
        rows.append(
            _share_of_write_row(
                "probe.identity",
                "identity check in the worker (p50)",
                lambda: _identity_check(log),
                samples=min(samples, 500),
                write_p50=write_p50,
                note="as a round trip of its own; a write sends it as the first stage of "
                "the request that locks the peer",
            )
        )
        proc = log._sides.reach.remote._proc
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
