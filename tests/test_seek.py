"""Seek, don't scan: a time window and the last entries read through the segment indexes give
exactly what a full read filtered afterwards gives, on a real pair whose log has several
segments, marks inside them, and late deliveries (entries in arrival, not time, order)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairlib import Pair
from twinlog import Entry, TwinLog
from twinlog._fileops import LOG_FILE
from twinlog._read import Seeker, pinned_snapshot
from twinlog._seek import MARK_EVERY, SegmentIndex
from twinlog._store import SEGMENTS_FILE
from twinlog.entry import format_ts, parse_ts

BIG = "x" * 60_000  # a few dozen of these fill a MiB: segments get marks inside


def _history(pair: Pair) -> None:
    """Three segments and an active log on a; b's entries cached while cut off arrive late."""
    a, b = pair.twin("a"), pair.twin("b")
    for i in range(20):
        a.write(f"a early {i} {BIG}")
        if i % 4 == 0:
            b.write(f"b early {i}")
    a.rotate()
    pair.partition()
    for i in range(25):
        b.write(f"b cut off {i} {BIG}")  # older than a's next ones, delivered after them
    for i in range(5):
        a.write(f"a cut off {i}")
    pair.heal()
    assert a.reconcile().pulled == 25
    a.rotate()
    for i in range(3):
        b.write(f"b later {i}")
        a.write(f"a later {i}")
    a.rotate()
    a.write("a last")
    b.write("b last")


@pytest.fixture
def history(pair: Pair) -> tuple[TwinLog, list[Entry]]:
    _history(pair)
    a = pair.twin("a")
    return a, list(a.read())


def _manifest(pair: Pair) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads((pair.log_dir("a") / SEGMENTS_FILE).read_text())
    return data


def _windows(everything: list[Entry]) -> Iterator[tuple[str | None, str | None]]:
    times = sorted({e.ts for e in everything})
    bounds: list[str | None] = [None, format_ts(parse_ts(times[0]) - 1), *times[::7], times[-1]]
    bounds.append(format_ts(parse_ts(times[-1]) + 1))
    for since in bounds:
        for until in bounds:
            if since is None or until is None or since <= until:
                yield since, until


def _assert_windows_match(log: TwinLog, everything: list[Entry]) -> None:
    for since, until in _windows(everything):
        expected = [
            e.id
            for e in everything
            if (since is None or e.ts >= since) and (until is None or e.ts < until)
        ]
        got = [e.id for e in log.read(since=since, until=until)]
        assert got == expected, (since, until)
        for node in ("a", "b"):
            mine = [i for i in expected if i.startswith(node + ":")]
            assert [e.id for e in log.read(since=since, until=until, node=node)] == mine


@pytest.mark.no_mounts
def test_rotation_writes_the_index(pair: Pair, history: tuple[TwinLog, list[Entry]]) -> None:
    manifest = _manifest(pair)
    assert sorted(manifest) == ["1", "2", "3"]
    first = SegmentIndex.from_json(
        manifest["1"]["index"], (pair.log_dir("a") / "twinlog.log.1").stat().st_size
    )
    assert first is not None and first.size > MARK_EVERY and first.marks
    assert first.origins["a"][0] == 1 and first.origins["a"][2] == 20
    assert first.origins["b"][:1] == (1,) and first.origins["b"][2] == 5
    # The segment with the late deliveries: b's older entries after a's newer ones.
    late = SegmentIndex.from_json(
        manifest["2"]["index"], (pair.log_dir("a") / "twinlog.log.2").stat().st_size
    )
    assert late is not None and late.origins["b"][1] < late.origins["a"][3]


def test_windows_are_exact_despite_arrival_order(history: tuple[TwinLog, list[Entry]]) -> None:
    log, everything = history
    ids = [e.id for e in everything]
    assert ids.index("b:6") < ids.index("a:21")  # merged by time, though b:6 arrived later
    _assert_windows_match(log, everything)


