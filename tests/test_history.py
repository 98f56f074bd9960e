"""A node that lost its log gets its history back from the peer, and never reuses an id.

Real bind-mounted pairs (``pair`` fixture): a disk replaced is the directory emptied and
``init`` run again; a snapshot rollback is a copy of the directory restored after more writes.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_ids, log_lines
from twinlog import TwinLog
from twinlog._history import CONFLICT_FILE, find_line
from twinlog.cli import main


def replace_disk(pair: Pair, node: str) -> TwinLog:
    """``node``'s disk is replaced: its directory comes back empty, and ``init`` runs."""
    log_dir = pair.log_dir(node)
    for path in log_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return TwinLog.init(pair.config(node))


def all_lines(log_dir: Path) -> list[bytes]:
    """Every entry line of a node's log, segments first."""
    lines = []
    for seg in sorted(log_dir.glob("twinlog.log.*"), key=lambda p: p.name):
        if seg.name.rsplit(".", 1)[-1].isdigit():
            lines += seg.read_bytes().splitlines()
    return lines + log_lines(log_dir)


def assert_one_entry_per_id(*log_dirs: Path) -> None:
    """Never two different entries under one id, in any log or across both."""
    seen: dict[str, bytes] = {}
    for log_dir in log_dirs:
        counts = collections.Counter()
        for line in all_lines(log_dir):
            entry_id = json.loads(line)["id"]
            counts[entry_id] += 1
            assert seen.setdefault(entry_id, line) == line, f"two entries under {entry_id}"
        assert not [i for i, n in counts.items() if n > 1], f"duplicates in {log_dir}"


@pytest.mark.no_mounts
def test_disk_replaced_with_the_peer_up_recovers_before_allocating(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write(f"a{i}").id for i in range(5)] + [b.write(f"b{i}").id for i in range(3)]
    a.close()
    fresh = replace_disk(pair, "a")
    entry = fresh.write("after the new disk")
    assert entry.id == "a:6"
    # Our entries came back in their order, before the new one, with b's entries.
    assert [i for i in log_ids(pair.log_dir("a")) if i.startswith("a:")] == [*acked[:5], "a:6"]
    assert set(log_ids(pair.log_dir("a"))) == {*acked, "a:6"}
    assert_converged(pair, [*acked, "a:6"])
    assert_one_entry_per_id(pair.log_dir("a"), pair.log_dir("b"))


@pytest.mark.no_mounts
def test_init_on_an_empty_directory_takes_the_history_back(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write(f"a{i}").id for i in range(4)] + [b.write("b0").id]
    a.close()
    replace_disk(pair, "a").close()
    (pair.log_dir("a") / "twinlog.node").unlink()
    config = tmp_path / "a.toml"
    cfg = pair.config_dict("a")
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items()))
    assert main(["--config", str(config), "init"]) == 0
    out = capsys.readouterr().out
    assert "took back 4 entries of a" in out
    assert set(log_ids(pair.log_dir("a"))) == set(acked)
    assert pair.twin("a").write("next").id == "a:5"


@pytest.mark.no_mounts
def test_disk_replaced_recovers_rotated_history(pair: Pair) -> None:
    a, b = pair.twin("a", rotate_bytes=4096), pair.twin("b", rotate_bytes=4096)
    acked = []
    for i in range(60):
        acked.append(a.write(f"a{i} " + "x" * 100).id)
        acked.append(b.write(f"b{i} " + "y" * 100).id)
    a.rotate()
    b.rotate()
    assert list(pair.log_dir("b").glob("twinlog.log.*"))
    a.close()
    fresh = replace_disk(pair, "a")
    assert fresh.write("new").id == "a:61"
    assert_converged_all(pair, [*acked, "a:61"])


def assert_converged_all(pair: Pair, acked: list[str]) -> None:
    """As assert_converged, across segments: both nodes hold every acknowledged id once."""
    for node in ("a", "b"):
        ids = [json.loads(line)["id"] for line in all_lines(pair.log_dir(node))]
        assert len(ids) == len(set(ids)), f"duplicates on {node}"
        assert set(acked) <= set(ids), f"lost on {node}: {sorted(set(acked) - set(ids))[:5]}"
    views = [[e.to_dict() for e in pair.twin(n).read()] for n in ("a", "b")]
    assert views[0] == views[1]
    assert pair.twin("a").verify().in_sync
    assert_one_entry_per_id(pair.log_dir("a"), pair.log_dir("b"))


