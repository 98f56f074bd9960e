"""``twinlog status`` as a monitoring check on a real pair: the age of what waits, the last
complete sync, thresholds, UNKNOWN, the same performance data in every state, and the
Prometheus output (checked by promtool) written atomically for the textfile collector."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pairlib import Pair, system_tool, write_toml
from test_cli import run
from twinlog import TwinLog
from twinlog._delivery import SYNCED_FILE
from twinlog._monitor import Limits, parse_limits
from twinlog.clock import HybridClock
from twinlog.exceptions import InvalidQueryError

HOUR = 3600


def write_aged(pair: Pair, node: str, msg: str, age: float) -> None:
    """An entry written on ``node`` whose clock read ``age`` seconds ago (the real write path,
    with an earlier wall clock)."""
    then = int((time.time() - age) * 1_000_000)
    with TwinLog(pair.config(node), clock=HybridClock(lambda: then)) as log:
        log.write(msg)


def perf_labels(first_line: str) -> list[str]:
    return [item.split("=")[0] for item in first_line.split(" | ", 1)[1].split()]


def test_perfdata_numbers_are_plain() -> None:
    from twinlog._monitor import perfdata

    info = {
        "cache_entries": {"local": 1_234_567, "peer": None},
        "pending_to_peer": None,
        "pending_from_peer": None,
        "peer_reachable": False,
        "oldest_undelivered_age_seconds": {"to_peer": 90061.5, "from_peer": None},
        "last_sync_age_seconds": None,
        "in_sync": False,
    }
    perf = perfdata(info, Limits(lag=900, cached=100_000), Limits(lag=86400 * 3))
    assert perf.split() == [
        "cache_local=1234567",
        "cache_peer=U",
        "cached=1234567;100000",
        "pending_to_peer=U",
        "pending_from_peer=U",
        "peer_reachable=0",
        "oldest_to_peer=90061.500s",
        "oldest_from_peer=U",
        "last_sync_age=U",
        "lag=90061.500s;900;259200",
    ]


def test_limits_syntax() -> None:
    assert parse_limits("15m") == Limits(lag=900)
    assert parse_limits("1000") == Limits(cached=1000)
    assert parse_limits("4h, 10000") == Limits(lag=4 * HOUR, cached=10000)
    for bad in ("15", "15x", "1h,2h", "10,20", ""):
        if bad == "15":
            continue  # a whole number is an entry count, by design
        with pytest.raises(InvalidQueryError):
            parse_limits(bad)


def test_ages_and_last_sync_in_every_form(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair
) -> None:
    code, out, _ = run(capsys, "status", "--json", config=conf["a"])
    info = json.loads(out)
    assert code == 0
    assert info["oldest_undelivered_ts"] == {"to_peer": None, "from_peer": None}
    assert info["oldest_undelivered_age_seconds"] == {"to_peer": None, "from_peer": None}
    assert info["last_sync_age_seconds"] < 60 and info["last_sync"].endswith("Z")
    synced = info["last_sync"]
    # b cut off: b's entry, 2 h old, waits in b's cache; a entry of a's 30 min old in a's.
    pair.partition()
    write_aged(pair, "b", "from b", 2 * HOUR)
    write_aged(pair, "a", "from a", 0.5 * HOUR)
    code, out, _ = run(capsys, "status", "--json", config=conf["a"])
    info = json.loads(out)
    assert code == 1
    age = info["oldest_undelivered_age_seconds"]
    assert 0.5 * HOUR <= age["to_peer"] < 0.5 * HOUR + 60
    assert age["from_peer"] is None  # the peer is away: unknown
    assert info["last_sync"] == synced
    assert info["check"]["lag_seconds"] == pytest.approx(age["to_peer"], abs=60)
    pair.heal()
    code, out, _ = run(capsys, "status", "--json", config=conf["a"])
    info = json.loads(out)
    age = info["oldest_undelivered_age_seconds"]
    assert 2 * HOUR <= age["from_peer"] < 2 * HOUR + 60
    assert 0.5 * HOUR <= age["to_peer"] < 0.5 * HOUR + 60
    assert info["last_sync"] == synced  # not in sync yet
    code, out, _ = run(capsys, "status", config=conf["a"])
    assert "oldest undelivered to b: " in out and "(30m" in out
    assert "oldest undelivered from b: " in out and "(2h0m" in out
    assert f"last complete sync: {synced} (" in out
    code, out, _ = run(capsys, "status", "--prometheus", config=conf["a"])
    ages = {
        line.split("direction=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in out.splitlines()
        if line.startswith("twinlog_oldest_undelivered_age_seconds{")
    }
    assert 2 * HOUR <= ages["from_peer"] < 2 * HOUR + 60
    assert 0.5 * HOUR <= ages["to_peer"] < 0.5 * HOUR + 60
    # A reconcile delivers both ways: a complete sync, recorded.
    assert run(capsys, "reconcile", config=conf["a"])[0] == 0
    code, out, _ = run(capsys, "status", "--json", config=conf["b"])
    info = json.loads(out)
    assert code == 0 and info["oldest_undelivered_ts"] == {"to_peer": None, "from_peer": None}
    assert info["last_sync"] > synced


@pytest.mark.parametrize(
    ("argv", "code", "word", "why"),
    [
        ([], 1, "WARNING", ""),
        (["--warning", "15m"], 1, "WARNING", "lag 2h over --warning 15m"),
        (["--warning", "15m", "--critical", "1h"], 2, "CRITICAL", "lag 2h over --critical 1h"),
        (["--warning", "15m", "--critical", "4h"], 1, "WARNING", "lag 2h over --warning 15m"),
        (["--critical", "3h,1"], 2, "CRITICAL", "2 cached entries over --critical 1"),
        (["--warning", "5"], 1, "WARNING", ""),
    ],
)
def test_thresholds(  # noqa: PLR0917 - the parameters of one case
    capsys: pytest.CaptureFixture[str],
    conf: dict[str, str],
    pair: Pair,
    argv: list[str],
    code: int,
    word: str,
    why: str,
) -> None:
    pair.cut("a")
    write_aged(pair, "a", "old", 2 * HOUR)
    write_aged(pair, "a", "newer", 60)
    got, out, _ = run(capsys, "status", *argv, config=conf["a"])
    first = out.splitlines()[0]
    assert got == code, first
    assert first.startswith(f"TWINLOG {word} - peer b not reachable from a: "), first
    assert (why in first) if why else "over --" not in first
    if "--warning" in argv or "--critical" in argv:
        lag = next(p for p in first.split(" | ")[1].split() if p.startswith("lag="))
        cached = next(p for p in first.split(" | ")[1].split() if p.startswith("cached="))
        # The limits ride along with the values they check.
        assert lag.count(";") + cached.count(";") >= 1
    else:
        assert ";" not in first.split(" | ")[1]


def test_a_peer_down_for_days_turns_critical(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair
) -> None:
    """Nobody writes: nothing waits, yet the last complete sync grows old."""
    assert run(capsys, "reconcile", config=conf["a"])[0] == 0
    (pair.log_dir("a") / SYNCED_FILE).write_text(f"{time.time() - 3 * 86400:.6f}\n")
    pair.cut("a")
    code, out, _ = run(capsys, "status", "--warning", "1h", "--critical", "2d", config=conf["a"])
    assert code == 2
    assert out.startswith("TWINLOG CRITICAL - peer b not reachable from a: ")
    assert "lag 3d over --critical 2d" in out.splitlines()[0]
    assert "last complete sync: " in out and "(3d0h ago)" in out


def test_unknown(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair, tmp_path: Path
) -> None:
    ok_labels = perf_labels(run(capsys, "status", config=conf["a"])[1].splitlines()[0])
    cases: list[tuple[list[str], str]] = [
        (["status", "--warning", "15x"], "--warning"),
        (["status", "--frobnicate"], "unrecognized arguments"),
        (["status", "--json", "--prometheus"], "not allowed with"),
        (["--config", os.fspath(tmp_path / "none.toml"), "status"], "config file"),
        (["status", "--textfile", os.fspath(tmp_path / "x.prom")], "--textfile needs"),
    ]
    # A log_dir that cannot be read: here a regular file where the directory should be.
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory\n")
    data = pair.config_dict("a") | {"log_dir": os.fspath(blocked)}
    cases.append((["--config", os.fspath(write_toml(tmp_path / "c.toml", data)), "status"], ""))
    for given, words in cases:
        argv = given if given[0] == "--config" else ["--config", conf["a"], *given]
        code, out, err = run(capsys, *argv)
        assert code == 3, (argv, out, err)
        first = out.splitlines()[0]
        assert first.startswith("TWINLOG UNKNOWN - ") and words in first, first
        assert out.count("\n") == 1 and err == ""
        assert perf_labels(first) == ok_labels  # the same perfdata, all unknown
        assert {v.split("=")[1].split(";")[0] for v in first.split(" | ")[1].split()} == {"U"}
    # JSON and Prometheus readers get nothing on stdout, the reason on stderr; still 3.
    for form in ("--json", "--prometheus"):
        code, out, err = run(capsys, "--config", os.fspath(tmp_path / "none.toml"), "status", form)
        assert (code, out) == (3, "") and err.startswith("twinlog: config file")
    # Other commands keep 2 for the same errors.
    code, _, err = run(capsys, "--config", os.fspath(tmp_path / "none.toml"), "tail")
    assert code == 2 and err.startswith("twinlog: config file")
    assert run(capsys, "tail", "--frobnicate", config=conf["a"])[0] == 2


def test_perfdata_is_the_same_in_every_state(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair
) -> None:
    seen = []
    seen.append(run(capsys, "status", config=conf["a"]))  # OK
    pair.cut("a")
    write_aged(pair, "a", "old", 2 * HOUR)
    seen.append(run(capsys, "status", config=conf["a"]))  # WARNING
    seen.append(run(capsys, "status", "--critical", "1h", config=conf["a"]))  # CRITICAL
    pair.heal()
    pair.cut("b")
    write_aged(pair, "b", "waits on b", 60)
    pair.heal()
    seen.append(run(capsys, "status", config=conf["a"]))  # WARNING, entries waiting
    assert [code for code, _, _ in seen] == [0, 1, 2, 1]
    labels = [perf_labels(out.splitlines()[0]) for _, out, _ in seen]
    assert all(x == labels[0] for x in labels), labels
    assert labels[0] == [
        "cache_local",
        "cache_peer",
        "cached",
        "pending_to_peer",
        "pending_from_peer",
        "peer_reachable",
        "oldest_to_peer",
        "oldest_from_peer",
        "last_sync_age",
        "lag",
    ]


def test_textfile_is_replaced_atomically(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair, tmp_path: Path
) -> None:
    collector = tmp_path / "textfile"
    collector.mkdir()
    target = collector / "twinlog.prom"
    target.write_text("# an older scrape\n")
    before = target.stat().st_ino
    code, out, err = run(
        capsys, "status", "--prometheus", "--textfile", os.fspath(target), config=conf["a"]
    )
    assert (code, out, err) == (0, "", "")
    text = target.read_text()
    assert text.startswith("# HELP twinlog_build_info ")
    # Renamed into place (a new inode), never rewritten in place; nothing left behind.
    assert target.stat().st_ino != before
    assert sorted(p.name for p in collector.iterdir()) == ["twinlog.prom"]
    assert target.stat().st_mode & 0o777 == 0o644
    # A directory it cannot write to: UNKNOWN, and the old file stays.
    code, _, err = run(
        capsys,
        "status",
        "--prometheus",
        "--textfile",
        os.fspath(tmp_path / "missing" / "twinlog.prom"),
        config=conf["a"],
    )
    assert code == 3 and "missing" in err


@pytest.mark.parametrize("state", ["in_sync", "peer_cut", "waiting"])
def test_promtool_accepts_real_output(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair, state: str
) -> None:
    promtool = system_tool("promtool", "prometheus")
    pair.twin("a").write("x")
    if state == "peer_cut":
        pair.cut("a")
        pair.twin("a").write("cached")
    elif state == "waiting":
        pair.cut("b")
        pair.twin("b").write("waits")
        pair.heal()
    code, out, _ = run(capsys, "status", "--prometheus", config=conf["a"])
    assert code in (0, 1) and out
    check = subprocess.run(
        [promtool, "check", "metrics"], input=out, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == "", check.stdout + check.stderr  # no lint warnings
