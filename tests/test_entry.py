from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlog import (
    Config,
    InvalidEntryError,
    InvalidTypeError,
    MessageTooLargeError,
    ReservedFieldError,
    TwinLog,
    TwinlogError,
)
from twinlog.entry import (
    RESERVED_FIELDS,
    block_marks,
    check_message,
    decode_line,
    encode_entry,
    format_ts,
    id_prefix,
    parse_key,
    parse_ts,
)


@pytest.fixture
def solo(tmp_path: Path) -> TwinLog:
    """A node whose peer is never mounted: enough to test input validation."""
    log = TwinLog.init(Config("a", "b", tmp_path / "log", tmp_path / "peer", max_message_bytes=100))
    yield log  # type: ignore[misc]
    log.close()


def contents(tmp_path: Path) -> bytes:
    p = tmp_path / "log" / "twinlog.log"
    return p.read_bytes() if p.exists() else b""


@pytest.mark.parametrize(
    ("msg", "fields", "error"),
    [
        (b"bytes", {}, InvalidTypeError),
        (None, {}, InvalidTypeError),
        (42, {}, InvalidTypeError),
        ("x" * 101, {}, MessageTooLargeError),
        ("é" * 51, {}, MessageTooLargeError),  # 102 bytes of UTF-8
        ("\ud800 lone surrogate", {}, InvalidEntryError),
        ("ok", {"id": 1}, ReservedFieldError),
        ("ok", {"seq": 1}, ReservedFieldError),
        ("ok", {"ts": "x"}, ReservedFieldError),
        ("ok", {"node": "x"}, ReservedFieldError),
        ("ok", {"obj": object()}, InvalidTypeError),
        ("ok", {"n": math.nan}, InvalidEntryError),
        ("ok", {"big": "y" * 200}, MessageTooLargeError),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(
    solo: TwinLog, tmp_path: Path, msg: object, fields: dict[str, object], error: type
) -> None:
    before = contents(tmp_path)
    with pytest.raises(error) as info:
        solo.write(msg, **fields)  # type: ignore[arg-type]
    assert isinstance(info.value, TwinlogError)
    assert contents(tmp_path) == before
    assert not (tmp_path / "log" / "twinlog.cache").exists()
    assert solo.write("fine").seq == 1


def test_message_of_exactly_the_limit_is_accepted(solo: TwinLog) -> None:
    assert solo.write("x" * 100).msg == "x" * 100


@settings(max_examples=200, deadline=None)
@given(
    msg=st.text(),
    fields=st.dictionaries(
        st.text(min_size=1).filter(
            lambda k: k not in ("id", "node", "seq", "ts", "msg", "hlc", "origin")
        ),
        st.one_of(st.integers(), st.text(), st.booleans(), st.none()),
        max_size=3,
    ),
)
def test_any_text_round_trips_on_one_line(msg: str, fields: dict[str, object]) -> None:
    try:
        tail = check_message(msg, fields, 1 << 20)
    except InvalidEntryError:
        assert any(
            0xD800 <= ord(c) <= 0xDFFF
            for c in msg + "".join(map(str, fields)) + "".join(str(v) for v in fields.values())
        )
        return
    line = encode_entry("n1", 7, "2026-01-02T03:04:05.000006Z", msg, tail)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    entry = decode_line(line)
    assert entry is not None
    assert entry.msg == msg and dict(entry.fields) == fields
    assert parse_key(line) == ("n1", 7, "2026-01-02T03:04:05.000006Z")
    assert json.loads(line)["id"] == "n1:7"


@settings(max_examples=300, deadline=None)
@given(
    node=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    seq=st.integers(min_value=1, max_value=2**63),
    msg=st.text(),
    fields=st.dictionaries(
        st.text(min_size=1).filter(lambda k: k not in RESERVED_FIELDS),
        st.one_of(st.integers(), st.floats(allow_nan=False), st.text(), st.none()),
        max_size=3,
    ),
)
def test_encoding_is_byte_for_byte_json_dumps(
    node: str, seq: int, msg: str, fields: dict[str, object]
) -> None:
    """The hand-formatted line is exactly what json.dumps makes of the entry (logs written by
    earlier versions and by this one are the same bytes)."""
    ts = "2026-01-02T03:04:05.000006Z"
    try:
        tail = check_message(msg, fields, 1 << 30)
    except InvalidEntryError:
        return  # lone surrogates: rejected before encoding (tested above)
    expected = json.dumps(
        {"id": f"{node}:{seq}", "node": node, "seq": seq, "ts": ts, "msg": msg, **fields},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    assert encode_entry(node, seq, ts, msg, tail) == expected + b"\n"


def test_control_characters_round_trip_through_the_log(solo: TwinLog) -> None:
    msg = "line1\nline2\r\x00\x1b[31m\ttab\u2028end"
    solo.write(msg)
    (entry,) = list(solo.read())
    assert entry.msg == msg


def test_parse_key_rejects_non_entries() -> None:
    assert parse_key(b"not json\n") is None
    assert parse_key(b'{"id":"a:x"}\n') is None
    assert parse_key(b"[1,2]\n") is None
    assert decode_line(b'{"id":"a:2","node":"a","seq":1,"ts":"t","msg":"m"}') is None


def _marks_line_by_line(block: bytes) -> tuple[dict[str, int], str]:
    hwm: dict[str, int] = {}
    max_ts = ""
    for line in block.splitlines(keepends=True):
        key = parse_key(line)
        if key is not None:
            if key[1] > hwm.get(key[0], 0):
                hwm[key[0]] = key[1]
            max_ts = max(max_ts, key[2])
    return hwm, max_ts


_ENTRY_LINES = st.builds(
    lambda node, seq, micros, msg: encode_entry(node, seq, format_ts(micros), msg, b""),
    st.sampled_from(["a", "b", "node-1", "x.y"]),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=4_102_444_800_000_000),
    st.text(max_size=20).filter(lambda m: not any(0xD800 <= ord(c) <= 0xDFFF for c in m)),
)
# Lines the fast scan must not misread: other key orders, odd ids and stamps, torn heads,
# non-entries. Each is what parse_key makes of it, line by line.
_ODD_LINES = st.sampled_from(
    [
        b'{"node":"a","id":"a:9","seq":9,"ts":"2026-01-01T00:00:00.000009Z","msg":"m"}\n',
        b'{"id":"a:b:12","node":"a:b","seq":12,"ts":"2026-01-01T00:00:00.000012Z","msg":""}\n',
        b'{"id":"a:07","node":"a","seq":7,"ts":"2026-01-01T00:00:00.000007Z","msg":""}\n',
        b'{"id":"a:5","node":"a","seq":5,"ts":"2026-01-01T00:00:00.000005X","msg":""}\n',
        b'{"id":"\xc3\xa9:5","node":"\xc3\xa9","seq":5,"ts":"2026-01-01T00:00:00.000005Z"}\n',
        b'{"id":"a:6","node":"a","seq":6,"ts":"2026-01-01T00:00:00.000006X","msg":""\n',
        b'{"id":"a:8","node":"a","seq":8,"ts":"2026-01-01T00:00:00.0000080Z","msg":""}\n',
        b'{"id":"a:99","node":"a","seq":99,"ts":"2026-01-01T00:00:00.000099Z"\n',
        b'{"id":"a:1","node":"a","seq":1,"ts":"2026-01-01T00:00:00.000001Z","msg":"m"} x\n',
        b'{"x":{"id":"a:77","node":"a","seq":77,"ts":"2026-01-01T00:00:00.000077Z"}}\n',
        b"not json\n",
        b"\n",
        b"[1,2]\n",
        b'{"id":"a:x"}\n',
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_ENTRY_LINES, _ENTRY_LINES, _ODD_LINES), max_size=30))
def test_block_marks_are_what_parse_key_finds_line_by_line(lines: list[bytes]) -> None:
    block = b"".join(lines)
    assert block_marks(block) == _marks_line_by_line(block)


def test_block_marks_of_well_formed_lines_take_the_fast_scan() -> None:
    """Every line with encode_entry's head: the highest seq per origin, the greatest stamp
    (not the last: a drain appends the peer's older entries after ours)."""
    block = b"".join(
        [
            encode_entry("a", 1, "2026-01-01T00:00:00.000003Z", "m", b""),
            encode_entry("b", 8, "2026-01-01T00:00:00.000009Z", "m", b'"k":1'),
            encode_entry("a", 2, "2026-01-01T00:00:00.000004Z", "m\nx", b""),
        ]
    )
    assert block_marks(block) == ({"a": 2, "b": 8}, "2026-01-01T00:00:00.000009Z")
    assert block_marks(b"") == ({}, "")


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))
def test_timestamps_round_trip_and_sort(micros: int) -> None:
    ts = format_ts(micros)
    assert parse_ts(ts) == micros and len(ts) == 27
    assert format_ts(micros) < format_ts(micros + 1)


def test_entries_are_hashable_and_compare_by_value() -> None:
    from twinlog import Entry

    a = Entry("n:1", "n", 1, "2026-01-01T00:00:00.000000Z", "m", {"k": [1]})
    b = Entry("n:1", "n", 1, "2026-01-01T00:00:00.000000Z", "m", {"k": [1]})
    assert a == b and len({a, b}) == 1
    assert a != Entry("n:1", "n", 1, "2026-01-01T00:00:00.000000Z", "other", {})


def test_id_prefix_is_how_every_line_of_the_node_starts() -> None:
    line = encode_entry("node-1", 42, "2026-11-28T14:00:00.000000Z", "m", b"")
    assert line.startswith(id_prefix("node-1"))
    assert not line.startswith(id_prefix("node-"))
