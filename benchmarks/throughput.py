"""Concurrent writers: N processes, each with its own TwinLog, on one node and on both nodes.

All writers start at the same instant and write for the same window; the rate is the number of
writes that completed inside the window divided by its length. Each row's ratio is against one
writer alone in a window of the same length run just before that row (the "1 writer" row's
ratio, one window against the one before it, shows how much two windows differ anyway). One
more row runs 8 threads sharing one TwinLog in one process: the in-process group commit.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from benchmarks._env import REPO_ROOT, BenchPair, Row, bench_pair, child_command
from benchmarks.latency import MESSAGE
from twinlog._election import CONTENDED_HOLD

__all__ = ["WRITER_COUNTS", "run_throughput"]

WRITER_COUNTS = (1, 2, 4, 8)


class _Writers:
    """Writer child processes, started once and reused by every row (start-up is not measured)."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for spec in specs:
                self.procs.append(
                    subprocess.Popen(
                        child_command("writer", spec),
                        cwd=REPO_ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            for proc in self.procs:
                line = self._out(proc).readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"writer did not start: {line!r}")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _out(proc: subprocess.Popen[str]) -> IO[str]:
        assert proc.stdout is not None
        return proc.stdout

    def run(
        self, indices: list[int], duration: float, batch: int = 1
    ) -> tuple[int, list[dict[str, Any]]]:
        """The writers ``indices`` write for ``duration`` seconds from one instant on, with
        ``write()`` or ``write_many()`` of ``batch`` entries; the entries they wrote."""
        start = time.monotonic() + 0.1
        for i in indices:
            stdin = self.procs[i].stdin
            assert stdin is not None
            stdin.write(f"{start} {start + duration} {batch}\n")
            stdin.flush()
        results = []
        for i in indices:
            line = self._out(self.procs[i]).readline()
            if not line:
                raise RuntimeError(f"writer {i} died (exit {self.procs[i].wait()})")
            results.append(json.loads(line))
        return sum(r["count"] for r in results), results

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _spec(pair: BenchPair, node: str, threads: int = 1) -> dict[str, Any]:
    return {"config": pair.config_dict(node), "msg": MESSAGE, "threads": threads}


def run_throughput(base: Path, duration: float) -> list[Row]:
    rows: list[Row] = []
    top = max(WRITER_COUNTS)
    with bench_pair(base, "concurrent") as pair:
        # Writers 0..top-1 on node a, top..2*top-1 on node b, the last one has 8 threads.
        specs = [_spec(pair, node) for node in ("a", "b") for _ in range(top)]
        writers = _Writers([*specs, _spec(pair, "a", threads=8)])
        try:
            for where in ("one_node", "both_nodes"):
                for n in WRITER_COUNTS:
                    indices = list(range(n))
                    if where == "both_nodes":
                        indices += [top + i for i in range(n)]
                    single_rate = _single_rate(writers, duration)
                    total, results = writers.run(indices, duration)
                    rows.append(_row(where, n, total / duration, single_rate, results))
            single_rate = _single_rate(writers, duration)
            total, results = writers.run([2 * top], duration)
        finally:
            writers.close()
    rate = total / duration
    rows.append(
        Row(
            key="concurrent.threads.8",
            label="8 threads, one process, node a (in-process group commit)",
            twinlog=f"{rate:.0f} entries/s",
            baseline=f"{single_rate:.0f} entries/s (1 writer, just before)",
            ratio=rate / single_rate if single_rate else None,
            note=f"p50 write() {results[0]['p50'] * 1e3:.2f} ms",
        )
    )
    return rows


def _single_rate(writers: _Writers, duration: float) -> float:
    """The rate of writer 0 alone, for the row that follows: this host's speed drifts by tens
    of percent within a minute, so each row's ratio is against a single-writer window run
    just before it, not one from the start of the section. Writer 0 has met company in the
    row before and would elect for ``CONTENDED_HOLD``: that is waited out first."""
    time.sleep(CONTENDED_HOLD + 0.2)
    total, _ = writers.run([0], duration)
    return total / duration


_GROUP_KEYS = ("uncontended", "led", "followed")


def _row(where: str, n: int, rate: float, single_rate: float, results: list[dict[str, Any]]) -> Row:
    ratio = rate / single_rate if single_rate else None
    p50s = sorted(r["p50"] for r in results if r["count"])
    p50 = p50s[len(p50s) // 2] if p50s else float("nan")
    starved = sum(1 for r in results if not r["count"])
    reasons = sorted({r["reason"] for r in results})
    killed = sum(r["killed"] for r in results)
    group = {k: sum(r.get("group", {}).get(k, 0) for r in results) for k in _GROUP_KEYS}
    one_trip = sum(r.get("one_trip", 0) for r in results)
    target = ">= 3" if n == max(WRITER_COUNTS) else ""
    where_text = "on node a" if where == "one_node" else "on each node"
    return Row(
        key=f"concurrent.{where}.{n}",
        label=f"{n} writer process{'es' if n > 1 else ''} {where_text}",
        twinlog=f"{rate:.0f} entries/s",
        baseline=f"{single_rate:.0f} entries/s (1 writer, just before)",
        ratio=ratio,
        target=target,
        met=(ratio is not None and ratio >= 3) if target else None,
        note=(
            f"p50 write() {p50 * 1e3:.2f} ms; last reason {','.join(reasons)}; "
            f"{killed} peer workers killed so far; {starved} writers wrote nothing; "
            f"commits: {group['uncontended']} alone, {group['led']} led, "
            f"{group['followed']} followed; {one_trip} in one round trip to the peer"
        ),
    )