@pytest.mark.no_mounts
@pytest.mark.parametrize("damage", ["missing", "stale", "garbage"])
def test_a_missing_or_stale_index_is_rebuilt(
    pair: Pair, history: tuple[TwinLog, list[Entry]], damage: str
) -> None:
    log, everything = history
    manifest = _manifest(pair)
    for info in manifest.values():
        index = info["index"]
        assert isinstance(index, dict)
        if damage == "missing":
            del info["index"]
        elif damage == "stale":
            index["size"] = int(index["size"]) - 1  # made for another file
        else:
            index["marks"] = "nonsense"
    (pair.log_dir("a") / SEGMENTS_FILE).write_text(json.dumps(manifest))
    _assert_windows_match(log, everything)
    assert [e.id for e in log.read(last=7)] == [e.id for e in everything[-7:]]
    # The next rotation indexes one of them again (the newest), not all at once.
    log.write("one more")
    log.rotate()
    after = _manifest(pair)
    sizes = {n: (pair.log_dir("a") / f"twinlog.log.{n}").stat().st_size for n in after}
    valid = [n for n in sorted(after) if SegmentIndex.from_json(after[n].get("index"), sizes[n])]
    assert valid == ["3", "4"]


def test_last_entries(history: tuple[TwinLog, list[Entry]]) -> None:
    log, everything = history
    for count in (0, 1, 2, 5, 9, 30, len(everything), len(everything) + 5):
        expected = [e.id for e in everything][max(0, len(everything) - count) :] if count else []
        assert [e.id for e in log.read(last=count)] == expected, count
        for node in ("a", "b"):
            mine = [e.id for e in everything if e.node == node]
            want = mine[max(0, len(mine) - count) :] if count else []
            assert [e.id for e in log.read(last=count, node=node)] == want
    # With other filters, the last matching ones.
    warn = [e.id for e in log.read(grep="cut off")]
    assert [e.id for e in log.read(last=3, grep="cut off")] == warn[-3:]


@pytest.mark.no_mounts
def test_a_window_reads_only_the_segments_it_needs(
    pair: Pair, history: tuple[TwinLog, list[Entry]]
) -> None:
    _log, everything = history
    store = pair.twin("a")._sides.local
    pinned, files = pinned_snapshot(store, store.ops.dir_fd)  # type: ignore[attr-defined]
    try:
        seeker = Seeker(store, files, store.read_manifest())
        newest = [e for e in everything if e.msg.startswith(("a later", "b later", "a last"))]
        plan = seeker.window("a", newest[0].ts, None)
        assert [name for name, _, _ in plan] == ["twinlog.log.3", LOG_FILE]
        # b's late deliveries sit in segment 2 with old times: a window on them reads it.
        late = next(e for e in everything if e.msg.startswith("b cut off 3 "))
        plan = seeker.window("b", late.ts, newest[0].ts)
        assert "twinlog.log.2" in [name for name, _, _ in plan]
        assert "twinlog.log.1" not in [name for name, _, _ in plan]
        # In a segment with marks, a window late in it starts past its first mark.
        in_first = next(e for e in everything if e.msg.startswith("a early 19 "))
        plan = seeker.window("a", in_first.ts, None)
        assert plan[0][0] == "twinlog.log.1" and plan[0][1] > 0
    finally:
        pinned.close()


@pytest.mark.no_mounts
def test_read_last_rejects_nonsense(pair: Pair) -> None:
    from twinlog import InvalidQueryError

    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidQueryError):
            pair.twin("a").read(last=bad)  # type: ignore[arg-type]


@pytest.mark.no_mounts
def test_tail_uses_the_same_answers(
    capsys: pytest.CaptureFixture[str],
    pair: Pair,
    history: tuple[TwinLog, list[Entry]],
    tmp_path: Path,
) -> None:
    from pairlib import write_toml
    from test_cli import run

    _log, everything = history
    conf = str(write_toml(tmp_path / "a.toml", pair.config_dict("a")))
    code, out, _ = run(capsys, "tail", "--json", "-n", "4", config=conf)
    assert code == 0 and [json.loads(x)["id"] for x in out.splitlines()] == [
        e.id for e in everything[-4:]
    ]