@pytest.mark.no_mounts
def test_snapshot_rollback_recovers_from_the_snapshot_seq(pair: Pair, tmp_path: Path) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    acked = [a.write(f"a{i}").id for i in range(3)]
    a.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(pair.log_dir("a"), snapshot)
    a = pair.twin("a")
    acked += [a.write(f"later{i}").id for i in range(4)] + [b.write("b").id]
    a.close()
    replace_disk(pair, "a").close()  # in place: b's mount of it stays
    shutil.copytree(snapshot, pair.log_dir("a"), dirs_exist_ok=True)
    restored = pair.twin("a")
    assert restored.write("after the rollback").id == "a:8"
    assert_converged(pair, [*acked, "a:8"])


@pytest.mark.no_mounts
def test_a_peer_log_made_anew_under_the_same_inode_is_read_afresh(
    pair: Pair, tmp_path: Path
) -> None:
    """b's directory is rolled back by copying the snapshot's files over the live ones (``cp``:
    each file keeps its inode) and b's log grows past where a's open TwinLog last read it.
    Same inode, larger size: a must still see another file and deliver what b lost, not take
    b for the log it read and append after a gap. (The history run found the same after a
    wipe, when the new log got the freed inode's number: 7,015 entries missing on b.)"""
    a, b = pair.twin("a"), pair.twin("b")
    acked = [e.id for e in a.write_many([f"a{i}" for i in range(3)])]
    b.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(pair.log_dir("b"), snapshot, ignore=shutil.ignore_patterns("twinlog.lock"))
    acked += [e.id for e in a.write_many([f"later{i}" for i in range(20)])]  # a keeps its view
    for path in pair.log_dir("b").iterdir():
        if path.name != "twinlog.lock" and not (snapshot / path.name).exists():
            path.unlink()
    for path in snapshot.iterdir():
        shutil.copyfile(path, pair.log_dir("b") / path.name)  # in place, as cp does
    pair.cut("b")  # b writes on its own until its log is longer than a last saw it
    b = pair.twin("b")
    while (pair.log_dir("b") / "twinlog.log").stat().st_size < a._sides.peer.read_offset + 100:
        acked.append(b.write("b alone, " + "x" * 200).id)
    pair.heal()
    acked.append(a.write("after the rollback").id)
    b.reconcile()
    assert_one_entry_per_id(pair.log_dir("a"), pair.log_dir("b"))
    assert_converged(pair, acked)
    a.close()
    b.close()


@pytest.mark.no_mounts
def test_the_peer_gives_a_node_its_history_back_on_its_own_contact(pair: Pair) -> None:
    """b's disk is replaced: a's next write gives b its own entries back (whichever node
    makes contact first restores the other's history), and b continues after them."""
    a, b = pair.twin("a"), pair.twin("b")
    acked = [b.write(f"b{i}").id for i in range(3)] + [a.write("a0").id]
    b.close()
    replace_disk(pair, "b").close()
    acked.append(a.write("a1").id)
    assert {i for i in log_ids(pair.log_dir("b")) if i.startswith("b:")} == {"b:1", "b:2", "b:3"}
    assert pair.twin("b").write("b again").id == "b:4"
    assert_converged(pair, [*acked, "b:4"])


