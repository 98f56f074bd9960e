"""twinlog deployed by the project's playbook into the two-VM lab, then fault scenarios over real
NFS, as pytest tests (marker `lab`, see lab/conftest.py). See lab/twinlab/scenarios.py and
docs/lab.md.

Skipped unless TWINLOG_LAB=1. The tests depend on each other and run in file order (deploy
first, dead_peer last). TWINLOG_LAB_ATTACH=1 uses the lab `lab.py up` left running instead of
booting (and tearing down) a new one. Results: lab/run/scenario-results.json.

    TWINLOG_LAB=1 python -m pytest lab/test_lab_twinlog.py -v -s
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from twinlab import scenarios
from twinlab.cluster import Lab
from twinlab.proof import ProofResults

Step = Callable[..., None]


@pytest.fixture(scope="module")
def results(lab: Lab) -> Iterator[ProofResults]:
    collected = ProofResults()
    yield collected
    scenarios.write(collected)
    print("\n" + collected.summary())


def _run(step: Step, name: str, lab: Lab, results: ProofResults) -> None:
    step(scenarios.SCENARIOS[name], name, lab, results, after=scenarios.write)


def test_deploy_with_the_playbook(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "deploy", lab, results)


def test_second_deploy_changes_nothing(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "redeploy", lab, results)


def test_concurrent_writers_on_both_nodes(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "concurrent", lab, results)


def test_link_cut_then_heal_converges(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "link_cut", lab, results)


def test_asymmetric_partition_then_heal_converges(
    step: Step, lab: Lab, results: ProofResults
) -> None:
    _run(step, "asymmetric", lab, results)


def test_frozen_peer_bounds_every_write(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "frozen_peer", lab, results)


def test_throughput_against_raw_dual_append(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "throughput", lab, results)


def test_dead_peer_holding_our_lock(step: Step, lab: Lab, results: ProofResults) -> None:
    _run(step, "dead_peer", lab, results)
