"""Any program logs with its level and fields, exactly once: one set of levels, idempotency
keys (``write(key=...)``) across threads, processes and restarts, and ``twinlog write --json``
with rsyslog's confirmation protocol (the real rsyslogd is in test_rsyslog.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_lines, run, write_through_a_leader, write_toml
from twinlog import InvalidEntryError, InvalidTypeError, ReservedFieldError
from twinlog._levels import SEVERITY, SYSLOG_SEVERITY, canonical_level, python_level
from twinlog.handler import record_fields


def _entries(log_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log_lines(log_dir)]


# -- levels -----------------------------------------------------------------------------
def test_levels_are_one_set_and_syslog_severities_map_onto_them() -> None:
    assert SYSLOG_SEVERITY[3] == "ERROR" and SYSLOG_SEVERITY[0] == "EMERGENCY"
    assert [canonical_level(n) for n in range(8)] == list(reversed(SEVERITY))
    assert canonical_level("warn") == canonical_level("4") == "WARNING"
    assert canonical_level("crit") == "CRITICAL"
    for bad in ("loud", 8, -1, True, 3.0, None, "10"):
        with pytest.raises(InvalidEntryError, match="unknown level"):
            canonical_level(bad)
    assert python_level(logging.WARNING, "WARNING") == "WARNING"
    assert python_level(5, "TRACE") == "DEBUG"
    assert python_level(25, "Level 25") == "INFO"
    assert python_level(60, "FATALER") == "CRITICAL"


def test_the_api_checks_the_level_and_stores_info_when_none_is_given(pair: Pair) -> None:
    a = pair.twin("a")
    assert a.write("plain").fields == {"level": "INFO"}
    assert a.write("sev", level=3).fields == {"level": "ERROR"}
    assert a.write("alias", level="warn", n=1).fields == {"level": "WARNING", "n": 1}
    with pytest.raises(InvalidEntryError, match="unknown level 'LOUD'"):
        a.write("bad", level="LOUD")
    with pytest.raises(InvalidEntryError, match="item 1: unknown level 9"):
        a.write_many(["ok", ("bad", {"level": 9})])
    levels = [e.get("level") for e in _entries(pair.log_dir("b"))]
    assert levels == ["INFO", "ERROR", "WARNING"]


def test_the_handler_maps_python_levels_onto_the_set() -> None:
    record = logging.LogRecord("svc", 5, __file__, 1, "m", None, None)
    record.levelname = "TRACE"
    assert record_fields(record)["level"] == "DEBUG"


# -- idempotency keys -------------------------------------------------------------------
def test_a_key_logged_already_returns_that_entry(pair: Pair) -> None:
    a = pair.twin("a")
    first = a.write("vip moved", key="k1", level="ERROR", vip="10.0.0.10")
    assert first.fields == {"key": "k1", "level": "ERROR", "vip": "10.0.0.10"}
    again = a.write("vip moved", key="k1", level="ERROR", vip="10.0.0.10")
    assert again == first and again.fields == first.fields
    other = a.write("vip moved", key="k2")
    assert other.seq == first.seq + 1
    # A batch: a known key, a new one twice (logged once, both answered with it).
    batch = a.write_many([("x", {}, "k1"), ("y", {}, "k3"), ("y again", {}, "k3"), "z"])
    assert [e.id for e in batch] == ["a:1", "a:3", "a:3", "a:4"]
    assert batch[2].msg == "y"
    # Another process of the node (a new instance reads the window from the log).
    b_side = pair.twin("a")
    assert b_side.write("late retry", key="k3").id == "a:3"
    assert [e["id"] for e in _entries(pair.log_dir("a"))] == ["a:1", "a:2", "a:3", "a:4"]
    assert_converged(pair, ["a:1", "a:2", "a:3", "a:4"])


def test_key_is_reserved_and_checked(pair: Pair) -> None:
    a = pair.twin("a")
    with pytest.raises(ReservedFieldError):
        a.write_many([("m", {"key": "k"})])
    with pytest.raises(InvalidTypeError):
        a.write("m", key=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidEntryError):
        a.write("m", key="")
    with pytest.raises(InvalidEntryError):
        a.write("m", key="k" * 257)


def test_the_window_is_the_last_dedupe_window_entries_of_this_node(pair: Pair) -> None:
    a = pair.twin("a", dedupe_window=5)
    assert a.write("old", key="old").id == "a:1"
    a.write_many([f"m{i}" for i in range(4)])  # a:2..a:5: a:1 is still among the last 5
    assert a.write("old", key="old").id == "a:1"
    a.write("m5")  # a:6: now a:1 is out of the window
    assert a.write("old", key="old").id == "a:7"
    # Entries of the peer's origin do not push ours out of the window.
    pair.twin("b").write_many([f"b{i}" for i in range(20)])
    assert pair.twin("a", dedupe_window=5).write("old", key="old").id == "a:7"
    with pytest.raises(ValueError, match="dedupe_window"):
        pair.config("a", dedupe_window=-1)


def test_a_group_commit_follower_with_a_known_key_gets_the_entry(pair: Pair) -> None:
    """The leader checks its followers' keys where it assigns their seqs."""
    leader, follower = pair.twin("a"), pair.twin("a")
    first = leader.write("vip moved", key="k", level="ERROR")
    ids = write_through_a_leader(pair, leader, follower, "vip moved", lambda: None, key="k")
    assert ids == [first.id]
    ids = write_through_a_leader(pair, leader, follower, "fresh", lambda: None, key="new")
    assert ids == ["a:2"]
    assert leader.write("again", key="new").id == "a:2"
    assert [e["id"] for e in _entries(pair.log_dir("a"))] == ["a:1", "a:2"]
    assert follower.group_stats["followed"] == 2


