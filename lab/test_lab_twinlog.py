"""twinlog deployed by the project's playbook into the two-VM lab, then fault scenarios over real
NFS, as pytest tests (marker `lab`). See lab/twinlab/scenarios.py and docs/lab.md.

Skipped unless TWINLOG_LAB=1. The tests depend on each other and run in file order (deploy
first, dead_peer last). TWINLOG_LAB_ATTACH=1 uses the lab `lab.py up` left running instead of
booting (and tearing down) a new one. Results: lab/run/scenario-results.json.

    TWINLOG_LAB=1 python -m pytest lab/test_lab_twinlog.py -v -s
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

from twinlab import scenarios
from twinlab.cluster import Lab
from twinlab.proof import ProofResults

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("TWINLOG_LAB") != "1", reason="set TWINLOG_LAB=1"),
]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.environ.get("TWINLOG_LAB_ATTACH") == "1":
        yield Lab.attach()
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Lab() as running:
            yield running
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def results(lab: Lab) -> Iterator[ProofResults]:
    collected = ProofResults()
    yield collected
    scenarios.write(collected)
    print("\n" + collected.summary())


def _run(name: str, lab: Lab, results: ProofResults) -> None:
    first = len(results.checks)
    started = time.monotonic()
    try:
        scenarios.SCENARIOS[name](lab, results)
    finally:
        results.phases[name] = round(time.monotonic() - started, 1)
        scenarios.write(results)
    failed = [
        f"{c.name}: expected {c.expected}, got {c.got}" for c in results.checks[first:] if not c.ok
    ]
    assert failed == []


def test_deploy_with_the_playbook(lab: Lab, results: ProofResults) -> None:
    _run("deploy", lab, results)


def test_second_deploy_changes_nothing(lab: Lab, results: ProofResults) -> None:
    _run("redeploy", lab, results)


def test_concurrent_writers_on_both_nodes(lab: Lab, results: ProofResults) -> None:
    _run("concurrent", lab, results)


def test_link_cut_then_heal_converges(lab: Lab, results: ProofResults) -> None:
    _run("link_cut", lab, results)


def test_frozen_peer_bounds_every_write(lab: Lab, results: ProofResults) -> None:
    _run("frozen_peer", lab, results)


def test_throughput_against_raw_dual_append(lab: Lab, results: ProofResults) -> None:
    _run("throughput", lab, results)


def test_dead_peer_holding_our_lock(lab: Lab, results: ProofResults) -> None:
    _run("dead_peer", lab, results)
