"""contrib/lnav/twinlog.json: lnav, headless, reads a real pair's log (the active file and a
rotated segment) into its ``twinlog_log`` SQL table."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from pairlib import Pair, system_tool

FORMAT = Path(__file__).parent.parent / "contrib" / "lnav" / "twinlog.json"


def _query(lnav: str, home: Path, sql: str, *files: Path) -> list[dict[str, str]]:
    """Rows of ``sql`` as lnav answers it headless (-n), through its JSON output."""
    env = dict(os.environ, HOME=os.fspath(home), TERM="dumb")
    proc = subprocess.run(
        [lnav, "-n", "-c", sql, "-c", ":write-json-to -", *map(os.fspath, files)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows: list[dict[str, str]] = json.loads(proc.stdout)
    return rows


def test_lnav_reads_a_pair_log(pair: Pair, tmp_path: Path) -> None:
    lnav = system_tool("lnav", "lnav")
    home = tmp_path / "home"
    home.mkdir()
    # Installed as docs/operations.md says (into ~/.lnav/formats/installed/).
    env = dict(os.environ, HOME=os.fspath(home), TERM="dumb")
    subprocess.run([lnav, "-i", os.fspath(FORMAT)], env=env, check=True, capture_output=True)
    a, b = pair.twin("a"), pair.twin("b")
    a.write("vip 10.0.0.10 up", level="INFO", vip="10.0.0.10", logger="failover")
    b.write("disk slow", level="WARNING", disk="sda")
    a.rotate()  # the entries so far now live in twinlog.log.1
    a.write("no level at all")
    b.write("fenced", level="EMERGENCY")
    a.write("boom", level="ERROR", exc="Traceback (most recent call last):\nValueError: y")
    log_dir = pair.log_dir("a")
    files = [log_dir / "twinlog.log.1", log_dir / "twinlog.log"]
    entries = {e.id: e for e in a.read()}
    rows = _query(
        lnav,
        home,
        ";SELECT log_time, log_level, node, id, seq, logger, exc, log_body "
        "FROM twinlog_log ORDER BY log_time",
        *files,
    )
    assert [r["id"] for r in rows] == ["a:1", "b:1", "a:2", "b:2", "a:3"]
    for row in rows:
        entry = entries[row["id"]]
        assert row["node"] == entry.node and row["seq"] == entry.seq
        assert row["log_body"] == entry.msg
        # The timestamp keeps its fraction (lnav stores milliseconds).
        assert row["log_time"] == entry.ts[:23].replace("T", " ")
    assert [r["log_level"] for r in rows] == ["info", "warning", "info", "fatal", "error"]
    assert rows[0]["logger"] == "failover"
    assert rows[4]["exc"] == "Traceback (most recent call last):\nValueError: y"
    assert rows[2]["exc"] is None
    # The recipes of docs/operations.md: levels by severity, and any field through the raw line.
    worse = _query(lnav, home, ";SELECT id FROM twinlog_log WHERE log_level >= 'warning'", *files)
    assert [r["id"] for r in worse] == ["b:1", "b:2", "a:3"]
    vip = _query(
        lnav,
        home,
        ";SELECT id FROM twinlog_log WHERE jget(log_raw_text, '/vip') = '10.0.0.10'",
        *files,
    )
    assert [r["id"] for r in vip] == ["a:1"]
