"""What every benchmark shares: the bind-mounted pair, rows, percentiles and child processes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinlog import TwinLog
from twinlog.testing import TwoNodes

__all__ = [
    "REPO_ROOT",
    "BenchPair",
    "Row",
    "bench_pair",
    "child_command",
    "machine_description",
    "percentile",
    "run_child",
    "tmpfs",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
NODES = ("a", "b")


@dataclass
class Row:
    """One line of the result table.

    ``ratio`` is twinlog relative to the baseline in the sense of ``target``: ``<= x`` rows are
    twinlog / baseline (lower is better), ``>= x`` rows are how many times faster (or, for the
    writer rows, how many times the single-writer rate) twinlog is.
    """

    key: str
    label: str
    twinlog: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def percentile(samples: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class BenchPair(TwoNodes):
    """Nodes ``a`` and ``b`` under ``root``: ``<node>/peer`` is a bind mount of the other's log;
    the defaults of :class:`twinlog.Config` unless the benchmark says otherwise."""

    def __init__(self, root: Path, overrides: dict[str, Any]) -> None:
        super().__init__(root, mounts=True, **overrides)

    def config_dict(self, node: str, **overrides: Any) -> dict[str, Any]:
        return self.config(node, **overrides).to_dict()

    def twin(self, node: str, **overrides: Any) -> TwinLog:
        """An instance the benchmark closes itself."""
        return TwinLog(self.config(node, **overrides))


@contextmanager
def bench_pair(base: Path, name: str, **overrides: Any) -> Iterator[BenchPair]:
    """A fresh, initialised, connected pair under ``base/name``; unmounted and removed after."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    pair = BenchPair(root, dict(overrides))
    try:
        for node in NODES:
            pair.twin(node).close()  # the identity markers, before mounting
        pair.connect()
        yield pair
    finally:
        pair.close()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def tmpfs(base: Path) -> Iterator[Path]:
    """A fresh tmpfs mounted under ``base`` (files whose fsync costs nothing); unmounted and
    removed after."""
    where = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=base))
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "twinlog-bench", os.fspath(where))
        try:
            yield where
        finally:
            _run("umount", "-l", os.fspath(where))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def can_bind_mount(base: Path) -> bool:
    """Whether this process may ``mount --bind`` (root, and a kernel that lets it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="mountprobe-", dir=base))
    src, dst = probe / "src", probe / "dst"
    src.mkdir()
    dst.mkdir()
    try:
        _run("mount", "--bind", os.fspath(src), os.fspath(dst))
    except (subprocess.CalledProcessError, OSError):
        return False
    else:
        _run("umount", os.fspath(dst))
        return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def child_command(task: str, args: dict[str, Any]) -> list[str]:
    """The command line of a benchmark child process (see :mod:`benchmarks._child`)."""
    return [sys.executable, "-m", "benchmarks._child", task, json.dumps(args)]


def run_child(task: str, args: dict[str, Any], *, timeout: float = 3600) -> dict[str, Any]:
    """Run one child task to completion and return the JSON it prints last."""
    proc = subprocess.run(
        child_command(task, args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {task} failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def machine_description(base: Path) -> str:
    """CPU, cores, memory, kernel, Python and the file system the run used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fstype, device = "?", "?"
    best = ""
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            mount = parts[1]
            inside = os.fspath(base.resolve()).startswith(mount.rstrip("/") + "/") or mount == "/"
            if inside and len(mount) >= len(best):
                best, device, fstype = mount, parts[0], parts[2]
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {base} on {fstype} ({device})"
    )
