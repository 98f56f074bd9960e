"""Reading a log back by origin: the seqs verify compares, from real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinlog._fileops import LOG_FILE, MARKER_FILE, DirOps
from twinlog._read import origin_seqs
from twinlog._store import LogStore
from twinlog.entry import encode_entry, parse_key

TS = "2026-01-01T00:00:00.000001Z"


def _store(directory: Path, lines: list[bytes]) -> LogStore:
    directory.mkdir()
    (directory / MARKER_FILE).write_text("a\n")
    (directory / LOG_FILE).write_bytes(b"".join(lines))
    ops = DirOps(str(directory))
    assert ops.open_dir("a", None, create=False) == "ok"
    return LogStore(ops, "a", fsync=False)


def _line_by_line(lines: list[bytes], origin: str) -> list[int]:
    keys = [parse_key(line) for line in lines]
    return [key[1] for key in keys if key is not None and key[0] == origin]


WELL_FORMED = [encode_entry("ab"[i % 2], i // 2 + 1, TS, f"m{i}", b"") for i in range(40)]
ODD = [
    # The same entry written by something else, keys in another order: still a:21.
    b'{"node":"a","seq":21,"id":"a:21","ts":"2026-01-01T00:00:00.000001Z","msg":"x"}\n',
    b"not an entry\n",
    # An id that only looks like a's inside another object: not an entry at all.
    b'{"x":{"id":"a:22","node":"a","seq":22,"ts":"2026-01-01T00:00:00.000001Z"}}\n',
    encode_entry("a", 23, TS, "after the odd lines", b'"k":1'),
]


@pytest.mark.parametrize("lines", [WELL_FORMED, WELL_FORMED + ODD], ids=["fast", "mixed"])
@pytest.mark.parametrize("origin", ["a", "b"])
def test_origin_seqs_are_what_parse_key_finds_line_by_line(
    tmp_path: Path, lines: list[bytes], origin: str
) -> None:
    store = _store(tmp_path / "log", lines)
    seqs = list(origin_seqs(store, [(LOG_FILE, None)], origin))
    assert seqs == _line_by_line(lines, origin)
    if origin == "a" and lines is not WELL_FORMED:
        assert seqs[-3:] == [20, 21, 23]


def test_origin_seqs_stop_at_the_end_offset_and_skip_a_torn_tail(tmp_path: Path) -> None:
    lines = WELL_FORMED[:6]
    store = _store(tmp_path / "log", [*lines, b'{"id":"a:4","node":"a","se'])
    end = sum(map(len, lines[:4]))
    assert list(origin_seqs(store, [(LOG_FILE, end)], "a")) == [1, 2]
    assert list(origin_seqs(store, [(LOG_FILE, None)], "a")) == [1, 2, 3]
