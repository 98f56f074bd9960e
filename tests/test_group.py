"""Group commit across processes: one leader commits for all, and nothing is lost or doubled
when the leader or a follower dies or gives up at any point of the hand-over."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_ids, sealed_after, spawn, write_through_a_leader
from twinlog import Config, TwinLog
from twinlog._group import Follower, Leadership, follow
from twinlog.entry import encode_entry


def run_all(procs: list[subprocess.Popen[str]]) -> tuple[list[str], list[dict[str, int]], int]:
    """Wait for every writer: acknowledged ids, the counters of those that ended normally, and
    how many died by SIGKILL (their failpoint)."""
    acked: list[str] = []
    stats: list[dict[str, int]] = []
    killed = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        acked += [line for line in out.splitlines() if ":" in line]
        if proc.returncode == -signal.SIGKILL:
            killed += 1
        elif proc.returncode == 0:
            stats.append(json.loads(err.strip().splitlines()[-1]))
        else:
            raise AssertionError(f"writer failed ({proc.returncode}): {err}")
    return acked, stats, killed


@pytest.mark.parametrize("peer_up", [True, False])
def test_writer_processes_commit_in_groups_exactly_once(pair: Pair, peer_up: bool) -> None:
    if not peer_up:
        pair.cut("a")
    procs = [spawn(pair, "a", 80, prefix=f"p{i}") for i in range(6)]
    acked, stats, killed = run_all(procs)
    assert killed == 0
    assert len(acked) == len(set(acked)) == 480
    assert sum(s["followers_served"] for s in stats) > 0, "no process ever led a group"
    assert sum(s["followed"] for s in stats) > 0
    ids = log_ids(pair.log_dir("a"))
    assert sorted(ids) == sorted(acked)
    assert [int(i.split(":")[1]) for i in ids] == list(range(1, 481))
    pair.heal()
    pair.twin("a").reconcile()
    assert_converged(pair, acked)


@pytest.mark.parametrize("point", ["after_assign", "after_local_append", "after_peer_append"])
def test_leader_killed_mid_group(pair: Pair, point: str) -> None:
    """Two of six writers are armed to die at the point (after_assign is reached only when
    leading a group with followers; the others when leading at all); the followers settle what
    the dead leader had assigned to them. Rounds repeat until a leader was killed."""
    acked: list[str] = []
    stats: list[dict[str, int]] = []
    killed = 0
    for _ in range(5):
        procs = [
            spawn(pair, "a", 60, prefix=f"p{i}", failpoint=f"{point}@2" if i < 2 else "")
            for i in range(6)
        ]
        more, more_stats, more_killed = run_all(procs)
        acked += more
        stats += more_stats
        killed += more_killed
        if killed:
            break
    assert killed >= 1, f"{point} never reached"
    assert len(acked) == len(set(acked))
    if point == "after_assign":
        assert sum(s["orphans"] for s in stats) > 0, "no follower had to settle"
    pair.heal()
    pair.twin("a").reconcile()
    pair.twin("b").reconcile()
    assert_converged(pair, acked)
    a_ids = log_ids(pair.log_dir("a"))
    assert len(a_ids) == len(set(a_ids))
    assert [int(i.split(":")[1]) for i in a_ids] == list(range(1, len(a_ids) + 1))


def test_orphans_written_by_a_dead_leader_are_answered_not_written_again(pair: Pair) -> None:
    """The leader appended our assigned entries and died: they count as written, and are not
    appended again anywhere (not even to the cache, with the peer away: the drain finds them in
    the log, and a late cache line could come after a later seq)."""
    pair.cut("a")
    a = pair.twin("a", group_commit=False)
    first = a.write("before")
    ts = "2099-01-01T00:00:00.000001Z"
    line = sealed_after(pair.log_dir("a"), encode_entry("a", 2, ts, "orphan", b'"k":1'))
    with open(pair.log_dir("a") / "twinlog.log", "ab") as f:  # what the dead leader wrote
        f.write(line)
    from twinlog._commit import Commit, Pending

    written = Pending("orphan", b'"k":1', {"k": 1}, orphan=(2, ts))
    unwritten = Pending("lost", b"", {}, orphan=(3, "2099-01-01T00:00:00.000002Z"))
    with a._mutex:
        Commit(a._sides, a._stats, [written, unwritten]).run()
    assert written.entry is not None and written.entry.id == "a:2"
    assert written.entry.ts == ts
    assert unwritten.entry is not None and unwritten.entry.seq == 3
    assert log_ids(pair.log_dir("a")) == [first.id, "a:2", "a:3"]
    cache = (pair.log_dir("a") / "twinlog.cache").read_bytes()
    assert line not in cache and b'"a:3"' in cache
    pair.connect("a")
    a.reconcile()
    assert_converged(pair, [first.id, "a:2", "a:3"])


# -- the hand-over protocol itself --------------------------------------------------------------
@pytest.fixture
def name(tmp_path: Path) -> bytes:
    return f"\0twinlog-test-{os.getpid()}-{tmp_path.name}".encode()


def _leader_thread(
    name: bytes, script: list[tuple[str, float]], log: list[object]
) -> threading.Thread:
    """A fake leader: takes one follower and follows ``script`` (action, delay before it)."""
    lead = Leadership.try_take(name)
    assert lead is not None

    def run() -> None:
        try:
            followers: list[Follower] = []
            deadline = time.monotonic() + 5
            while not followers and time.monotonic() < deadline:
                followers = lead.collect()
                time.sleep(0.005)
            (f,) = followers
            log.append(f.items)
            for action, delay in script:
                time.sleep(delay)
                if action == "assign":
                    log.append(f.assign([(7, "ts")]))
                elif action == "done":
                    f.answer(None)
                elif action == "fail":
                    f.answer(OSError(28, "No space left on device"))
                elif action == "close":
                    f.sock.close()
            f.sock.close()
        finally:
            lead.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_follower_done(name: bytes) -> None:
    log: list[object] = []
    t = _leader_thread(name, [("assign", 0), ("done", 0)], log)
    outcome = follow(name, [("m", b"")], 5)
    t.join()
    assert (outcome.kind, outcome.assigned) == ("done", [(7, "ts")])
    assert log == [[("m", b"")], True]


def test_follower_of_a_leader_that_died_after_assigning_is_an_orphan(name: bytes) -> None:
    t = _leader_thread(name, [("assign", 0), ("close", 0)], [])
    outcome = follow(name, [("m", b"")], 5)
    t.join()
    assert (outcome.kind, outcome.assigned) == ("orphan", [(7, "ts")])


def test_follower_of_a_leader_that_hangs_after_assigning_is_an_orphan(name: bytes) -> None:
    """The follower sleeps until the leader hangs up; a leader that assigned and then never
    answers nor hangs up (stuck in an fsync, say) still leaves it settling as an orphan."""
    log: list[object] = []
    t = _leader_thread(name, [("assign", 0), ("done", 2.0)], log)
    start = time.monotonic()
    outcome = follow(name, [("m", b"")], 0.3)
    waited = time.monotonic() - start
    t.join()
    assert (outcome.kind, outcome.assigned) == ("orphan", [(7, "ts")])
    assert waited < 1.5, "a follower waited for a hung leader's answer past its patience"


def test_follower_that_gives_up_before_any_assignment_is_never_assigned(name: bytes) -> None:
    log: list[object] = []
    t = _leader_thread(name, [("assign", 0.6)], log)
    outcome = follow(name, [("m", b"")], 0.2)
    t.join()
    assert outcome.kind == "timeout"
    assert log[-1] is False, "the leader could still assign a follower that gave up"


def test_follower_that_gives_up_just_after_an_assignment_still_sees_it(name: bytes) -> None:
    """The A arrives while the follower is deciding to give up: it must count as assigned."""
    lead = Leadership.try_take(name)
    assert lead is not None
    follower_sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    follower_sock.connect(name)
    follower_sock.send(pickle.dumps([("m", b"")]))
    time.sleep(0.05)
    (f,) = lead.collect()
    assert f.assign([(9, "ts")])
    # what follow() does when its patience ends: shut reading, then read what is there
    follower_sock.shutdown(socket.SHUT_RD)
    assert follower_sock.recv(1 << 16)[:1] == b"A"
    assert not f.assign([(10, "ts")]), "an assignment after the shutdown must fail"
    f.sock.close()
    follower_sock.close()
    lead.close()


def test_an_error_before_assignment_is_reported(name: bytes) -> None:
    t = _leader_thread(name, [("fail", 0)], [])
    outcome = follow(name, [("m", b"")], 5)
    t.join()
    assert outcome.kind == "error" and outcome.error is not None
    assert "No space left" in outcome.error[1]


def test_an_error_after_assignment_is_settled_like_an_orphan(name: bytes) -> None:
    t = _leader_thread(name, [("assign", 0), ("fail", 0)], [])
    outcome = follow(name, [("m", b"")], 5)
    t.join()
    assert (outcome.kind, outcome.assigned) == ("orphan", [(7, "ts")])


def test_no_leader_means_retry(name: bytes) -> None:
    assert follow(name, [("m", b"")], 1).kind == "retry"


def test_one_leader_at_a_time_and_the_name_is_freed_on_close(name: bytes) -> None:
    first = Leadership.try_take(name)
    assert first is not None
    assert Leadership.try_take(name) is None
    first.close()
    again = Leadership.try_take(name)
    assert again is not None
    again.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_can_neither_follow_nor_lead(name: bytes) -> None:
    lead = Leadership.try_take(name)
    assert lead is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            os.setgid(65534)
            os.setuid(65534)
            outcome = follow(name, [("intruder", b"")], 0.5)
            os._exit(0 if outcome.kind == "retry" else 1)
        except BaseException:
            os._exit(2)
    time.sleep(0.2)
    assert lead.collect() == [], "a stranger's request was accepted"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lead.close()


@pytest.mark.no_mounts
def test_group_commit_can_be_turned_off(pair: Pair) -> None:
    config = Config.from_mapping({**pair.config_dict("a"), "group_commit": False})
    with TwinLog(config) as log:
        log.write("alone")
        assert log.group_stats["led"] == log.group_stats["uncontended"] == 0
    with TwinLog(pair.config("a")) as log:
        log.write("grouped")
        assert log.group_stats["led"] + log.group_stats["uncontended"] == 1


def test_a_free_lock_skips_the_election_a_busy_one_does_not(pair: Pair) -> None:
    """With nobody committing, a writer takes the lock at once and commits alone. With the
    lock busy it goes through the election (and so groups with whoever waits)."""
    a = pair.twin("a")
    a.write("free")
    assert a.group_stats == {**a.group_stats, "uncontended": 1, "led": 0}
    other = pair.twin("a")
    other._local_ops.lock(1.0)
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(a.write("busy").id))
    t.start()
    time.sleep(0.2)
    assert not done, "wrote while another instance held the lock"
    other._local_ops.unlock()
    t.join(5)
    assert done == ["a:2"]
    assert a.group_stats["uncontended"] == 1 and a.group_stats["led"] == 1
    assert log_ids(pair.log_dir("a")) == log_ids(pair.log_dir("b")) == ["a:1", "a:2"]


def test_the_node_whose_peer_locks_first_always_elects_while_the_peer_is_up(pair: Pair) -> None:
    """Node b takes a's lock (through the mount) before its own: it must not hold its own lock
    while waiting for a's, so it never takes the uncontended path with the peer reachable; with
    the peer away it may."""
    b = pair.twin("b")
    b.write("peer up")
    assert b.group_stats["uncontended"] == 0 and b.group_stats["led"] == 1
    pair.cut("b")
    b.write("peer away")
    assert b.group_stats["uncontended"] == 1 and b.last_reason == "not_mounted"


def test_a_follower_learns_the_leaders_view_of_the_peer(pair: Pair) -> None:
    """The answer carries the leader's reason (and back-off): a follower's last_reason is right,
    and after a peer timeout the next leader does not knock on that peer again at once."""
    pair.cut("a")
    leader, follower = pair.twin("a"), pair.twin("a")

    def as_after_a_timeout() -> None:
        # ...but the reason this time is the missing mount
        leader._sides.reach._backoff_until = time.monotonic() + 60

    done = write_through_a_leader(pair, leader, follower, "via the leader", as_after_a_timeout)
    assert done == ["a:1"]
    assert follower.group_stats["followed"] == 1
    assert follower.last_reason == "not_mounted"
    assert log_ids(pair.log_dir("a")) == ["a:1"]


@pytest.mark.no_mounts
def test_the_answer_carries_the_back_off(name: bytes, pair: Pair) -> None:
    lead = Leadership.try_take(name)
    assert lead is not None
    until = time.monotonic() + 30

    def leader() -> None:
        deadline = time.monotonic() + 5
        followers: list[Follower] = []
        while not followers and time.monotonic() < deadline:
            followers = lead.collect()
            time.sleep(0.005)
        (f,) = followers
        f.assign([(1, "ts")])
        f.answer(None, ("timeout", until))

    t = threading.Thread(target=leader)
    t.start()
    outcome = follow(name, [("m", b"")], 5)
    t.join()
    lead.close()
    assert outcome.kind == "done" and outcome.peer == ("timeout", until)
    twin = pair.twin("a")
    twin._sides.reach.told(*outcome.peer)
    assert twin._sides.reach.backing_off() == "timeout" and twin.last_reason == "timeout"
    twin._sides.reach.told("ok", 0.0)
    assert twin._sides.reach.backing_off() is None
