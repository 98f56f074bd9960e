"""Batches: ``write_many`` of 10, 100 and 1,000 entries against ``write()`` one at a time.

One process on node a of a connected pair writes for the same window with each batch size;
every batch row's ratio is against ``write()`` alone in a window run just before it (this
host's speed drifts within a minute). Every entry counted is durable on both nodes (or in the
cache, which a connected pair never needs) when its call returns, as with ``write()``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._env import Row, bench_pair, run_child
from benchmarks.latency import MESSAGE

__all__ = ["BATCH_SIZES", "run_batches"]

BATCH_SIZES = (10, 100, 1000)


def run_batches(base: Path, duration: float) -> list[Row]:
    rows = []
    with bench_pair(base, "batch") as pair:
        sizes = [size for batch in BATCH_SIZES for size in (1, batch)]
        spec = {"config": pair.config_dict("a"), "msg": MESSAGE, "sizes": sizes}
        windows = run_child("batches", spec | {"duration": duration})["windows"]
    for (_, single), (size, batch) in zip(windows[0::2], windows[1::2], strict=True):
        rate, single_rate = (
            batch["entries"] / batch["seconds"],
            single["entries"] / single["seconds"],
        )
        rows.append(
            Row(
                key=f"batch.{size}",
                label=f"write_many() of {size:,} entries, one process on node a, peer up",
                twinlog=f"{rate:.0f} entries/s",
                baseline=f"{single_rate:.0f} entries/s (write() one at a time, just before)",
                ratio=rate / single_rate if single_rate else None,
                note=f"{batch['calls']} calls; last reason {batch['reason']}",
            )
        )
    return rows
