"""Seek, don't scan: a 15-minute window and ``tail -n 100`` out of a long history, against a
full ``read()``.

The history spans 30 days of both nodes' entries, in segments of the default ``rotate_bytes``
(the last ones smaller in a ``--quick`` run), each rotated by ``TwinLog.rotate()`` as a writer
would (which builds its seek index). The peer's entries arrive an hour late (as a drain
delivers them), so the log is in arrival order, not time order. Each measurement runs in a
fresh child process whose peak RSS is reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._env import Row, bench_pair, run_child
from benchmarks.bigdata import RSS_LIMIT_MB
from benchmarks.latency import FIELDS, MESSAGE
from twinlog.entry import check_message, encode_entry, format_ts

__all__ = ["run_seek"]

_BASE_MICROS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
_SPAN_MICROS = 30 * 86_400 * 1_000_000
_LATE_MICROS = 3_600 * 1_000_000  # the peer's entries arrive an hour after they were written
_WINDOW_MICROS = 15 * 60 * 1_000_000
_TAIL = 100


def _history(count: int) -> Iterator[bytes]:
    """``count`` lines alternating a and b over 30 days; b's timestamps an hour behind."""
    fields_json = check_message(MESSAGE, FIELDS, 1 << 16)
    step = _SPAN_MICROS // count
    for i in range(count):
        origin = "ab"[i % 2]
        late = _LATE_MICROS if origin == "b" else 0
        seq = i // 2 + 1
        ts = format_ts(_BASE_MICROS + _LATE_MICROS + i * step - late)
        yield encode_entry(origin, seq, ts, f"{MESSAGE} #{seq}", fields_json)


def run_seek(base: Path, entries: int) -> list[Row]:
    rotate_bytes = 64 << 20 if entries >= 1_000_000 else 64 << 10
    with bench_pair(base, "seek", rotate_bytes=rotate_bytes) as pair:
        pair.cut("a")  # rotation needs no peer; retention (none here) would
        log_path = pair.log_dir("a") / "twinlog.log"
        rotations: list[float] = []
        size = 0
        batch: list[bytes] = []
        pending = 0
        lines = _history(entries)
        # Small batches: the children's peak RSS (ru_maxrss survives fork and exec) must be
        # theirs, not this process's.
        # Rotated here, by rotate(), not by the write path once rotate_bytes is reached.
        with pair.twin("a", rotate_bytes=1 << 50) as log:
            for line in lines:
                batch.append(line)
                if len(batch) >= 10_000:
                    written = _append(log_path, batch)
                    size, pending, batch = size + written, pending + written, []
                if pending >= rotate_bytes:
                    # A running writer has read what it appended; the timed part is the
                    # rotation itself, which reads the segment's line heads for its index.
                    log.reconcile()
                    t0 = time.perf_counter()
                    log.rotate()
                    rotations.append(time.perf_counter() - t0)
                    pending = 0
            size += _append(log_path, batch)
            log.reconcile()  # the active log's checkpoint, as a running writer leaves it
        segments = len(rotations)
        config = pair.config_dict("a")
        since = _BASE_MICROS + _LATE_MICROS + _SPAN_MICROS // 2
        window = run_child(
            "read",
            {
                "config": config,
                "since": format_ts(since),
                "until": format_ts(since + _WINDOW_MICROS),
            },
        )
        tail = run_child("read", {"config": config, "last": _TAIL})
        full = run_child("read", {"config": config})
    assert full["entries"] == entries, full
    assert tail["entries"] == min(_TAIL, entries), tail
    history = f"{entries:,} entries, {size / 2**20:.0f} MiB, {segments} segments + active log"
    per_rotation = sum(rotations) / segments if segments else 0.0
    return [
        Row(
            key="seek.window.time",
            label=f"read(since, until): 15 minutes of 30 days ({history})",
            twinlog=f"{window['seconds']:.3f} s",
            baseline=f"{full['seconds']:.2f} s full read()",
            ratio=window["seconds"] / full["seconds"],
            target="< 0.5 s at 10M entries",
            met=window["seconds"] < 0.5,
            note=(
                f"{window['entries']:,} entries in the window; rotate() with the index: "
                f"{per_rotation:.2f} s per {rotate_bytes >> 20 or rotate_bytes >> 10}"
                f"{' MiB' if rotate_bytes >> 20 else ' KiB'} segment"
            ),
        ),
        Row(
            key="seek.window.rss",
            label="read(since, until): peak RSS",
            twinlog=f"{window['rss_mb']:.1f} MB",
            baseline=f"{full['rss_mb']:.1f} MB full read()",
            target=f"< {RSS_LIMIT_MB:.0f} MB",
            met=window["rss_mb"] < RSS_LIMIT_MB,
        ),
        Row(
            key="seek.tail.time",
            label=f"read(last={_TAIL}), what tail -n {_TAIL} reads ({history})",
            twinlog=f"{tail['seconds']:.3f} s",
            baseline=f"{full['seconds']:.2f} s full read()",
            ratio=tail["seconds"] / full["seconds"],
            target="< 0.1 s at 10M entries",
            met=tail["seconds"] < 0.1,
            note=f"peak RSS {tail['rss_mb']:.1f} MB",
        ),
    ]


def _append(path: Path, lines: list[bytes]) -> int:
    with open(path, "ab") as f:
        written = f.write(b"".join(lines))
        f.flush()
        os.fsync(f.fileno())
    return written
