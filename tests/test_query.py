"""Filters on reading: ``TwinLog.read(since=..., ...)`` and ``twinlog tail --since ...``, on a
real bind-mounted pair, and the parsing of times, durations and levels they share."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pairlib import Pair, write_toml
from test_cli import _read_lines, run
from twinlog import Entry, InvalidQueryError
from twinlog._query import Query, level_rank, parse_duration, parse_level, parse_time
from twinlog.entry import format_ts, parse_ts

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("2h", 7200), ("1d", 86400), ("90s", 90), ("1w", 604800), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_time(text, NOW) == format_ts(round((NOW - seconds) * 1_000_000))


@pytest.mark.parametrize("text", ["", "15", "m", "15 minutes", "1h-5m", "-2h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidQueryError, match="duration"):
        parse_duration(text)


def test_rfc3339_and_datetimes() -> None:
    assert parse_time("2026-12-04T02:00:00Z") == "2026-12-04T02:00:00.000000Z"
    assert parse_time("2026-12-04T03:00:00.5+01:00") == "2026-12-04T02:00:00.500000Z"
    moment = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)
    assert parse_time(moment) == "2026-12-04T02:00:00.000000Z"
    with pytest.raises(InvalidQueryError, match="time zone"):
        parse_time("2026-12-04T02:00:00")
    with pytest.raises(InvalidQueryError, match="RFC 3339"):
        parse_time("yesterday")


def test_levels() -> None:
    assert parse_level("warn") == "WARNING"
    assert parse_level("Emergency") == "EMERGENCY"
    with pytest.raises(InvalidQueryError, match="NOTICE"):
        parse_level("loud")
    order = ["DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
    assert [level_rank(name) for name in order] == list(range(8))
    # No level, or one twinlog does not know: as INFO.
    assert level_rank(None) == level_rank("custom") == level_rank(7) == level_rank("INFO")


def _entry(**fields: Any) -> Entry:
    return Entry("a:1", "a", 1, "2026-12-04T02:00:00.000000Z", "vip 10.0.0.10 moved", fields)


@pytest.mark.parametrize(
    ("fields", "wanted", "match"),
    [
        ({"port": 80}, {"port": "80"}, True),  # text as the CLI gives it finds a number
        ({"port": 80}, {"port": 80}, True),
        ({"port": "80"}, {"port": 80}, False),  # a number from Python does not find text
        ({"ok": True}, {"ok": "true"}, True),
        ({"ok": True}, {"ok": 1}, False),
        ({"vip": "10.0.0.10"}, {"vip": "10.0.0.1"}, False),
        ({}, {"vip": "10.0.0.10"}, False),
        ({"vip": "x", "r": "y"}, {"vip": "x", "r": "y"}, True),
    ],
)
def test_field_matching(fields: dict[str, Any], wanted: dict[str, Any], match: bool) -> None:
    assert Query.build(fields=wanted).matches(_entry(**fields)) is match


def test_bad_regex_names_the_argument() -> None:
    with pytest.raises(InvalidQueryError, match="grep"):
        Query.build(grep="(")


# -- on a real pair -------------------------------------------------------------------------
def _history(pair: Pair) -> list[Entry]:
    """Six entries from both nodes, one of them delivered late (cached on b while cut off)."""
    a, b = pair.twin("a"), pair.twin("b")
    written = [
        a.write("vip 10.0.0.10 up", level="INFO", vip="10.0.0.10"),
        b.write("disk slow", level="WARNING", disk="sda", port=80),
        a.write("no level at all"),
    ]
    pair.partition()
    written.append(b.write("fencing b", level="CRITICAL", vip="10.0.0.10"))
    written.append(a.write("vip 10.0.0.10 moved", level="ERROR", vip="10.0.0.10"))
    pair.heal()
    b.reconcile()
    written.append(a.write("debugging", level="DEBUG"))
    return written


def _ids(entries: Any) -> list[str]:
    return [e.id for e in entries]


def test_read_filters_on_a_pair(pair: Pair) -> None:
    written = _history(pair)
    a = pair.twin("a")
    everything = list(a.read())
    assert sorted(_ids(everything)) == sorted(_ids(written))
    ts = [e.ts for e in everything]
    assert _ids(a.read(since=ts[2], until=ts[4])) == _ids(everything[2:4])
    assert _ids(a.read(since=ts[3])) == _ids(everything[3:])
    assert _ids(a.read(until=ts[1])) == _ids(everything[:1])
    # A datetime works as well as text; until is exclusive, since inclusive.
    moment = datetime.fromtimestamp(parse_ts(ts[2]) / 1e6, tz=UTC)
    assert _ids(a.read(since=moment, until=moment + timedelta(microseconds=1))) == [
        everything[2].id
    ]
    assert _ids(a.read(level="warning")) == ["b:1", "b:2", "a:3"]
    assert _ids(a.read(level="INFO")) == ["a:1", "b:1", "a:2", "b:2", "a:3"]  # a:2 has none
    assert _ids(a.read(level="ALERT")) == []
    assert _ids(a.read(node="b")) == ["b:1", "b:2"]
    assert _ids(a.read(node="nobody")) == []
    assert _ids(a.read(grep=r"vip 10\.0\.0\.10")) == ["a:1", "a:3"]
    assert _ids(a.read(grep=re.compile("^fenc"))) == ["b:2"]
    assert _ids(a.read(fields={"vip": "10.0.0.10"})) == ["a:1", "b:2", "a:3"]
    assert _ids(a.read(fields={"port": 80, "disk": "sda"})) == ["b:1"]
    # Combined: all must hold. The late delivery (b:2, written while cut off) is found by time.
    assert _ids(a.read(level="error", fields={"vip": "10.0.0.10"}, node="b")) == ["b:2"]
    late = next(e for e in everything if e.id == "b:2")
    just_after = format_ts(parse_ts(late.ts) + 1)
    assert _ids(a.read(since=late.ts, until=just_after, level="CRITICAL")) == ["b:2"]
    # The same on the other node: both hold the same log.
    b = pair.twin("b")
    assert _ids(b.read(level="warning", since=ts[1])) == _ids(a.read(level="warning", since=ts[1]))


def test_read_with_a_relative_window(pair: Pair) -> None:
    a = pair.twin("a")
    a.write("now")
    assert _ids(a.read(since="1h")) == ["a:1"]
    assert _ids(a.read(until="1h")) == []


def test_read_rejects_a_bad_filter_at_once(pair: Pair) -> None:
    a = pair.twin("a")
    for bad in ({"since": "tomorrow"}, {"level": "LOUD"}, {"grep": "["}):
        with pytest.raises(InvalidQueryError):
            a.read(**bad)  # raised by the call, not at the first entry


def test_tail_filters(capsys: pytest.CaptureFixture[str], pair: Pair, tmp_path: Path) -> None:
    _history(pair)
    conf = os.fspath(write_toml(tmp_path / "a.toml", pair.config_dict("a")))
    everything = list(pair.twin("a").read())

    def tail(*argv: str) -> list[str]:
        code, out, err = run(capsys, "tail", "--json", "-n", "all", *argv, config=conf)
        assert (code, err) == (0, "")
        return [json.loads(line)["id"] for line in out.splitlines()]

    assert tail("--level", "warn") == ["b:1", "b:2", "a:3"]
    assert tail("--node", "b") == ["b:1", "b:2"]
    assert tail("--grep", "vip") == ["a:1", "a:3"]
    assert tail("--field", "vip=10.0.0.10", "--field", "level=ERROR") == ["a:3"]
    assert tail("--field", "port=80") == ["b:1"]
    assert tail("--since", everything[4].ts) == _ids(everything[4:])
    assert tail("--since", everything[1].ts, "--until", everything[3].ts) == _ids(everything[1:3])
    assert tail("--since", "1d", "--level", "CRITICAL") == ["b:2"]
    assert tail("--until", "1d") == []
    # -n counts matching entries; the human form is filtered the same way.
    code, out, _ = run(capsys, "tail", "-n", "1", "--level", "warning", config=conf)
    assert code == 0 and out.count("\n") == 1 and "vip 10.0.0.10 moved" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--since", "yesterday"], ["--since", "RFC 3339"]),
        (["--until", "2026-12-04T02:00:00"], ["--until", "time zone"]),
        (["--level", "loud"], ["--level", "EMERGENCY"]),
        (["--grep", "("], ["--grep", "regular expression"]),
        (["--field", "novalue"], ["--field", "KEY=VALUE"]),
    ],
)
def test_tail_bad_filters(
    capsys: pytest.CaptureFixture[str],
    pair: Pair,
    tmp_path: Path,
    argv: list[str],
    words: list[str],
) -> None:
    conf = os.fspath(write_toml(tmp_path / "a.toml", pair.config_dict("a")))
    code, out, err = run(capsys, "tail", *argv, config=conf)
    assert code == 2 and out == ""
    assert err.startswith("twinlog: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def test_tail_follow_with_filters(pair: Pair, tmp_path: Path) -> None:
    conf = os.fspath(write_toml(tmp_path / "a.toml", pair.config_dict("a")))
    a, b = pair.twin("a"), pair.twin("b")
    a.write("old error", level="ERROR")
    a.write("old info", level="INFO")
    argv = ["tail", "-f", "--json", "--level", "error", "--node", "b", "--grep", "fail"]
    with subprocess.Popen(
        [sys.executable, "-m", "twinlog", "--config", conf, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            b.write("disk failing", level="WARNING")
            a.write("a failed", level="ERROR")
            b.write("b failed", level="ERROR")
            pair.partition()
            b.write("fail cached on b", level="CRITICAL")  # arrives late, still shown
            b.write("cached, not matching", level="CRITICAL")
            pair.heal()
            b.reconcile()
            got = [json.loads(x)["msg"] for x in _read_lines(proc.stdout, 2, 10)]
            assert got == ["b failed", "fail cached on b"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert proc.stdout is not None and proc.stdout.read() in (b"", None)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
