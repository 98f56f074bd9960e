"""SIGKILL at the failpoints of recovery, conflict recording and repair: marks, checkpoint,
segment manifest and records stay consistent, and the next process finishes the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pairlib import WRITER, Pair, assert_converged, log_ids, spawn
from test_crash import finish, reconcile_both
from test_history import all_lines, assert_one_entry_per_id, replace_disk
from twinlog._history import CONFLICT_FILE
from twinlog._repair import JOURNAL_FILE

REPAIR_POINTS = [
    "repair_after_journal",
    "repair_after_log_archived",
    "repair_after_switch",
    "repair_after_peer_record",
]


def run_repair(pair: Pair, node: str, failpoint: str = "") -> tuple[int, dict[str, object]]:
    env = dict(os.environ)
    env.pop("TWINLOG_FAILPOINTS", None)
    if failpoint:
        env["TWINLOG_FAILPOINTS"] = failpoint
    cmd = [sys.executable, os.fspath(WRITER), json.dumps(pair.config_dict(node)), "-2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr)
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else {}


def test_crash_after_taking_back_our_entries(pair: Pair) -> None:
    acked = finish(spawn(pair, "a", 6))[1] + finish(spawn(pair, "b", 2))[1]
    replace_disk(pair, "a").close()
    code, more = finish(spawn(pair, "a", 3, failpoint="after_recover"))
    assert code == -signal.SIGKILL and more == []
    assert len([i for i in log_ids(pair.log_dir("a")) if i.startswith("a:")]) == 6
    code, more = finish(spawn(pair, "a", 2))
    assert more == ["a:7", "a:8"]
    reconcile_both(pair)
    assert_converged(pair, acked + more)


def make_conflict(pair: Pair) -> dict[str, str]:
    """a loses its disk while cut off and writes; the pair meets again. The acknowledged
    entries, by id, with their messages (a:1..3 twice: the old and the new ones)."""
    a = pair.twin("a")
    acked = {e.msg: e.id for e in (a.write(f"old {i}") for i in range(4))}
    acked |= {"b": pair.twin("b").write("b").id}
    a.close()
    pair.partition()
    fresh = replace_disk(pair, "a")
    acked |= {f"new {i}": fresh.write(f"new {i}").id for i in range(3)}
    fresh.close()
    pair.heal()
    return acked


def assert_acknowledged_present(pair: Pair, acked: dict[str, str]) -> None:
    """Every acknowledged message is in both logs, under its id or under the entry that
    replaced it (``replaces``), and never two different entries under one id."""
    for node in ("a", "b"):
        by_msg = {}
        for line in all_lines(pair.log_dir(node)):
            doc = json.loads(line)
            by_msg[doc["msg"]] = doc
        for msg, entry_id in acked.items():
            doc = by_msg.get(msg)
            assert doc is not None, f"{msg} lost on {node}"
            assert doc["id"] == entry_id or doc.get("replaces") == entry_id, (node, msg, doc)
    assert_one_entry_per_id(pair.log_dir("a"), pair.log_dir("b"))


def test_crash_after_recording_a_conflict(pair: Pair) -> None:
    acked = make_conflict(pair)
    code, _ = finish(spawn(pair, "a", 2, failpoint="after_conflict_record"))
    assert code == -signal.SIGKILL
    assert (pair.log_dir("a") / CONFLICT_FILE).exists()
    code, more = finish(spawn(pair, "a", 1))
    assert more == ["a:5"]  # after both marks: a:3 here, a:4 on b
    acked["w-0"] = "a:5"
    code, result = run_repair(pair, "a")
    assert result["repaired"] is True
    reconcile_both(pair)
    assert_acknowledged_present(pair, acked)
    assert pair.twin("a").status()["conflict"] is None


@pytest.mark.parametrize("point", REPAIR_POINTS)
def test_crash_in_a_repair_then_carry_on(pair: Pair, point: str) -> None:
    acked = make_conflict(pair)
    pair.twin("a").reconcile()  # found and recorded
    code, _ = run_repair(pair, "a", point)
    assert code == -signal.SIGKILL, f"{point} not reached"
    # Whatever the crash left, the next process of a finishes or drops the switch; a repair
    # that never reached its commit point is simply run again.
    code, more = finish(spawn(pair, "a", 2, prefix="after"))
    assert code == 0
    status = pair.twin("a").status()
    if status["conflict"] is not None:
        assert point == "repair_after_journal"
        assert not (pair.log_dir("a") / JOURNAL_FILE).exists()
        assert not (pair.log_dir("a") / "twinlog.log.repair").exists()
        assert run_repair(pair, "a")[1]["repaired"] is True
    reconcile_both(pair)
    for i, entry_id in enumerate(more):
        acked[f"after-{i}"] = entry_id
    assert_acknowledged_present(pair, acked)
    assert not (pair.log_dir("a") / JOURNAL_FILE).exists()
    for node in ("a", "b"):
        assert not (pair.log_dir(node) / CONFLICT_FILE).exists(), node
        twin = pair.twin(node)
        assert twin.status()["conflict"] is None
        result = twin.verify()
        assert result.in_sync, result
    views = [[e.to_dict() for e in pair.twin(n).read()] for n in ("a", "b")]
    assert views[0] == views[1]
