"""The one-round-trip write: when nothing had to be drained at the last commit, node ``a``
appends to its own log first and then, in one request to the peer's worker, locks the peer's
log, checks that nothing needs draining, appends and unlocks. Whenever the check fails it must
fall back to the method's drains, under the same locks, and lose or repeat nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_ids, log_lines, sealed_after, write_through_a_leader
from twinlog._fileops import Allowed, DirOps, _as_expected
from twinlog.entry import encode_entry

# for a writer on a whose log holds a:1 (and the peer's log too), appending a:2: none of
# ours may have been added to the peer's log since, and b's entries up to b:2 may
NOTHING_OF_OURS = (b'{"id":"a:', 2, 1, b'{"id":"b:', 2)


def _log_of_a1(tmp_path: Path) -> tuple[Path, tuple[int, int, bytes]]:
    """The peer's log holding a:1, and ``known`` as a writer that read it has it (with the
    last bytes it read, as ``LogState.tail``)."""
    log = tmp_path / "twinlog.log"
    log.write_bytes(_line("a", 1))
    st = log.stat()
    return log, (st.st_size, st.st_ino, _line("a", 1)[-48:])


def _line(node: str, seq: int) -> bytes:
    return encode_entry(node, seq, "2026-11-28T14:00:00.000000Z", f"{node}{seq}", b"")


def trips(log: object) -> tuple[int, int]:
    stats = log.peer_worker_stats()  # type: ignore[attr-defined]
    return stats["one_trip"], stats["drained_after"]


@pytest.mark.no_mounts
def test_steady_writes_take_one_round_trip_and_both_logs_match(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write(f"m{i}").id for i in range(5)]
    # The first write looks first (nothing known of the peer yet); the rest go in one trip.
    assert trips(a) == (4, 0)
    acked.append(b.write("from b").id)  # b's lock comes second in the order: never one trip
    assert trips(b) == (0, 0)
    acked += [a.write(f"n{i}").id for i in range(3)]
    # b's own entry in b's log (also in ours) does not stop it.
    assert trips(a) == (7, 0)
    assert log_ids(pair.log_dir("a")) == log_ids(pair.log_dir("b")) == acked
    assert_converged(pair, acked)


def test_peer_cache_is_drained_before_the_write_is_answered(pair: Pair) -> None:
    a = pair.twin("a")
    acked = [a.write("first").id, a.write("second").id]
    # What b does when it cannot reach us (without a mount-table change here, which would
    # make a check the peer's identity, and so look first, anyway): log and cache.
    cached = _line("b", 1) + _line("b", 2)
    _append_raw(pair.log_dir("b"), cached)
    (pair.log_dir("b") / "twinlog.cache").write_bytes(cached)
    before = trips(a)
    acked.append(a.write("after").id)  # the worker sees b's cache: lock kept, drains run
    assert trips(a) == (before[0], before[1] + 1)
    assert a.last_reason == "ok"
    assert not (pair.log_dir("b") / "twinlog.cache").exists()
    assert log_ids(pair.log_dir("a")) == ["a:1", "a:2", "a:3", "b:1", "b:2"]
    acked.append(a.write("again").id)
    assert trips(a) == (before[0] + 1, before[1] + 1)
    assert_converged(pair, [*acked, "b:1", "b:2"])


def _append_raw(log_dir: Path, data: bytes) -> None:
    with open(log_dir / "twinlog.log", "ab") as f:
        f.write(data)


@pytest.mark.no_mounts
def test_an_entry_the_peer_left_undelivered_is_pulled(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write("one").id, b.write("b one").id, a.write("two").id]
    # b wrote b:2 to its own log and died before appending it to ours: no cache.
    line = encode_entry("b", 2, "2026-11-28T14:00:00.000000Z", "undelivered", b"")
    _append_raw(pair.log_dir("b"), sealed_after(pair.log_dir("b"), line))
    before = trips(a)
    acked.append(a.write("three").id)
    assert trips(a) == (before[0], before[1] + 1)
    assert "b:2" in log_ids(pair.log_dir("a"))
    assert_converged(pair, [*acked, "b:2"])


def test_a_torn_tail_on_the_peer_is_repaired_not_appended_after(pair: Pair) -> None:
    a = pair.twin("a")
    acked = [a.write("one").id, a.write("two").id]
    _append_raw(pair.log_dir("b"), b'{"id":"b:1","node":"b","se')  # b died mid-append
    acked.append(a.write("three").id)
    assert trips(a)[1] == 1
    assert log_lines(pair.log_dir("b"))  # no torn last line (log_lines checks)
    assert log_ids(pair.log_dir("b")) == acked
    assert (pair.log_dir("b") / "twinlog.torn").exists()
    assert_converged(pair, acked)


@pytest.mark.no_mounts
def test_our_entries_delivered_by_another_process_are_expected(pair: Pair) -> None:
    a, other, b = pair.twin("a"), pair.twin("a"), pair.twin("b")
    acked = [a.write("one").id, a.write("two").id]
    acked += [other.write(f"from another process of a {i}").id for i in range(3)]
    acked.append(b.write("from b").id)
    done = trips(a)
    acked.append(a.write("three").id)
    # a:3-a:5 (our other process's) and b:1 were added to b's log since we last read it, all
    # of them in our log too: still one round trip, and our view of b's log catches up.
    assert trips(a) == (done[0] + 1, done[1])
    assert log_ids(pair.log_dir("b")) == acked
    assert a._sides.peer.state.hwm == {"a": 6, "b": 1}  # type: ignore[union-attr]
    assert_converged(pair, acked)


def test_our_entry_another_process_left_undelivered_is_pushed_first(pair: Pair) -> None:
    a = pair.twin("a")
    acked = [a.write("one").id, a.write("two").id]
    # Another process of a appended a:3 to our log and died before the peer's: no cache.
    _append_raw(pair.log_dir("a"), sealed_after(pair.log_dir("a"), _line("a", 3)))
    done = trips(a)
    acked.append(a.write("three").id)  # a:4
    assert trips(a) == (done[0], done[1] + 1)
    assert log_ids(pair.log_dir("b")) == ["a:1", "a:2", "a:3", "a:4"]
    assert_converged(pair, [*acked, "a:3"])


@pytest.mark.no_mounts
def test_a_rotated_peer_log_is_read_afresh(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write("one").id, a.write("two").id]
    b.rotate()  # b's log becomes a segment: another inode
    acked.append(a.write("three").id)
    assert trips(a)[1] == 1
    assert log_ids(pair.log_dir("b")) == ["a:3"]
    # (assert_converged reads active logs only)
    assert [e.id for e in b.read()] == [e.id for e in a.read()] == acked
    assert a.verify().in_sync


def test_a_hung_peer_in_the_one_trip_write_times_out_and_caches(pair: Pair) -> None:
    a = pair.twin("a", probe_timeout=0.5, io_timeout=1.0)
    acked = [a.write("one").id, a.write("two").id]
    assert trips(a) == (1, 0)
    pid = a._sides.reach.remote._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)  # like a call stuck on a dead NFS server
    try:
        started = time.monotonic()
        acked.append(a.write("during the hang").id)
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed, as it should be
            os.kill(pid, signal.SIGCONT)
    assert 0.5 <= took < 1.5, took
    assert a.last_reason == "timeout"
    assert a.peer_worker_stats()["killed"] == 1
    assert log_ids(pair.log_dir("a"))[-1] == "a:3"
    assert b"a:3" in (pair.log_dir("a") / "twinlog.cache").read_bytes()
    # After a timeout the writes look first for a while (a slow peer's fsync may need more
    # than probe_timeout); reconcile delivers the cached entry.
    a.reconcile()
    acked.append(a.write("after").id)
    assert trips(a) == (1, 0)
    assert_converged(pair, acked)


# -- the worker's half, on a plain directory ---------------------------------------------------
@pytest.fixture
def ops(tmp_path: Path) -> DirOps:
    (tmp_path / "twinlog.node").write_text("b\n")
    ops = DirOps(os.fspath(tmp_path))
    assert ops.open_dir("b", None, True) == "ok"
    return ops


def test_append_if_settled_appends_and_unlocks_only_after_known_lines(
    ops: DirOps, tmp_path: Path
) -> None:
    log, known = _log_of_a1(tmp_path)
    added = NOTHING_OF_OURS  # and b's entries up to b:2
    log.write_bytes(log.read_bytes() + _line("b", 1) + _line("b", 2))
    ops.lock(1.0)
    done, new, size = ops.append_if_settled(
        "twinlog.log", "twinlog.cache", known, added, [_line("a", 2)], True
    )
    assert done and new == _line("b", 1) + _line("b", 2) and size == log.stat().st_size
    assert log.read_bytes().endswith(_line("a", 2))
    assert not ops._lock.held  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "added",
    [_line("b", 3), _line("a", 2), b'{"id":"b:1","no', b"junk\n"],
    ids=["seq we lack", "ours", "torn", "not an entry"],
)
def test_append_if_settled_looks_and_keeps_the_lock_otherwise(
    ops: DirOps, tmp_path: Path, added: bytes
) -> None:
    log, known = _log_of_a1(tmp_path)
    log.write_bytes(log.read_bytes() + added)
    ops.lock(1.0)
    before = log.read_bytes()
    done, tail, has_cache = ops.append_if_settled(
        "twinlog.log", "twinlog.cache", known, NOTHING_OF_OURS, [_line("a", 2)], True
    )
    assert not done and not has_cache
    assert tail == (len(before), known[1], known[2] + added)
    assert log.read_bytes() == before
    assert ops._lock.held  # type: ignore[union-attr]


def test_append_if_settled_looks_when_there_is_a_cache_or_another_file(
    ops: DirOps, tmp_path: Path
) -> None:
    log, known = _log_of_a1(tmp_path)
    (tmp_path / "twinlog.cache").write_bytes(_line("b", 1))
    ops.lock(1.0)
    args = ("twinlog.log", "twinlog.cache", known, NOTHING_OF_OURS, [_line("a", 2)], True)
    done, _, has_cache = ops.append_if_settled(*args)
    assert not done and has_cache
    (tmp_path / "twinlog.cache").unlink()
    os.rename(log, tmp_path / "twinlog.log.1")
    log.write_bytes(_line("a", 1))  # same size, another inode
    done, tail, has_cache = ops.append_if_settled(*args)
    assert not done and not has_cache and tail[1] != known[1]
    assert log.read_bytes() == _line("a", 1)


def test_as_expected() -> None:
    own, others = b'{"id":"a:', b'{"id":"b:'
    a3, a4, b1, b5 = _line("a", 3), _line("a", 4), _line("b", 1), _line("b", 5)
    assert _as_expected(b"", Allowed(own, 3, 2, others, 0))
    assert _as_expected(b1 + b5, Allowed(own, 3, 2, others, 5))
    assert _as_expected(a3 + b1 + a4, Allowed(own, 3, 4, others, 1))
    assert not _as_expected(b"", Allowed(own, 3, 3, others, 0))  # a:3 is not there
    assert not _as_expected(a3, Allowed(own, 3, 4, others, 0))  # a:4 is not there
    assert not _as_expected(a4, Allowed(own, 3, 4, others, 0))  # a:3 skipped
    assert not _as_expected(a4 + a3, Allowed(own, 3, 4, others, 0))  # out of order
    assert not _as_expected(a3 + a3, Allowed(own, 3, 4, others, 0))
    assert not _as_expected(_line("b", 6), Allowed(own, 3, 2, others, 5))
    assert not _as_expected(b1[:-1], Allowed(own, 3, 2, others, 5))
    assert not _as_expected(_line("bb", 1), Allowed(own, 3, 2, others, 5))
    assert not _as_expected(_line("c", 1), Allowed(own, 3, 2, others, 5))
    assert not _as_expected(b'{"id":"b:x1"}\n', Allowed(own, 3, 2, others, 5))
    assert not _as_expected(b'{"id":"b:1\n', Allowed(own, 3, 2, others, 5))


def test_a_group_commit_leader_looks_first_and_takes_followers_after(pair: Pair) -> None:
    """A leader takes its followers after the peer's lock stage (writers arriving during that
    round trip join its group), so it does not use the one-round-trip write."""
    leader, follower = pair.twin("a"), pair.twin("a")
    acked = [leader.write("one").id, leader.write("two").id]
    assert trips(leader) == (1, 0)
    done = write_through_a_leader(pair, leader, follower, "via the leader", lambda: None)
    assert done == ["a:3"]
    assert trips(leader) == (1, 0)
    assert log_ids(pair.log_dir("b")) == [*acked, "a:3"]
    assert_converged(pair, [*acked, "a:3"])
