"""Random schedules of write / partition / heal / reconcile always converge, exactly once."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pairlib import Pair, assert_converged, log_ids

NODES = st.sampled_from(["a", "b"])


class PairSchedule(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="twinlog-prop-"))
        self.pair = Pair(self.root, options={"fsync": False})  # durability is not what this tests
        self.logs = {"a": self.pair.twin("a"), "b": self.pair.twin("b")}
        self.pair.heal()
        self.acked: list[str] = []

    @rule(node=NODES, count=st.integers(min_value=1, max_value=3))
    def write(self, node: str, count: int) -> None:
        for i in range(count):
            self.acked.append(self.logs[node].write(f"{node}-{len(self.acked)}-{i}").id)

    @rule(node=NODES)
    def cut(self, node: str) -> None:
        self.pair.cut(node)

    @rule(node=NODES)
    def connect(self, node: str) -> None:
        self.pair.connect(node)

    @rule()
    def heal(self) -> None:
        self.pair.heal()

    @rule(node=NODES)
    def reconcile(self, node: str) -> None:
        self.logs[node].reconcile()

    @precondition(lambda self: len(self.acked) > 0)
    @rule(node=NODES)
    def restart(self, node: str) -> None:
        """A new process: nothing carried over in memory."""
        self.logs[node] = self.pair.twin(node)

    @invariant()
    def own_log_has_every_own_entry(self) -> None:
        for node in ("a", "b"):
            own = [i for i in log_ids(self.pair.log_dir(node)) if i.startswith(node + ":")]
            assert own == [i for i in self.acked if i.startswith(node + ":")]

    def teardown(self) -> None:
        try:
            self.pair.heal()
            self.logs["a"].reconcile()
            self.logs["b"].reconcile()
            assert_converged(self.pair, self.acked)
        finally:
            self.pair.close()
            shutil.rmtree(self.root, ignore_errors=True)


def test_random_schedules_converge(bind_mounts_work: bool) -> None:
    if not bind_mounts_work:
        pytest.skip("bind mounts need root")
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        PairSchedule,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