KEYED_WRITER = """
import json, sys
from twinlog import Config, TwinLog
cfg = Config.from_mapping(json.loads(sys.argv[1]))
with TwinLog(cfg) as log:
    for i in range(int(sys.argv[2])):
        print(log.write(f"event {i}", key=f"k{i}").id, flush=True)
"""


def test_the_same_keys_from_processes_at_once_and_after_a_restart_log_once(pair: Pair) -> None:
    config = json.dumps(pair.config_dict("a"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", KEYED_WRITER, config, "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    # Every process got the same entry for each key: the one that was logged.
    assert all(ids == outputs[0] for ids in outputs)
    entries = _entries(pair.log_dir("a"))
    assert sorted(str(e["key"]) for e in entries) == sorted(f"k{i}" for i in range(60))
    assert {str(e["id"]) for e in entries} == set(outputs[0])
    # A restarted writer (a new process) finds them all in the log.
    again = subprocess.run(
        [sys.executable, "-c", KEYED_WRITER, config, "60"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.split() == outputs[0]
    assert len(_entries(pair.log_dir("a"))) == 60
    assert_converged(pair, outputs[0])


# -- twinlog write --json [--confirm] -----------------------------------------------------
def _cli(conf: str, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twinlog", "--config", conf, "write", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_write_json_lines_with_levels_keys_and_fields(pair: Pair, conf: dict[str, str]) -> None:
    lines = [
        {"msg": "vip moved", "level": 3, "program": "failover", "pid": 42, "key": "u1"},
        {"msg": "plain"},
        "not json",
        {"msg": "bad level", "level": "LOUD"},
        {"level": "INFO"},
        {"msg": "vip moved", "level": "ERR", "key": "u1"},
        [1, 2],
        {"msg": 5},
        {"msg": "noticed", "level": "notice", "key": "u2"},
    ]
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    proc = _cli(conf["a"], "--json", "--field", "app=demo", "-", stdin=text)
    assert proc.returncode == 2
    assert proc.stdout.split() == ["a:1", "a:2", "a:1", "a:3"]
    errors = proc.stderr.splitlines()
    for number, reason in [(3, "not JSON"), (4, "unknown level"), (5, '"msg"'), (7, "object")]:
        assert any(f"stdin line {number} not logged" in e and reason in e for e in errors), errors
    assert sum("not logged" in e for e in errors) == 5
    entries = _entries(pair.log_dir("b"))
    assert entries[0]["level"] == "ERROR" and entries[0]["program"] == "failover"
    assert entries[0]["pid"] == 42 and entries[0]["key"] == "u1" and entries[0]["app"] == "demo"
    assert entries[1]["level"] == "INFO" and "key" not in entries[1]
    assert entries[2]["level"] == "NOTICE"


def test_write_key_on_the_command_line(pair: Pair, conf: dict[str, str]) -> None:
    first = _cli(conf["a"], "--key", "once", "-l", "3", "hello", stdin="")
    again = _cli(conf["a"], "--key", "once", "hello", stdin="")
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout == "a:1\n"
    assert _entries(pair.log_dir("a"))[0]["level"] == "ERROR"
    usage = _cli(conf["a"], "--key", "k", "-", stdin="x\n")
    assert usage.returncode == 2 and "--key" in usage.stderr
    usage = _cli(conf["a"], "--json", "msg", stdin="")
    assert usage.returncode == 2 and "stdin" in usage.stderr


def test_confirm_answers_ok_only_for_durable_lines(pair: Pair, tmp_path: Path) -> None:
    conf = tmp_path / "small.toml"
    data = {**pair.config_dict("a"), "max_message_bytes": 100}
    conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
    lines = [
        json.dumps({"msg": "one", "key": "c1"}),
        json.dumps({"msg": "x" * 200, "key": "c2"}),  # oversized
        "",
        json.dumps({"msg": "three", "key": "c3"}),
        json.dumps({"msg": "one", "key": "c1"}),  # a retry: answered OK, logged once
    ]
    proc = _cli(str(conf), "--json", "--confirm", "-", stdin="\n".join(lines) + "\n")
    answers = proc.stdout.splitlines()
    assert answers[0] == "OK"  # ready
    assert answers[1] == "OK" and answers[4] == "OK" and answers[5] == "OK"
    assert answers[2].startswith("error: line 2 not logged") and "max_message_bytes" in answers[2]
    assert answers[3].startswith("error: line 3")
    assert len(answers) == 6 and proc.returncode == 2
    assert [e["msg"] for e in _entries(pair.log_dir("b"))] == ["one", "three"]


def test_confirm_never_answers_ok_on_a_full_disk(tmp_path: Path, bind_mounts_work: bool) -> None:
    """Node a's log directory on a small tmpfs that fills up: lines are answered OK while
    they are durable, then with errors (the program goes on reading, as rsyslog sends them
    again); every line answered OK is in both logs."""
    if not bind_mounts_work:
        pytest.skip("mounts need root")
    root = tmp_path / "pair"
    (root / "a" / "log").mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", "size=256k", "twinlog-full", os.fspath(root / "a" / "log"))
    pair = Pair(root)
    try:
        pair.twin("a").close()
        pair.twin("b").close()
        pair.heal()
        conf = write_toml(tmp_path / "a.toml", pair.config_dict("a"))
        lines = [json.dumps({"msg": f"{i:04d} " + "x" * 1000, "key": f"f{i}"}) for i in range(400)]
        # As omprog does: one line, then wait for its answer.
        command = ["--config", os.fspath(conf), "write", "--json", "--confirm", "-"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "twinlog", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        answers = [proc.stdout.readline().strip()]
        for line in lines:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            answers.append(proc.stdout.readline().strip())
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
        assert answers[0] == "OK" and len(answers) == 401
        oks = {i for i, answer in enumerate(answers[1:]) if answer == "OK"}
        errors = [a for a in answers[1:] if a != "OK"]
        assert oks and errors and proc.returncode == 2
        assert all(a.startswith("error: not logged") and "No space" in a for a in errors), errors[0]
        for node in ("a", "b"):
            logged = {int(str(e["msg"])[:4]) for e in _entries(pair.log_dir(node))}
            assert oks <= logged, node
    finally:
        pair.close()
        run("umount", "-l", os.fspath(root / "a" / "log"))


def test_confirm_in_omprog_transactions_commits_at_the_mark(
    pair: Pair, conf: dict[str, str]
) -> None:
    """With useTransactions, lines are answered DEFER_COMMIT and the commit mark OK once the
    transaction's entries are durable (one commit); a bad line still gets its error."""
    lines = [
        "BEGIN TRANSACTION",
        json.dumps({"msg": "t1", "key": "t1"}),
        json.dumps({"msg": "t2", "level": "LOUD"}),
        json.dumps({"msg": "t3", "key": "t3"}),
        "COMMIT TRANSACTION",
        json.dumps({"msg": "after"}),
        "BEGIN TRANSACTION",
        json.dumps({"msg": "t1", "key": "t1"}),  # sent again: logged once
        "COMMIT TRANSACTION",
    ]
    proc = _cli(conf["a"], "--json", "--confirm", "-", stdin="\n".join(lines) + "\n")
    assert proc.stdout.splitlines() == [
        "OK",
        "OK",
        "DEFER_COMMIT",
        proc.stdout.splitlines()[3],
        "DEFER_COMMIT",
        "OK",
        "OK",
        "OK",
        "DEFER_COMMIT",
        "OK",
    ]
    assert proc.stdout.splitlines()[3].startswith("error: line 3 not logged: unknown level")
    assert [e["msg"] for e in _entries(pair.log_dir("b"))] == ["t1", "t3", "after"]
