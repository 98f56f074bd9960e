"""Rotation and retention keep both logs in sync: nothing lost, nothing delivered twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pairlib import Pair, log_ids
from twinlog import Config, TwinLog

WRITER = Path(__file__).with_name("writer_proc.py")


def all_ids(log_dir: Path) -> list[str]:
    """Ids across the segments (oldest first) and the active log."""
    segs = sorted(
        (p for p in log_dir.glob("twinlog.log.*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
    )
    ids = []
    for path in [*segs, log_dir / "twinlog.log"]:
        if path.exists():
            ids += [json.loads(line)["id"] for line in path.read_bytes().splitlines()]
    return ids


def assert_converged_across_segments(pair: Pair, acked: list[str]) -> None:
    for node in "ab":
        ids = all_ids(pair.log_dir(node))
        assert len(ids) == len(set(ids)), f"duplicates on {node}"
        assert set(acked) <= set(ids)
    assert set(all_ids(pair.log_dir("a"))) == set(all_ids(pair.log_dir("b")))
    a, b = pair.twin("a"), pair.twin("b")
    assert [e.to_dict() for e in a.read()] == [e.to_dict() for e in b.read()]
    assert a.verify().in_sync and b.verify().in_sync


@pytest.mark.no_mounts
def test_rotate_makes_a_segment_and_reading_spans_it(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write("1").id, b.write("2").id]
    result = a.rotate()
    assert result.rotated == "twinlog.log.1"
    assert (pair.log_dir("a") / "twinlog.log.1").exists()
    assert (pair.log_dir("a") / "twinlog.log").stat().st_size == 0
    acked += [a.write("3").id, b.write("4").id]
    assert log_ids(pair.log_dir("a")) == ["a:2", "b:2"]
    assert [e.id for e in a.read()] == acked
    assert a.rotate().rotated == "twinlog.log.2"
    assert a.rotate().rotated is None, "an empty active log is not rotated"
    assert_converged_across_segments(pair, acked)


@pytest.mark.no_mounts
def test_automatic_rotation_at_rotate_bytes_while_both_write(pair: Pair) -> None:
    pair.options["rotate_bytes"] = 4096
    a, b = pair.twin("a"), pair.twin("b")
    acked: list[str] = []
    lock = threading.Lock()

    def go(log: TwinLog, name: str) -> None:
        for i in range(150):
            e = log.write(f"{name} {i} " + "z" * 40)
            with lock:
                acked.append(e.id)

    threads = [threading.Thread(target=go, args=(log, n)) for n, log in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(pair.log_dir("a").glob("twinlog.log.*"))) >= 3
    assert len(list(pair.log_dir("b").glob("twinlog.log.*"))) >= 3
    assert_converged_across_segments(pair, acked)


@pytest.mark.no_mounts
def test_partition_rotation_on_both_sides_then_heal(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write("before").id]
    pair.partition()
    for i in range(10):
        acked += [a.write(f"a{i}").id, b.write(f"b{i}").id]
        if i % 3 == 0:
            a.rotate()
        if i % 4 == 1:
            b.rotate()
    pair.heal()
    moved = a.reconcile()
    assert (moved.pushed, moved.pulled) == (10, 10)
    assert b.reconcile().pushed == 0
    assert_converged_across_segments(pair, acked)


@pytest.mark.no_mounts
def test_a_fresh_process_after_rotation_continues_the_sequence(pair: Pair) -> None:
    a = pair.twin("a")
    for i in range(3):
        a.write(str(i))
    a.rotate()
    (pair.log_dir("a") / "twinlog.idx").unlink()  # even without the checkpoint
    assert pair.twin("a").write("next").seq == 4
    assert pair.twin("b").write("b").seq == 1


@pytest.mark.no_mounts
def test_retention_deletes_old_delivered_segments(pair: Pair) -> None:
    pair.options["retain_segments"] = 2
    a, b = pair.twin("a"), pair.twin("b")
    for i in range(5):
        a.write(f"a{i}")
        b.write(f"b{i}")
        result = a.rotate()
    assert result.expired, "the oldest segments went"
    assert sorted(p.name for p in pair.log_dir("a").glob("twinlog.log.*")) == [
        "twinlog.log.4",
        "twinlog.log.5",
    ]
    r = b.verify()
    assert r.in_sync and r.expired_on_peer > 0 and "expired on a only" in r.note
    assert a.verify().in_sync
    assert next(e.id for e in a.read()) == "a:4"


def test_retention_never_drops_undelivered_entries(pair: Pair) -> None:
    pair.options["retain_segments"] = 1
    a = pair.twin("a")
    pair.cut("a")
    acked = []
    for i in range(4):
        acked.append(a.write(f"x{i}").id)
        a.rotate()  # the peer is unreachable: nothing may expire
    assert len(list(pair.log_dir("a").glob("twinlog.log.*"))) == 4
    (pair.log_dir("a") / "twinlog.cache").unlink()  # make the log the only source
    pair.connect("a")
    assert a.reconcile().pushed == 4
    assert log_ids(pair.log_dir("b")) == acked
    assert a.rotate().expired  # now they may go


@pytest.mark.no_mounts
def test_retention_keeps_a_segment_the_peer_still_needs(pair: Pair) -> None:
    """The peer lacks entries from the oldest segment: retention stops right there."""
    pair.options["retain_segments"] = 1
    a = pair.twin("a")
    pair.cut("a")
    a.write("undelivered")
    a.rotate()
    a.write("also undelivered")
    a.rotate()
    b_log = pair.log_dir("b") / "twinlog.log"
    pair.connect("a")
    a_local = a._sides.local
    a._sides.local.refresh(repair=False)
    deleted = a_local.expire(delivered_own_seq=0, retain_segments=1, retain_days=None)
    assert deleted == []
    assert not b_log.exists() or b"undelivered" not in b_log.read_bytes()


@pytest.mark.no_mounts
@pytest.mark.parametrize("point", ["after_rotate_rename", "after_rotate_index"])
def test_crash_in_the_middle_of_a_rotation(pair: Pair, point: str) -> None:
    a = pair.twin("a")
    acked = [a.write(f"{i}").id for i in range(3)]
    config = json.dumps(pair.config_dict("a") | {"rotate_bytes": 4096})
    env = dict(os.environ, TWINLOG_FAILPOINTS=point)
    proc = subprocess.run(
        [sys.executable, os.fspath(WRITER), config, "200", "r"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    acked += proc.stdout.split()
    b = pair.twin("b")
    acked += [pair.twin("a").write("after crash").id, b.write("b").id]
    pair.twin("a").reconcile()
    assert_converged_across_segments(pair, acked)


def test_config_keys_for_retention(tmp_path: Path) -> None:
    c = Config("a", "b", tmp_path / "l", tmp_path / "p", retain_days=7, retain_segments=10)
    assert c.to_dict()["retain_days"] == 7


def test_retention_by_age_keeps_the_newest_segment_and_the_sequence(pair: Pair) -> None:
    pair.options["retain_days"] = 1e-9  # every finished segment is too old
    a = pair.twin("a")
    for i in range(4):
        a.write(f"{i}")
        a.rotate()
    assert sorted(p.name for p in pair.log_dir("a").glob("twinlog.log.*")) == ["twinlog.log.4"]
    (pair.log_dir("a") / "twinlog.idx").unlink()
    assert pair.twin("a").write("next").seq == 5
