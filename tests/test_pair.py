"""The method end to end on a real pair of bind-mounted directories."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import traceback
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_ids
from twinlog import Config, StorageError, TwinLog


@pytest.mark.no_mounts
def test_dual_write_lands_in_both_logs(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    ea = a.write("from a", level="INFO")
    eb = b.write("from b")
    assert ea.id == "a:1" and eb.id == "b:1"
    assert log_ids(pair.log_dir("a")) == ["a:1", "b:1"]
    assert log_ids(pair.log_dir("b")) == ["a:1", "b:1"]
    assert not (pair.log_dir("a") / "twinlog.cache").exists()
    assert_converged(pair, [ea.id, eb.id])


def test_entry_fields(pair: Pair) -> None:
    a = pair.twin("a")
    e = a.write("disk replaced", level="WARNING", slot=3, tags=["x", "y"])
    assert e.node == "a" and e.seq == 1 and e.msg == "disk replaced"
    assert e.fields == {"level": "WARNING", "slot": 3, "tags": ["x", "y"]}
    assert e["level"] == e.level == "WARNING"
    assert e.ts.endswith("Z") and e.ts[10] == "T"
    (read,) = list(pair.twin("b").read())
    assert read == e


def test_partition_on_one_side_caches_then_drains_on_next_write(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    pair.cut("a")
    e1 = a.write("while cut")
    assert a.last_reason == "not_mounted"
    assert log_ids(pair.log_dir("a")) == ["a:1"]
    assert log_ids(pair.log_dir("b")) == []
    cache = (pair.log_dir("a") / "twinlog.cache").read_bytes().splitlines()
    assert [json.loads(x)["id"] for x in cache] == ["a:1"]
    # the plain mount point directory was never written to
    assert os.listdir(pair.peer_dir("a")) == []
    pair.connect("a")
    e2 = a.write("after heal")
    assert a.last_reason == "ok"
    assert log_ids(pair.log_dir("b")) == ["a:1", "a:2"]
    assert not (pair.log_dir("a") / "twinlog.cache").exists()
    b.write("b too")
    assert_converged(pair, [e1.id, e2.id])


@pytest.mark.no_mounts
def test_peer_pulls_our_cache_when_we_cannot_reach_it(pair: Pair) -> None:
    """Asymmetric: a cannot reach b, b reaches a; b's write pulls a's cache (4B)."""
    a, b = pair.twin("a"), pair.twin("b")
    pair.cut("a")
    acked = [a.write(f"a{i}").id for i in range(5)]
    acked.append(b.write("b writes").id)
    assert not (pair.log_dir("a") / "twinlog.cache").exists(), "b should have drained a's cache"
    assert log_ids(pair.log_dir("b"))[:5] == acked[:5]
    acked += [a.write("a again").id]  # a still cut: cached again
    pair.connect("a")
    a.reconcile()
    assert_converged(pair, acked)


@pytest.mark.no_mounts
def test_partition_on_both_sides_then_heal_and_reconcile(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write("before").id]
    pair.partition()
    for i in range(10):
        acked.append(a.write(f"a{i}").id)
        acked.append(b.write(f"b{i}").id)
    assert a.status()["cache_entries"]["local"] == 10
    assert b.status()["peer_reachable"] is False
    pair.heal()
    result = a.reconcile()
    assert (result.pushed, result.pulled) == (10, 10)
    assert b.reconcile().pushed == 0
    assert_converged(pair, acked)
    assert a.status()["in_sync"] and b.status()["in_sync"]


@pytest.mark.no_mounts
def test_drain_both_ways_on_next_write(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    pair.partition()
    acked = [a.write("a1").id, b.write("b1").id, b.write("b2").id]
    pair.heal()
    acked.append(a.write("a2").id)  # 4A pushes a1, 4B pulls b1 b2, then a2 both sides
    assert sorted(log_ids(pair.log_dir("b"))) == sorted(acked)
    assert not (pair.log_dir("b") / "twinlog.cache").exists()
    assert_converged(pair, acked)


@pytest.mark.no_mounts
def test_reconcile_is_idempotent(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    pair.partition()
    acked = [a.write(f"x{i}").id for i in range(3)] + [b.write("y").id]
    pair.heal()
    for _ in range(3):
        a.reconcile()
        b.reconcile()
    assert a.reconcile().pushed == 0
    assert_converged(pair, acked)


@pytest.mark.no_mounts
def test_merged_view_orders_by_clock_and_keeps_each_nodes_order(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    pair.partition()
    for i in range(5):
        a.write(f"a{i}")
        b.write(f"b{i}")
    pair.heal()
    a.reconcile()
    view = list(a.read())
    assert [e.sort_key for e in view] == sorted(e.sort_key for e in view)
    assert [e.msg for e in view if e.node == "a"] == [f"a{i}" for i in range(5)]
    assert [e.to_dict() for e in view] == [e.to_dict() for e in b.read()]


@pytest.mark.no_mounts
def test_a_new_entry_sorts_after_everything_its_node_has_seen(pair: Pair) -> None:
    """Causality: b's clock is far ahead; a's next entry, written after pulling b's, sorts last."""
    from twinlog.clock import HybridClock

    future = 4_000_000_000 * 1_000_000  # year 2096
    b = pair.twin("b", probe_timeout=2.0)
    b._sides.clock = HybridClock(lambda: future)
    b.write("from the future")
    a = pair.twin("a")
    e = a.write("reply")
    assert [x.msg for x in a.read()] == ["from the future", "reply"]
    assert e.ts > "2096"


