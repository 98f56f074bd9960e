"""The recipes of docs/operations.md, run as written there (paths and names substituted) on a
real pair's log: the jq ones on the active log and rotated segments, the structlog ones
through TwinlogHandler."""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairlib import Pair, system_tool
from twinlog import Entry
from twinlog._query import level_rank

DOC = Path(__file__).parent.parent / "docs" / "operations.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    end = re.compile(r"\n##+ ").search(text, start + len(title))
    return text[start : end.start() if end else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


# -- jq -------------------------------------------------------------------------------------
def _recipes() -> tuple[str, dict[str, str]]:
    """The set-up line and each recipe by its comment."""
    [block] = _blocks(_section("## jq recipes"), "sh")
    setup, *rest = block.strip().splitlines()
    recipes = {}
    for comment, command in zip(rest[::2], rest[1::2], strict=True):
        assert comment.startswith("# "), comment
        recipes[comment[2:]] = command
    return setup, recipes


def _history(pair: Pair) -> None:
    a, b = pair.twin("a"), pair.twin("b")
    a.write("vip up", level="INFO", vip="10.0.0.10")
    b.write("disk slow", level="warn")
    a.write("no level")
    a.rotate()
    pair.partition()
    b.write("fenced", level="EMERGENCY", vip="10.0.0.10")  # arrives late in a's log
    a.write("vip moved", level="ERROR", vip="10.0.0.10")
    pair.heal()
    a.reconcile()
    a.rotate()
    a.write("debugging", level="DEBUG")
    b.write("later", level="CRITICAL")


def test_jq_recipes(pair: Pair) -> None:
    system_tool("jq", "jq")
    _history(pair)
    log_dir = pair.log_dir("a")
    in_order = list(pair.twin("a").read())
    by_id = {e.id: e for e in in_order}
    # What the files hold, in arrival order: segments by number, then the active log.
    segments = sorted(log_dir.glob("twinlog.log.*"), key=lambda p: int(p.suffix[1:]))
    assert len(segments) == 2
    arrival = [
        json.loads(line)["id"]
        for path in [*segments, log_dir / "twinlog.log"]
        for line in path.read_text().splitlines()
    ]
    window = (in_order[1].ts, in_order[4].ts)  # the recipe compares text: any prefix works
    setup, recipes = _recipes()
    setup = setup.replace("/var/lib/twinlog/log", os.fspath(log_dir))

    def run(name: str) -> list[str]:
        command = recipes[name].replace('"node1"', '"b"')
        command = command.replace("2026-11-28T02:00:00", window[0])
        command = command.replace("2026-11-28T02:15:00", window[1])
        proc = subprocess.run(
            ["bash", "-c", f"set -euo pipefail\n{setup}\n{command}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return proc.stdout.splitlines()

    def ids(lines: list[str]) -> list[str]:
        return [json.loads(line)["id"] for line in lines]

    def arriving(keep: collections.abc.Callable[[Entry], bool]) -> list[str]:
        return [i for i in arrival if keep(by_id[i])]

    assert set(recipes) == {
        "warnings and worse (no level counts as INFO)",
        "one node's entries",
        "a time window: 02:00 (included) to 02:15 (excluded)",
        "a field's value",
        "all of them in time order (the merged view; holds everything in memory)",
        "how many entries of each level",
    }
    worse = ids(run("warnings and worse (no level counts as INFO)"))
    assert worse == arriving(lambda e: level_rank(e.get("level")) >= level_rank("WARNING"))
    assert worse == ["b:1", "a:3", "b:2", "b:3"]  # b:2, written before a:3, arrived after it
    assert ids(run("one node's entries")) == arriving(lambda e: e.node == "b")
    in_window = ids(run("a time window: 02:00 (included) to 02:15 (excluded)"))
    assert in_window == arriving(lambda e: window[0] <= e.ts < window[1])
    assert in_window
    assert ids(run("a field's value")) == arriving(lambda e: e.get("vip") == "10.0.0.10")
    merged = run("all of them in time order (the merged view; holds everything in memory)")
    # The raw lines, so each with its hash chain (docs/security.md).
    assert [json.loads(line) for line in merged] == [
        e.to_dict() | {"chain": e.chain} for e in in_order
    ]
    counts = {
        level: int(count)
        for count, level in (line.split() for line in run("how many entries of each level"))
    }
    assert counts == dict(collections.Counter(str(e.get("level", "INFO")) for e in in_order))


# -- structlog --------------------------------------------------------------------------------
@pytest.fixture
def structlog_recipe(pair: Pair, tmp_path: Path) -> Iterator[dict[str, str]]:
    structlog = pytest.importorskip("structlog")
    config = tmp_path / "twinlog.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in pair.config_dict("a").items()))
    name = f"cluster-{os.urandom(4).hex()}"
    try:
        yield {"config": os.fspath(config), "logger": name}
    finally:
        structlog.reset_defaults()
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


@pytest.mark.parametrize("title", ["### `render_to_log_kwargs`", "### `ProcessorFormatter`"])
def test_structlog_recipes(
    pair: Pair,
    structlog_recipe: dict[str, str],
    title: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [code] = _blocks(_section(title), "python")
    code = code.replace("/etc/twinlog/twinlog.toml", structlog_recipe["config"])
    code = code.replace('"cluster"', repr(structlog_recipe["logger"]))
    exec(compile(code, f"{DOC}: {title}", "exec"), {})  # the recipe, as written
    import structlog

    log = structlog.get_logger(structlog_recipe["logger"]).bind(vip="10.0.0.10")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failover failed", attempt=3)
    moved, failed = list(pair.twin("a").read())
    name = structlog_recipe["logger"]
    assert moved.msg == "vip moved"
    assert dict(moved.fields) == {
        "level": "WARNING",
        "logger": name,
        "vip": "10.0.0.10",
        "to": "node2",
        "attempt": 2,
    }
    assert failed.msg == "failover failed"
    assert failed["level"] == "ERROR" and failed["attempt"] == 3 and failed["vip"] == "10.0.0.10"
    assert failed["exc"].startswith("Traceback") and failed["exc"].endswith("RuntimeError: boom")
    for entry in (moved, failed):
        assert not any(key.startswith(("_", "extra_")) for key in entry.fields), entry.fields
        assert "{" not in entry.msg  # no JSON string inside msg
    if "ProcessorFormatter" in title:  # the console handler rendered the same event
        assert "vip moved" in capsys.readouterr().err
