"""Big logs: draining a large cache, and ``read()`` / ``verify()`` over large logs.

The files are generated directly (the same lines ``write()`` would produce), then each node
opens them once with the peer unreachable or converged (what a long-running writer would have
done: the checkpoint and any rotation are written), and the timed part runs in a fresh child
process whose peak RSS (and its peer worker's) is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._env import BenchPair, Row, bench_pair, run_child
from benchmarks.latency import FIELDS, MESSAGE
from twinlog.entry import check_message, encode_entry, format_ts

__all__ = ["RSS_LIMIT_MB", "run_drain", "run_read_verify"]

RSS_LIMIT_MB = 100.0
_BASE_MICROS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _lines(origins: list[str], count: int) -> Iterator[bytes]:
    """``count`` entry lines, round-robin over ``origins``, each origin's seqs from 1."""
    fields_json = check_message(MESSAGE, FIELDS, 1 << 16)
    seqs = dict.fromkeys(origins, 0)
    for i in range(count):
        origin = origins[i % len(origins)]
        seqs[origin] += 1
        seq = seqs[origin]
        yield encode_entry(
            origin, seq, format_ts(_BASE_MICROS + i), f"{MESSAGE} #{seq}", fields_json
        )


def _write_file(path: Path, lines: Iterator[bytes]) -> int:
    size = 0
    with open(path, "wb") as f:
        batch: list[bytes] = []
        for line in lines:
            batch.append(line)
            if len(batch) >= 10_000:
                size += f.write(b"".join(batch))
                batch.clear()
        size += f.write(b"".join(batch))
        f.flush()
        os.fsync(f.fileno())
    return size


def _cat_append(src: Path, dst: Path) -> float:
    """``cat src >> dst`` and an fsync of ``dst``: seconds."""
    t0 = time.perf_counter()
    with open(dst, "ab") as out:
        subprocess.run(["cat", os.fspath(src)], stdout=out, check=True)
        os.fsync(out.fileno())
    return time.perf_counter() - t0


def _mb(value: float) -> str:
    return f"{value:.1f} MB"


def run_drain(base: Path, entries: int) -> list[Row]:
    with bench_pair(base, "drain") as pair:
        pair.cut("a")
        log_dir = pair.log_dir("a")
        size = _write_file(log_dir / "twinlog.log", _lines(["a"], entries))
        shutil.copyfile(log_dir / "twinlog.log", log_dir / "twinlog.cache")
        raw_source = log_dir / "bench-raw-cache"  # the same bytes, for the baseline
        shutil.copyfile(log_dir / "twinlog.log", raw_source)
        with pair.twin("a") as log:  # a writer that had been running with the peer down
            assert not log.reconcile().peer_reachable
        pair.connect()
        raw_target = pair.peer_dir("a") / "bench-raw-drain.log"
        baseline = _cat_append(raw_source, raw_target)
        result = run_child("drain", {"config": pair.config_dict("a")})
        baseline = min(baseline, _cat_append(raw_source, raw_target))
        assert result["pushed"] == entries, result
    seconds = result["reconcile_s"]
    peak = max(result["rss_mb"], result["worker_rss_mb"])
    return [
        Row(
            key="drain.time",
            label=f"drain {entries:,} cached entries ({size / 2**20:.0f} MiB) to the peer",
            twinlog=f"{seconds:.2f} s",
            baseline=f"{baseline:.2f} s cat >> log + fsync",
            ratio=baseline / seconds,
            target=">= 0.5",
            met=baseline / seconds >= 0.5,
            note=f"reconcile() in a fresh process; opening took {result['open_s']:.2f} s",
        ),
        Row(
            key="drain.rss",
            label="drain: peak RSS (writer process / peer worker)",
            twinlog=f"{_mb(result['rss_mb'])} / {_mb(result['worker_rss_mb'])}",
            baseline=f"{_mb(result['start_rss_mb'])} at start",
            target=f"< {RSS_LIMIT_MB:.0f} MB",
            met=peak < RSS_LIMIT_MB,
        ),
    ]


def _raw_scan(paths: list[Path], *, parse: bool) -> float:
    """Read every line of ``paths`` (and ``json.loads`` it when ``parse``): seconds."""
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if parse:
                    json.loads(line)
    return time.perf_counter() - t0


def _log_files(pair: BenchPair, node: str) -> list[Path]:
    return sorted(pair.log_dir(node).glob("twinlog.log*"))


def run_read_verify(base: Path, entries: int) -> list[Row]:
    with bench_pair(base, "read") as pair:
        path_a = pair.log_dir("a") / "twinlog.log"
        size = _write_file(path_a, _lines(["a", "b"], entries))
        shutil.copyfile(path_a, pair.log_dir("b") / "twinlog.log")
        for node in ("a", "b"):  # converged writers: checkpoints (and rotation) written
            with pair.twin(node) as log:
                assert log.reconcile().peer_reachable
        read = run_child("read", {"config": pair.config_dict("a")})
        read_base = _raw_scan(_log_files(pair, "a"), parse=True)
        verify = run_child("verify", {"config": pair.config_dict("a")})
        verify_base = _raw_scan(_log_files(pair, "a") + _log_files(pair, "b"), parse=False)
    assert read["entries"] == entries, read
    assert verify["in_sync"], verify
    assert verify["entries"] == entries, verify
    rows = []
    for key, name, res, base_s, base_text in (
        ("read", "read()", read, read_base, "json.loads every line"),
        ("verify", "verify()", verify, verify_base, "read both logs' lines"),
    ):
        rows.append(
            Row(
                key=f"{key}.time",
                label=f"{name} over {entries:,} entries ({size / 2**20:.0f} MiB) per log",
                twinlog=f"{res['seconds']:.2f} s",
                baseline=f"{base_s:.2f} s {base_text}",
                ratio=res["seconds"] / base_s,
                note=f"{res['entries'] / res['seconds']:,.0f} entries/s",
            )
        )
        peak = max(res["rss_mb"], res["worker_rss_mb"])
        rows.append(
            Row(
                key=f"{key}.rss",
                label=f"{name}: peak RSS (process / peer worker)",
                twinlog=f"{_mb(res['rss_mb'])} / {_mb(res['worker_rss_mb'])}",
                baseline=f"{_mb(res['start_rss_mb'])} at start",
                target=f"< {RSS_LIMIT_MB:.0f} MB",
                met=peak < RSS_LIMIT_MB,
            )
        )
    return rows
