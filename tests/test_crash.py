"""SIGKILL at every failpoint and at random moments: nothing acknowledged lost or duplicated."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pairlib import WRITER, Pair, assert_converged, log_ids, spawn
from twinlog._failpoints import POINTS


def finish(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    out, err = proc.communicate(timeout=60)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"writer failed ({proc.returncode}): {err}")
    return proc.returncode, [line for line in out.splitlines() if ":" in line]


def reconcile_both(pair: Pair) -> None:
    pair.heal()
    pair.twin("a").reconcile()
    pair.twin("b").reconcile()


WRITE_POINTS = ["after_lock", "after_local_append", "after_peer_append"]
DRAIN_POINTS = [
    "after_push_append",
    "after_local_cache_remove",
    "after_pull_append",
    "after_peer_cache_remove",
    "mid_transfer",
]


def test_every_failpoint_is_tested() -> None:
    group = {"after_assign"}  # tests/test_group.py
    history = {"after_recover", "after_conflict_record"}  # tests/test_history_crash.py
    history |= {p for p in POINTS if p.startswith("repair_")}
    covered = set(WRITE_POINTS + DRAIN_POINTS + ["after_cache_append"]) | group | history
    rotation = {p for p in POINTS if "rotate" in p}
    assert covered | rotation == set(POINTS)


@pytest.mark.parametrize("point", WRITE_POINTS)
@pytest.mark.parametrize("nth", [1, 3])
def test_crash_on_the_write_path_with_peer_up(pair: Pair, point: str, nth: int) -> None:
    # The first write looks at the peer first; the third takes the one-round-trip write
    # (tests/test_settled.py), so both shapes die at each point.
    code, acked = finish(spawn(pair, "a", 5, failpoint=f"{point}@{nth}"))
    assert code == -signal.SIGKILL
    assert len(acked) == nth - 1
    reconcile_both(pair)
    assert_converged(pair, acked)
    # the next write continues the sequence, whatever the crash left
    assert pair.twin("a").write("after").seq == len(log_ids(pair.log_dir("a")))


@pytest.mark.parametrize("point", ["after_lock", "after_local_append", "after_cache_append"])
def test_crash_on_the_write_path_with_peer_down(pair: Pair, point: str) -> None:
    pair.cut("a")
    code, acked = finish(spawn(pair, "a", 5, failpoint=f"{point}@2"))
    assert code == -signal.SIGKILL and len(acked) == 1
    reconcile_both(pair)
    assert_converged(pair, acked)


@pytest.mark.parametrize("point", DRAIN_POINTS)
@pytest.mark.parametrize("drainer", ["a", "b"])
def test_crash_in_a_drain(pair: Pair, point: str, drainer: str) -> None:
    """Both nodes have cached entries; a writer on ``drainer`` dies mid-drain."""
    pair.partition()
    acked: list[str] = []
    for node in ("a", "b"):
        acked += finish(spawn(pair, node, 30, prefix=node))[1]
    assert (pair.log_dir("a") / "twinlog.cache").exists()
    pair.heal()
    code, more = finish(spawn(pair, drainer, 3, failpoint=point))
    assert code == -signal.SIGKILL, f"{point} was not reached"
    acked += more
    # a second crash at the same point while retrying must not hurt either
    finish(spawn(pair, pair.other(drainer), 3, failpoint=point))
    reconcile_both(pair)
    assert_converged(pair, acked)


def test_crash_in_a_reconcile_then_reconcile_again(pair: Pair) -> None:
    pair.partition()
    acked = finish(spawn(pair, "a", 20))[1] + finish(spawn(pair, "b", 20))[1]
    pair.heal()
    env = dict(os.environ, TWINLOG_FAILPOINTS="mid_transfer@1")
    cmd = [sys.executable, os.fspath(WRITER), json.dumps(pair.config_dict("a")), "-1"]
    assert (
        subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == -signal.SIGKILL
    )
    reconcile_both(pair)
    assert_converged(pair, acked)


def wait_for_acks(proc: subprocess.Popen[str], count: int, timeout: float = 60) -> list[str]:
    """Read acknowledged ids from a writer until it has ``count`` (then it is left running)."""
    assert proc.stdout is not None
    acked: list[str] = []
    deadline = time.monotonic() + timeout
    while len(acked) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.strip())
    return acked


def test_random_sigkill_of_writers_on_both_nodes(pair: Pair) -> None:
    """Each round: cut or heal at random, start two writers per node, let each acknowledge a
    random number of entries, then SIGKILL them at random moments (mid-write most likely)."""
    seed = int(os.environ.get("TWINLOG_SEED", "1234"))
    rng = random.Random(seed)
    acked: list[str] = []
    for round_ in range(6):
        if rng.random() < 0.4:
            pair.cut(rng.choice("ab"))
        elif rng.random() < 0.5:
            pair.heal()
        procs = [
            spawn(pair, node, 0, prefix=f"{node}{round_}{i}") for node in "ab" for i in range(2)
        ]
        for proc in procs:
            acked += wait_for_acks(proc, rng.randint(2, 12))
        for proc in procs:
            time.sleep(rng.uniform(0, 0.02))
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            acked += finish(proc)[1]
    assert len(acked) >= 6 * 4 * 2, f"seed {seed}"
    reconcile_both(pair)
    assert_converged(pair, acked)