@pytest.mark.no_mounts
def test_concurrent_threads_on_both_nodes(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked: list[str] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def writer(log: object, name: str) -> None:
        try:
            for i in range(40):
                e = log.write(f"{name}-{i}")  # type: ignore[attr-defined]
                with guard:
                    acked.append(e.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(log, f"{n}{t}"))
        for n, log in (("a", a), ("b", b))
        for t in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(acked) == len(set(acked)) == 320
    assert_converged(pair, acked)


@pytest.mark.no_mounts
def test_each_thread_sees_its_own_order(pair: Pair) -> None:
    a = pair.twin("a")
    seqs: dict[int, list[int]] = {}

    def writer(t: int) -> None:
        seqs[t] = [a.write(f"{t}-{i}").seq for i in range(30)]

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in seqs.values():
        assert s == sorted(s)
    assert sorted(x for s in seqs.values() for x in s) == list(range(1, 181))


def test_peer_dir_that_is_not_a_mount_is_never_written(pair: Pair) -> None:
    a = pair.twin("a")
    pair.cut("a")
    a.write("x")
    assert a.status()["peer_reason"] == "not_mounted"
    assert os.listdir(pair.peer_dir("a")) == []


def test_peer_that_is_really_ourselves(pair: Pair) -> None:
    pair.cut("a")
    os.system(f"mount --bind {pair.log_dir('a')} {pair.peer_dir('a')}")
    a = pair.twin("a")
    e = a.write("x")
    assert a.last_reason == "self"
    assert log_ids(pair.log_dir("a")) == [e.id]
    assert a.status()["peer_reason"] == "self"


def test_peer_dir_of_a_stranger(pair: Pair, tmp_path: object) -> None:
    pair.cut("a")
    stranger = pair.root / "stranger"
    stranger.mkdir()
    (stranger / "twinlog.node").write_text("zed\n")
    os.system(f"mount --bind {stranger} {pair.peer_dir('a')}")
    a = pair.twin("a")
    a.write("x")
    assert a.last_reason == "wrong_identity"
    assert sorted(os.listdir(stranger)) == ["twinlog.node"]


@pytest.mark.parametrize("swap_to", ["self", "stranger"])
def test_identity_is_checked_again_after_the_peer_mount_changes(pair: Pair, swap_to: str) -> None:
    """A connected writer checks the peer's identity on every contact (its worker may keep the
    directory open): a remount under peer_dir (here: ourselves, or a stranger) is caught at
    once."""
    a = pair.twin("a")
    for _ in range(3):
        a.write("before")
    assert a.last_reason == "ok"
    spawned = a.peer_worker_stats()["spawned"]
    pair.cut("a")
    if swap_to == "self":
        target = pair.log_dir("a")
    else:
        target = pair.root / "stranger"
        target.mkdir()
        (target / "twinlog.node").write_text("zed\n")
    os.system(f"mount --bind {target} {pair.peer_dir('a')}")
    e = a.write("after the swap")
    assert a.last_reason == ("self" if swap_to == "self" else "wrong_identity")
    assert a.peer_worker_stats()["spawned"] == spawned  # same worker: only the table changed
    assert log_ids(pair.log_dir("a")).count(e.id) == 1
    if swap_to == "stranger":
        assert sorted(os.listdir(target)) == ["twinlog.node"]
    pair.cut("a")
    pair.connect("a")
    a.write("healed")
    assert a.last_reason == "ok"
    assert_converged(pair)


def test_empty_mount_is_missing(pair: Pair) -> None:
    pair.cut("a")
    empty = pair.root / "empty"
    empty.mkdir()
    os.system(f"mount --bind {empty} {pair.peer_dir('a')}")
    a = pair.twin("a")
    a.write("x")
    assert a.last_reason == "missing"
    assert os.listdir(empty) == []


def test_status_is_json_serialisable_and_complete(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    a.write("1")
    pair.cut("b")
    b.write("2")
    st = b.status()
    json.dumps(st)
    assert st["peer_reachable"] is False and st["peer_reason"] == "not_mounted"
    assert st["cache_entries"] == {"local": 1, "peer": None}
    assert st["last_seq"] == {"b": 1, "a": 1}
    st = a.status()
    assert st["peer_reachable"] and st["cache_entries"] == {"local": 0, "peer": 1}
    assert st["pending_from_peer"] == 1 and not st["in_sync"]


@pytest.mark.no_mounts
def test_verify_reports_missing_ids(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    pair.partition()
    a.write("1")
    b.write("2")
    pair.heal()
    r = a.verify()
    assert not r.in_sync
    assert r.missing_on_peer == ["a:1"] and r.missing_on_local == ["b:1"]
    assert r.missing == {"a": ["b:1"], "b": ["a:1"]}
    a.reconcile()
    assert a.verify().in_sync


def test_verify_reports_duplicates(pair: Pair) -> None:
    a = pair.twin("a")
    a.write("1")
    log = pair.log_dir("b") / "twinlog.log"
    log.write_bytes(log.read_bytes() * 2)
    r = a.verify()
    assert not r.in_sync and r.duplicates_peer == ["a:1"] and r.duplicates == ["a:1"]


def test_verify_when_peer_unreachable(pair: Pair) -> None:
    a = pair.twin("a")
    pair.cut("a")
    r = a.verify()
    assert not r.in_sync and not r.peer_reachable and r.reason == "not_mounted"


def test_torn_last_line_is_kept_out_and_never_copied(pair: Pair) -> None:
    a = pair.twin("a")
    a.write("good")
    pair.cut("a")
    with open(pair.log_dir("a") / "twinlog.log", "ab") as f:
        f.write(b'{"id":"a:2","node":"a","seq":2,"ts":"2026-')  # a writer died mid-append
    assert [e.id for e in a.read()] == ["a:1"]
    pair.connect("a")
    e = a.write("next")
    assert e.id == "a:2", "the torn line was never acknowledged: its seq is reused"
    assert log_ids(pair.log_dir("a")) == ["a:1", "a:2"]
    assert log_ids(pair.log_dir("b")) == ["a:1", "a:2"]
    assert (pair.log_dir("a") / "twinlog.torn").read_bytes().startswith(b'{"id":"a:2"')
    assert_converged(pair, ["a:1", "a:2"])


def test_torn_line_in_peer_log_is_repaired_before_appending(pair: Pair) -> None:
    a = pair.twin("a")
    a.write("one")
    with open(pair.log_dir("b") / "twinlog.log", "ab") as f:
        f.write(b'{"id":"b:1","no')
    a.write("two")
    assert log_ids(pair.log_dir("b")) == ["a:1", "a:2"]


@pytest.mark.no_mounts
def test_state_survives_a_new_process(pair: Pair) -> None:
    a = pair.twin("a")
    for i in range(5):
        a.write(str(i))
    a.close()
    again = pair.twin("a")
    assert again.write("next").seq == 6


@pytest.mark.no_mounts
@pytest.mark.parametrize("count", [1, 3])
def test_many_instances_in_one_process_share_the_lock(pair: Pair, count: int) -> None:
    logs = [pair.twin("a") for _ in range(count)] + [pair.twin("b") for _ in range(count)]
    acked = []
    threads = []
    lock = threading.Lock()

    def go(log: object) -> None:
        for i in range(20):
            e = log.write(str(i))  # type: ignore[attr-defined]
            with lock:
                acked.append(e.id)

    for log in logs:
        threads.append(threading.Thread(target=go, args=(log,)))
        threads[-1].start()
    for t in threads:
        t.join()
    assert len(set(acked)) == 40 * count
    assert_converged(pair, acked)


def test_drain_cut_off_half_way_is_completed_without_duplicates(pair: Pair) -> None:
    """A crash left the first two cached entries on the peer but the cache in place."""
    a = pair.twin("a")
    pair.cut("a")
    acked = [a.write(f"e{i}").id for i in range(5)]
    cached = (pair.log_dir("a") / "twinlog.cache").read_bytes().splitlines(keepends=True)
    with open(pair.log_dir("b") / "twinlog.log", "ab") as f:
        f.writelines(cached[:2])
    pair.connect("a")
    assert a.reconcile().pushed == 3
    assert log_ids(pair.log_dir("b")) == acked
    assert_converged(pair, acked)


def test_entry_lost_between_log_and_cache_is_found_in_the_log(pair: Pair) -> None:
    """A crash after the local append but before the cache append: the log is the truth."""
    a = pair.twin("a")
    pair.cut("a")
    acked = [a.write(f"e{i}").id for i in range(3)]
    (pair.log_dir("a") / "twinlog.cache").write_bytes(b"")  # the cache lost everything
    pair.connect("a")
    assert a.reconcile().pushed == 3
    assert_converged(pair, acked)


@pytest.mark.no_mounts
def test_checkpoints_let_a_fresh_process_start_from_the_end(pair: Pair) -> None:
    pair.options["fsync"] = False
    a, b = pair.twin("a"), pair.twin("b")
    for i in range(300):
        (a if i % 3 else b).write(f"{i} " + "p" * 4000)
    for node in "ab":
        idx = json.loads((pair.log_dir(node) / "twinlog.idx").read_text())
        assert idx["offset"] > 1 << 20
        assert idx["hwm"]["a"] > 0 and idx["hwm"]["b"] > 0
    fresh = pair.twin("a")
    fresh._sides.local.refresh(repair=False)
    assert fresh._sides.local.state is not None
    assert fresh._sides.local.state.checkpoint_offset > 0, "started from the checkpoint"
    assert fresh.write("next").seq == 201
    # a checkpoint that does not match the file is ignored, not trusted
    (pair.log_dir("a") / "twinlog.idx").write_text(
        json.dumps({"offset": 10, "tail": "00", "hwm": {"a": 999}, "max_ts": ""})
    )
    assert pair.twin("a").write("again").seq == 202
    assert_converged(pair)


def test_a_group_member_can_read_but_not_write(pair: Pair) -> None:
    """With the role's modes (dir 0750, files 0640, group twinlog), a group member reads."""
    a = pair.twin("a")
    a.write("one")
    pair.twin("b").write("two")
    for node in "ab":
        os.chown(pair.log_dir(node), 0, 65534)
        os.chmod(pair.log_dir(node), 0o750)
        for f in pair.log_dir(node).iterdir():
            os.chown(f, 0, 65534)
            os.chmod(f, 0o640)
    # let "others" traverse down to the directories (pytest's tmp dirs are 0700)
    modes: dict[Path, int] = {}
    for parent in [pair.root / "a", pair.root, *pair.root.parents]:
        if parent == Path(tempfile.gettempdir()) or parent == parent.parent:
            break
        modes[parent] = parent.stat().st_mode & 0o7777
        os.chmod(parent, modes[parent] | 0o005)
    try:
        seen = _read_as_nobody(pair.config("a"))
    finally:
        for parent, mode in modes.items():
            os.chmod(parent, mode)
    assert seen == {"ids": ["a:1", "b:1"], "last_seq": {"a": 1, "b": 1}, "write": "StorageError"}


def _read_as_nobody(config: Config) -> dict[str, object]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        result: dict[str, object] = {}
        try:
            os.setgid(65534)
            os.setuid(65534)
            log = TwinLog(config)
            result["ids"] = [e.id for e in log.read()]
            result["last_seq"] = log.status()["last_seq"]
            try:
                log.write("not allowed")
            except StorageError as exc:
                result["write"] = type(exc).__name__
        except BaseException:
            result["error"] = traceback.format_exc()
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        return json.loads(f.read())  # type: ignore[no-any-return]