def test_disk_lost_during_a_partition_is_a_conflict_then_repair(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    old = [a.write(f"old{i}").id for i in range(5)] + [b.write("b0").id]
    a.close()
    pair.partition()
    fresh = replace_disk(pair, "a")
    new = [fresh.write(f"new{i}") for i in range(3)]
    assert [e.id for e in new] == ["a:1", "a:2", "a:3"]  # nobody could know
    pair.heal()
    # On contact: nothing of the conflicting range moves, writes go on (cached), and no id
    # either node holds is given again.
    during = fresh.write("during the conflict")
    assert during.id == "a:6"
    b_ids = log_ids(pair.log_dir("b"))
    assert b_ids.count("a:1") == 1
    assert "a:6" not in b_ids
    status = fresh.status()
    assert status["conflict"]["origin"] == "a"
    assert status["conflict"]["first_id"] == "a:1"
    assert not status["in_sync"]
    assert pair.twin("b").status()["conflict"]["first_id"] == "a:1"
    result = fresh.verify()
    assert not result.in_sync
    assert result.conflicts == ["a:1", "a:2", "a:3"]
    assert (pair.log_dir("a") / CONFLICT_FILE).exists()
    b_entry = pair.twin("b").write("b keeps writing")
    assert b_entry.id == "b:2"
    # The operator repairs on a.
    repaired = fresh.repair()
    assert repaired.repaired
    assert repaired.first_id == "a:1"
    assert repaired.relogged == [("a:1", "a:7"), ("a:2", "a:8"), ("a:3", "a:9")]
    assert repaired.archive is not None
    archive = pair.log_dir("a") / repaired.archive
    archived = (archive / "twinlog.log").read_bytes()
    assert b"new0" in archived and b"during the conflict" in archived
    view = {e.id: e for e in fresh.read()}
    for old_id in old[:5]:
        assert view[old_id].msg.startswith("old")
    assert view["a:6"].msg == "during the conflict"
    assert view["a:7"].msg == "new0"
    assert view["a:7"]["replaces"] == "a:1"
    assert not (pair.log_dir("a") / CONFLICT_FILE).exists()
    assert not (pair.log_dir("b") / CONFLICT_FILE).exists()
    assert fresh.status()["conflict"] is None
    assert fresh.write("after the repair").id == "a:10"
    assert_converged(pair, [*old, "a:6", "a:7", "a:8", "a:9", "a:10", b_entry.id])
    assert_one_entry_per_id(pair.log_dir("a"), pair.log_dir("b"))


def lose_disk_while_cut_off(pair: Pair) -> None:
    """a writes a:1, loses its disk while cut off, writes a different a:1; the link heals."""
    a = pair.twin("a")
    a.write("x")
    a.close()
    pair.partition()
    replace_disk(pair, "a").write("y")
    pair.heal()


def test_repair_on_the_wrong_node_says_where_to_run_it(pair: Pair) -> None:
    lose_disk_while_cut_off(pair)
    b = pair.twin("b")
    b.reconcile()
    result = b.repair()
    assert not result.repaired
    assert result.reason == "peer_history"
    assert result.first_id == "a:1"


def test_a_conflict_found_by_the_peer_is_kept_across_restarts(pair: Pair) -> None:
    lose_disk_while_cut_off(pair)
    pair.twin("b").reconcile()  # b finds it first
    assert json.loads((pair.log_dir("b") / CONFLICT_FILE).read_text())[0]["first_id"] == "a:1"
    pair.partition()
    cut_off = pair.twin("a")
    assert cut_off.write("z").id == "a:2"  # a cannot know yet: the peer is away
    pair.heal()
    again = pair.twin("a")
    again.reconcile()
    assert again.status()["conflict"]["first_id"] == "a:1"
    assert (pair.log_dir("a") / CONFLICT_FILE).exists()
    pair.partition()
    assert pair.twin("a").write("w").id == "a:3"  # after both marks (a:2 here, a:1 there)


@pytest.mark.no_mounts
def test_find_line_locates_entries_across_segments(pair: Pair) -> None:
    a = pair.twin("a", rotate_bytes=4096)
    for i in range(100):
        a.write(f"{i} " + "z" * 80)
        if i % 30 == 29:
            a.rotate()
    store = a._sides.local
    for seq in (1, 30, 31, 99, 100):
        line = find_line(store, "a", seq)
        assert line is not None and json.loads(line)["id"] == f"a:{seq}"
    assert find_line(store, "a", 101) is None
    assert find_line(store, "b", 1) is None


# -- directories ---------------------------------------------------------------------------
def test_a_missing_log_dir_is_refused_and_init_creates_it(tmp_path: Path) -> None:
    from twinlog import Config, NotInitialisedError

    config = Config("a", "b", tmp_path / "disk" / "log", tmp_path / "peer", require_mount=False)
    with pytest.raises(NotInitialisedError, match="twinlog init") as info:
        TwinLog(config)
    assert str(tmp_path / "disk" / "log") in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "disk").exists()  # nothing created on the root disk
    with TwinLog.init(config) as log:
        assert log.write("x").id == "a:1"


