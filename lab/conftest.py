"""What the lab's pytest files share: the `lab` marker and skip, the VMs, running one step.

Every test under lab/ is marked `lab` and skipped unless TWINLOG_LAB=1: the tests boot two qemu
VMs and need root (docs/lab.md). TWINLOG_LAB_ATTACH=1 uses the lab `lab.py up` left running
instead of booting (and tearing down) a new one.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twinlab.cluster import Lab
from twinlab.proof import ProofResults

LAB_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skipif(os.environ.get("TWINLOG_LAB") != "1", reason="set TWINLOG_LAB=1")
    for item in items:
        if LAB_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.lab)
            item.add_marker(skip)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Both VMs for the module; a SIGTERM (CI timeout) still tears them down."""
    if os.environ.get("TWINLOG_LAB_ATTACH") == "1":
        yield Lab.attach()
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Lab() as running:
            yield running
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_step(
    step: Callable[[Lab, ProofResults], None],
    name: str,
    lab: Lab,
    results: ProofResults,
    after: Callable[[ProofResults], object] | None = None,
) -> None:
    """Run one step, time it, call `after` (e.g. save the results); fail on the checks it added."""
    first = len(results.checks)
    started = time.monotonic()
    try:
        step(lab, results)
    finally:
        results.phases[name] = round(time.monotonic() - started, 1)
        if after is not None:
            after(results)
    failed = [
        f"{c.name}: expected {c.expected}, got {c.got}" for c in results.checks[first:] if not c.ok
    ]
    assert failed == []


@pytest.fixture
def step() -> Callable[..., None]:
    """`step(function, name, lab, results, after=None)`: see run_step."""
    return run_step
