"""The hash chain (issue 22): what sealing costs an entry, the O(origins) sync check, and
``verify(deep=True)``'s throughput.

``chain.seal``: the SHA-256 link each entry gets under the lock, per entry, against encoding
the same line (what every write already pays). ``chain.status``: ``status()`` (both nodes'
chain heads compared, from the checkpoints) on a pair holding ``entries`` chained entries,
against the same call on a pair of 1,000: the same time means it does not read the logs.
``chain.deep``: ``verify(deep=True)`` (every link on both nodes) against ``verify()`` (the
by-id comparison) on the big pair.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._env import Row, bench_pair
from benchmarks.bigdata import _lines, _write_file
from twinlog._chain import GENESIS, seal

__all__ = ["run_chain"]

SMALL = 1000


def _chained(origins: list[str], count: int) -> Iterator[bytes]:
    """:func:`benchmarks.bigdata._lines`, each origin's lines sealed in seq order."""
    prev = dict.fromkeys(origins, GENESIS)
    for i, line in enumerate(_lines(origins, count)):
        origin = origins[i % len(origins)]
        sealed, prev[origin] = seal(line, prev[origin])
        yield sealed


def _best_of(call: object, times: int) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def _seal_row(samples: int) -> Row:
    lines = list(_lines(["a"], max(samples, 1000)))
    start = time.perf_counter()
    prev = GENESIS
    for line in lines:
        _sealed, prev = seal(line, prev)
    sealing = (time.perf_counter() - start) / len(lines)
    start = time.perf_counter()
    list(_lines(["a"], len(lines)))
    encoding = (time.perf_counter() - start) / len(lines)
    return Row(
        key="chain.seal",
        label="the chain's cost per entry: SHA-256 link and the field, under the lock",
        twinlog=f"{sealing * 1e6:.2f} us",
        baseline=f"{encoding * 1e6:.2f} us to encode the same line",
        ratio=sealing / encoding,
        target="< 5 us",
        met=sealing < 5e-6,
        note=f"{len(lines):,} lines of {len(lines[0])} bytes",
    )


def _pair_times(base: Path, entries: int) -> tuple[float, float, float, int]:
    """status(), verify() and verify(deep=True) on a pair holding ``entries``."""
    with bench_pair(base, f"chain{entries}") as pair:
        path_a = pair.log_dir("a") / "twinlog.log"
        size = _write_file(path_a, _chained(["a", "b"], entries))
        shutil.copyfile(path_a, pair.log_dir("b") / "twinlog.log")
        for node in ("a", "b"):  # converged: checkpoints written
            with pair.twin(node) as log:
                assert log.reconcile().peer_reachable
        with pair.twin("a") as log:
            status = _best_of(log.status, 5)
            assert log.status()["heads_agree"]
            start = time.perf_counter()
            plain = log.verify()
            by_id = time.perf_counter() - start
            start = time.perf_counter()
            deep = log.verify(deep=True)
            deep_s = time.perf_counter() - start
    assert plain.in_sync, plain
    assert deep.in_sync, deep
    assert not deep.broken, deep.broken
    return status, by_id, deep_s, size


def run_chain(base: Path, samples: int, entries: int) -> list[Row]:
    small_status, _, _, _ = _pair_times(base, SMALL)
    status, by_id, deep, size = _pair_times(base, entries)
    return [
        _seal_row(samples),
        Row(
            key="chain.status",
            label=f"status(): chain heads compared, {entries:,} entries ({size / 2**20:.0f} MiB)",
            twinlog=f"{status * 1e3:.1f} ms",
            baseline=f"{small_status * 1e3:.1f} ms with {SMALL:,} entries",
            ratio=status / small_status,
            target="< 50 ms",
            met=status < 0.05,
            note="best of 5; the heads come from the checkpoints, not the logs",
        ),
        Row(
            key="chain.deep",
            label=f"verify(deep=True) over {entries:,} entries per log, both nodes",
            twinlog=f"{deep:.2f} s",
            baseline=f"{by_id:.2f} s verify() by id",
            ratio=deep / by_id,
            note=f"{2 * entries / deep:,.0f} lines/s re-checked",
        ),
    ]
