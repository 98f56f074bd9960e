"""The one runner: ``python -m benchmarks [--entries N] [--quick] [--markdown] [--json FILE]``.

Runs every benchmark in one process tree on one file system (``--dir``, default the system's
temporary directory), needs root for the bind mounts, and prints one table of rows. Missed
targets do not change the exit status: the table is the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import ROW_KEYS
from benchmarks._env import Row, can_bind_mount, machine_description
from benchmarks.batch import run_batches
from benchmarks.bigdata import run_drain, run_read_verify
from benchmarks.burst import run_burst
from benchmarks.chain import run_chain
from benchmarks.fastpaths import run_fastpaths
from benchmarks.latency import Series, run_latency, run_overhead, run_probe
from benchmarks.rsyslog import run_rsyslog
from benchmarks.seek import run_seek
from benchmarks.throughput import run_throughput

__all__ = ["format_markdown", "format_text", "main", "run_all"]

SECTIONS = (
    "single",
    "overhead",
    "concurrent",
    "batch",
    "fastpaths",
    "rsyslog",
    "burst",
    "drain",
    "read",
    "seek",
    "chain",
    "probe",
)


def run_all(
    base: Path,
    *,
    entries: int,
    samples: int,
    duration: float,
    sections: Sequence[str] = SECTIONS,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Every row of the selected sections, in :data:`benchmarks.ROW_KEYS` order."""
    say = progress or (lambda _text: None)
    rows: list[Row] = []
    single: Series | None = None
    if "single" in sections or "probe" in sections:
        say(f"single writer: {samples} writes per side, peer up then down")
        single_rows, single = run_latency(base, samples)
        if "single" in sections:
            rows += single_rows
    if "overhead" in sections:
        say(f"single writer on tmpfs: {samples} writes per side, peer up then down")
        rows += run_overhead(base, samples, single)
    if "concurrent" in sections:
        say(f"concurrent writers: {duration:g} s per row")
        rows += run_throughput(base, duration)
    if "batch" in sections:
        say(f"write_many() batches: {duration:g} s per row")
        rows += run_batches(base, duration)
    if "fastpaths" in sections:
        say(f"fast paths against their plain paths: {samples} writes, {duration:g} s windows")
        rows += run_fastpaths(base, samples, duration, entries)
    if "rsyslog" in sections:
        say(f"rsyslog through omprog into twinlog: {samples} messages, then to a file")
        rows += run_rsyslog(base, samples)
    if "burst" in sections:
        say(f"bursts: rsyslog over RELP and twinlog, {duration:g} s per writer row")
        rows += run_burst(base, samples, duration)
    if "drain" in sections:
        say(f"drain of {entries:,} cached entries")
        rows += run_drain(base, entries)
    if "read" in sections:
        say(f"read() and verify() over {entries:,} entries")
        rows += run_read_verify(base, entries)
    if "seek" in sections:
        say(f"a 15-minute window and the last 100 of {entries:,} entries over 30 days")
        rows += run_seek(base, entries)
    if "chain" in sections:
        say(f"the hash chain: sealing, status() and verify(deep=True) over {entries:,} entries")
        rows += run_chain(base, samples, entries)
    if "probe" in sections:
        say("probe cost and hung peer")
        assert single is not None  # measured above for the probe's share of a write
        rows += run_probe(base, samples, single.p50("up"))
    order = {key: i for i, key in enumerate(ROW_KEYS)}
    return sorted(rows, key=lambda row: order.get(row.key, len(order)))


def _cells(row: Row) -> list[str]:
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
    met = {True: "yes", False: "NO", None: ""}[row.met]
    return [row.label, row.twinlog, row.baseline, ratio, row.target, met, row.note]


_HEADER = ["benchmark", "twinlog", "baseline", "ratio", "target", "met", "note"]


def format_text(rows: list[Row]) -> str:
    table = [_HEADER, *(_cells(row) for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000, help="big-log size")
    parser.add_argument("--samples", type=int, default=2000, help="writes per latency row")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per writer row")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: proves the harness works (CI)"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the pairs live"
    )
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run some sections")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.entries, args.samples, args.duration = 2000, 40, 0.3
    base: Path = args.dir.resolve()
    if not can_bind_mount(base):
        print(
            "benchmarks need root and mount --bind (the pair is cross bind-mounted)",
            file=sys.stderr,
        )
        return 2
    machine = machine_description(base)
    print(f"machine: {machine}", file=sys.stderr)
    started = time.monotonic()
    rows = run_all(
        base,
        entries=args.entries,
        samples=args.samples,
        duration=args.duration,
        sections=args.only or SECTIONS,
        progress=lambda text: print(
            f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr
        ),
    )
    print(format_markdown(rows) if args.markdown else format_text(rows))
    print(f"machine: {machine}; total {time.monotonic() - started:.0f} s")
    if args.json:
        doc = {"machine": machine, "argv": sys.argv, "rows": [row.to_dict() for row in rows]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0
