"""Every path that exists for speed, against the plain path it short-cuts, in the same run.

Measured and removed (docs/benchmarks.md has the numbers): the identity memo (a writer skipped
the peer's identity check while its worker and the mount table stayed the same: 7-9% of a
write).

A fast path stays only if it saves at least 10% of ``write()`` p50 (on disk or on tmpfs) or
20% of eight-writer throughput; docs/benchmarks.md records each decision. The plain path is the
same code with one seam replaced on the instance (``make_plain``), so both run side by side:

* ``one_trip``: a write with nothing to drain reaches the peer in one round trip after its
  append (``_reach.PeerReach.one_trip_allowed``); plain: lock and look first, then append.
* ``alone``: a writer that finds the node's lock free commits without an election
  (``_election.Election._alone``); plain: every commit elects a leader.
* ``regroup``: two paths that cover for each other, so they are measured together: a writer
  that met company tries to follow before it tries to lead (``Election._join_first``), and a
  leader commits once more for whoever queued during its commit (``_election.EXTRA_ROUNDS``).
  Plain: always try to lead first, and a leader leaves after its own commit. Each alone off
  costs little (the other re-forms the groups); both off halve eight writers' throughput.
* ``counted_drain``: a cache is pushed by the peer's worker copying whole blocks of it
  (``_drain._counted_runs``); plain: this process sends the blocks over the pipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks._env import Row, bench_pair, percentile, run_child, tmpfs
from benchmarks.latency import MESSAGE
from benchmarks.throughput import _spec, _Writers
from twinlog import TwinLog, _election
from twinlog._election import CONTENDED_HOLD

__all__ = ["PLAIN", "make_plain", "run_fastpaths"]

KEEP_P50 = 0.10  # a fast path stays if it saves this share of write() p50 ...
KEEP_THROUGHPUT = 0.20  # ... or raises eight-writer throughput by this share
EIGHT_WRITER_PATHS = ("alone", "regroup")


def _no_one_trip(log: TwinLog) -> None:
    log._sides.reach.one_trip_allowed = lambda: False  # type: ignore[method-assign]


def _no_alone(log: TwinLog) -> None:
    assert log._election is not None
    log._election._alone = lambda batch: False  # type: ignore[method-assign]


def _no_regroup(log: TwinLog) -> None:
    assert log._election is not None
    log._election._join_first = lambda: False  # type: ignore[method-assign]
    # A module constant: the writer child that asks for it has this one instance.
    _election.EXTRA_ROUNDS = 0


#: How each fast path is turned off on one instance.
PLAIN: dict[str, Callable[[TwinLog], None]] = {
    "one_trip": _no_one_trip,
    "alone": _no_alone,
    "regroup": _no_regroup,
}


def make_plain(log: TwinLog, names: list[str]) -> TwinLog:
    for name in names:
        PLAIN[name](log)
    return log


def _p50_pair(fast: TwinLog, plain: TwinLog, samples: int) -> tuple[float, float]:
    """write() p50 of two instances of one node, in alternating blocks of 50 writes."""
    lat: dict[int, list[float]] = {0: [], 1: []}
    logs = (fast, plain)
    for log in logs:
        log.write(MESSAGE, warmup=True)
    for block in range(2 * max(1, samples // 50)):
        log = logs[block % 2]
        for _ in range(50):
            t0 = time.perf_counter()
            log.write(MESSAGE)
            lat[block % 2].append(time.perf_counter() - t0)
    return percentile(lat[0], 50), percentile(lat[1], 50)


@contextmanager
def _where(base: Path, medium: str) -> Iterator[Path]:
    if medium == "disk":
        yield base
    else:
        with tmpfs(base) as mounted:
            yield mounted


def _latency_rows(base: Path, samples: int) -> list[Row]:
    rows = []
    for medium in ("disk", "tmpfs"):
        for name in ("one_trip", "alone"):
            with (
                _where(base, medium) as where,
                bench_pair(where, f"fast-{name}") as pair,
                pair.twin("a") as fast,
                make_plain(pair.twin("a"), [name]) as plain,
            ):
                # Sequential writes of two instances of one node: neither meets company.
                fast_p50, plain_p50 = _p50_pair(fast, plain, samples)
            rows.append(_decision(f"fast.{name}.{medium}", name, medium, fast_p50, plain_p50))
    return rows


def _decision(key: str, name: str, medium: str, fast: float, plain: float) -> Row:
    saving = 1 - fast / plain
    return Row(
        key=key,
        label=f"fast path {name}, 1 writer on {medium}: write() p50",
        twinlog=f"{fast * 1e3:.3f} ms",
        baseline=f"{plain * 1e3:.3f} ms (plain path)",
        ratio=fast / plain,
        target=f"saves >= {KEEP_P50:.0%}",
        met=saving >= KEEP_P50,
        note=f"saves {saving:.0%}",
    )


def _throughput_rows(base: Path, duration: float) -> list[Row]:
    rows = []
    with bench_pair(base, "fast-eight") as pair:
        fast = [_spec(pair, "a") for _ in range(8)]
        plain = {
            name: [{**_spec(pair, "a"), "plain": [name]} for _ in range(8)]
            for name in EIGHT_WRITER_PATHS
        }
        writers = _Writers([*fast, *(spec for name in EIGHT_WRITER_PATHS for spec in plain[name])])
        try:
            for index, name in enumerate(EIGHT_WRITER_PATHS, start=1):
                offset = 8 * index  # that path's plain writers
                rates: dict[str, list[float]] = {"fast": [], "plain": []}
                for _ in range(2):  # alternate, so drift over the minute hits both
                    for kind, first in (("fast", 0), ("plain", offset)):
                        time.sleep(CONTENDED_HOLD + 0.2)
                        total, _ = writers.run(list(range(first, first + 8)), duration)
                        rates[kind].append(total / duration)
                rows.append(_throughput_decision(name, rates))
        finally:
            writers.close()
    return rows


def _throughput_decision(name: str, rates: dict[str, list[float]]) -> Row:
    fast, plain = max(rates["fast"]), max(rates["plain"])
    gain = fast / plain - 1
    return Row(
        key=f"fast.{name}.eight",
        label=f"fast path {name}, 8 writer processes on node a: entries/s",
        twinlog=f"{fast:.0f} entries/s",
        baseline=f"{plain:.0f} entries/s (plain path)",
        ratio=fast / plain,
        target=f"gains >= {KEEP_THROUGHPUT:.0%}",
        met=gain >= KEEP_THROUGHPUT,
        note=f"best of 2 alternating windows each; gains {gain:+.0%}",
    )


def _drain_row(base: Path, entries: int) -> Row:
    seconds: dict[str, float] = {}
    for kind in ("counted", "plain"):
        with bench_pair(base, f"fast-drain-{kind}") as pair:
            pair.cut("a")
            with pair.twin("a", fsync=False) as log:
                log.write_many([MESSAGE] * entries)
            pair.connect("a")
            result = run_child("drain", {"config": pair.config_dict("a"), "plain_drain": kind})
            assert result["pushed"] == entries, result
            seconds[kind] = result["reconcile_s"]
    ratio = seconds["counted"] / seconds["plain"]
    return Row(
        key="fast.counted_drain",
        label=f"fast path counted_drain: push {entries:,} cached entries",
        twinlog=f"{seconds['counted']:.3f} s",
        baseline=f"{seconds['plain']:.3f} s (plain path)",
        ratio=ratio,
        target=f"saves >= {KEEP_P50:.0%}",
        met=1 - ratio >= KEEP_P50,
        note=f"saves {1 - ratio:.0%} of the reconcile",
    )


def run_fastpaths(base: Path, samples: int, duration: float, entries: int) -> list[Row]:
    return [
        *_latency_rows(base, samples),
        *_throughput_rows(base, duration),
        _drain_row(base, min(entries, 100_000)),
    ]