def test_commands_other_than_init_refuse_a_missing_log_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = tmp_path / "log"
    config = tmp_path / "a.toml"
    config.write_text(
        f'node = "a"\npeer = "b"\nlog_dir = "{log_dir}"\npeer_dir = "{tmp_path}/peer"\n'
    )
    for argv in (["write", "x"], ["tail"], ["reconcile"], ["verify"], ["rotate"], ["repair"]):
        assert main(["--config", str(config), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert str(log_dir) in err and "twinlog init" in err, err
        assert not log_dir.exists()
    # status is a monitoring check: a state it cannot read is UNKNOWN (issue 23).
    assert main(["--config", str(config), "status"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("TWINLOG UNKNOWN - ") and "twinlog init" in out
    assert main(["--config", str(config), "init"]) == 0
    assert log_dir.is_dir()


@pytest.mark.parametrize("key", ["log_dir", "peer_dir"])
def test_relative_directories_are_a_config_error(key: str, tmp_path: Path) -> None:
    from twinlog import Config, ConfigError

    paths = {"log_dir": tmp_path / "log", "peer_dir": tmp_path / "peer"}
    paths[key] = Path("relative/dir")
    with pytest.raises(ConfigError, match=f"{key} must be an absolute path.*relative/dir"):
        Config("a", "b", **paths)


def test_a_read_only_log_dir_can_be_read(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import subprocess

    from twinlog import Config, StorageError

    a = pair.twin("a")
    ids = [a.write(f"m{i}").id for i in range(3)] + [pair.twin("b").write("b").id]
    a.close()
    ro = tmp_path / "forensic"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(pair.log_dir("a")), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        config = Config("a", "b", ro, pair.peer_dir("a"))
        with TwinLog(config) as copy:
            assert {e.id for e in copy.read()} == set(ids)
            status = copy.status()
            assert status["last_seq"] == {"a": 3, "b": 1}
            assert status["peer_reachable"]
            assert copy.verify().in_sync
            with pytest.raises(StorageError, match=f"{ro}.*read-only|{ro}.*Read-only") as info:
                copy.write("nope")
            assert str(ro) in str(info.value)
        toml = tmp_path / "ro.toml"
        toml.write_text(
            f'node = "a"\npeer = "b"\nlog_dir = "{ro}"\npeer_dir = "{pair.peer_dir("a")}"\n'
        )
        assert main(["--config", str(toml), "tail", "-n", "all"]) == 0
        assert "m2" in capsys.readouterr().out
        assert main(["--config", str(toml), "write", "x"]) == 2
        err = capsys.readouterr().err
        assert str(ro) in err and "read-only" in err
    finally:
        subprocess.run(["umount", str(ro)], check=False)
        os.sync()


def test_the_command_line_reports_and_repairs_a_conflict(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = {}
    for node in ("a", "b"):
        configs[node] = tmp_path / f"{node}.toml"
        configs[node].write_text(
            "".join(f"{k} = {json.dumps(v)}\n" for k, v in pair.config_dict(node).items())
        )

    def run(node: str, *argv: str) -> tuple[int, str]:
        code = main(["--config", str(configs[node]), *argv])
        return code, capsys.readouterr().out

    a = pair.twin("a")
    for i in range(3):
        a.write(f"old {i}")
    a.close()
    for path in pair.log_dir("a").iterdir():
        path.unlink()
    code, out = run("a", "status")
    assert code == 1
    assert "3 entries of a's own that its log lost to take back from b" in out
    pair.partition()
    assert run("a", "init")[0] == 0
    assert run("a", "write", "new")[0] == 0
    pair.heal()
    for node in ("a", "b"):
        code, out = run(node, "status")
        assert code == 2, out
        assert out.startswith("TWINLOG CRITICAL - history conflict: a's entries differ")
        assert "from a:1 on" in out and "'twinlog repair' on a" in out
    code, out = run("a", "status", "--json")
    assert json.loads(out)["conflict"]["first_id"] == "a:1"
    code, out = run("a", "status", "--prometheus")
    assert 'twinlog_history_conflicts{node="a"} 1' in out
    code, out = run("a", "verify")
    assert code == 1
    assert "different entries under one id (history conflict): a:1" in out
    assert "run 'twinlog repair' on a" in out and "twinlog reconcile" not in out
    code, out = run("b", "repair")
    assert code == 1 and "run 'twinlog repair' on a" in out
    code, out = run("a", "repair")
    assert code == 0, out
    assert "re-logged a:1 as a:4" in out
    assert run("a", "status")[0] == 0
    code, out = run("a", "repair")
    assert code == 0 and "nothing to repair" in out


def test_repair_re_logs_only_entries_that_differ(pair: Pair, tmp_path: Path) -> None:
    """A record that names an earlier first conflicting id than the logs show (restored from a
    snapshot, say): entries identical on both sides are not re-logged."""
    a = pair.twin("a")
    a.write("one")
    a.write("two")
    a.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(pair.log_dir("a"), snapshot)
    pair.twin("a").write("three")
    replace_disk(pair, "a").close()
    shutil.copytree(snapshot, pair.log_dir("a"), dirs_exist_ok=True)
    pair.partition()
    pair.twin("a").write("three, again")  # a:3, different
    pair.heal()
    a = pair.twin("a")
    a.reconcile()
    record = pair.log_dir("a") / CONFLICT_FILE
    doc = json.loads(record.read_text())
    assert doc[0]["first_seq"] == 3
    doc[0]["first_seq"] = 1
    record.write_text(json.dumps(doc))
    result = a.repair()
    assert result.repaired
    assert result.relogged == [("a:3", "a:4")]
    msgs = [e.msg for e in a.read()]
    assert msgs == ["one", "two", "three", "three, again"]
    assert_converged(pair, ["a:1", "a:2", "a:3", "a:4"])
