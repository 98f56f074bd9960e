"""The NFS lock proof on the two-VM lab, as pytest tests (marker `lab`, see lab/conftest.py).

Skipped unless TWINLOG_LAB=1: it boots two qemu VMs and needs root (see docs/lab.md for the
time it takes). Results are written to lab/run/proof-results.json.

    TWINLOG_LAB=1 python -m pytest lab/test_lab.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from twinlab import proof
from twinlab.cluster import Lab
from twinlab.paths import RUN_DIR

Step = Callable[..., None]


@pytest.fixture(scope="module")
def results(lab: Lab) -> Iterator[proof.ProofResults]:
    collected = proof.ProofResults()
    yield collected
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    proof.write_results(collected, RUN_DIR / "proof-results.json")
    print("\n" + collected.summary())


def _run(step: Step, name: str, lab: Lab, results: proof.ProofResults) -> None:
    step(proof.setup if name == "setup" else proof.SCENARIOS[name], name, lab, results)


def test_nfs_export_and_mount(step: Step, lab: Lab, results: proof.ProofResults) -> None:
    _run(step, "setup", lab, results)


def test_lockf_excludes_across_nodes_and_flock_does_not(
    step: Step, lab: Lab, results: proof.ProofResults
) -> None:
    _run(step, "matrix", lab, results)


@pytest.mark.parametrize("cut", ["cable_cut", "silent_cut"])
def test_link_cut_fails_nfs_writes_and_recovers(
    step: Step, lab: Lab, results: proof.ProofResults, cut: str
) -> None:
    _run(step, cut, lab, results)


def test_dead_peer_lock_is_free_within_goal(
    step: Step, lab: Lab, results: proof.ProofResults
) -> None:
    _run(step, "dead_peer", lab, results)
