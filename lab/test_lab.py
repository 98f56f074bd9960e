"""The NFS lock proof on the two-VM lab, as pytest tests (marker `lab`).

Skipped unless TWINLOG_LAB=1: it boots two qemu VMs and needs root (see docs/lab.md for the
time it takes). Results are written to lab/run/proof-results.json.

    TWINLOG_LAB=1 python -m pytest lab/test_lab.py
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twinlab import proof
from twinlab.cluster import Lab
from twinlab.paths import RUN_DIR

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("TWINLOG_LAB") != "1", reason="set TWINLOG_LAB=1"),
]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Both VMs for the module; a SIGTERM (CI timeout) still tears them down."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Lab() as running:
            yield running
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def results(lab: Lab) -> Iterator[proof.ProofResults]:
    collected = proof.ProofResults()
    yield collected
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    proof.write_results(collected, RUN_DIR / "proof-results.json")
    print("\n" + collected.summary())


def _run(name: str, lab: Lab, results: proof.ProofResults) -> None:
    """Run one step of the proof; fail on the checks it added."""
    first = len(results.checks)
    step = proof.setup if name == "setup" else proof.SCENARIOS[name]
    started = time.monotonic()
    step(lab, results)
    results.phases[name] = round(time.monotonic() - started, 1)
    failed = [
        f"{c.name}: expected {c.expected}, got {c.got}" for c in results.checks[first:] if not c.ok
    ]
    assert failed == []


def test_nfs_export_and_mount(lab: Lab, results: proof.ProofResults) -> None:
    _run("setup", lab, results)


def test_lockf_excludes_across_nodes_and_flock_does_not(
    lab: Lab, results: proof.ProofResults
) -> None:
    _run("matrix", lab, results)


@pytest.mark.parametrize("cut", ["cable_cut", "silent_cut"])
def test_link_cut_fails_nfs_writes_and_recovers(
    lab: Lab, results: proof.ProofResults, cut: str
) -> None:
    _run(cut, lab, results)


def test_dead_peer_lock_is_free_within_goal(lab: Lab, results: proof.ProofResults) -> None:
    _run("dead_peer", lab, results)
