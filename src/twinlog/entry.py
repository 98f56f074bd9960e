"""Log entries: the public :class:`Entry`, its one-line JSON encoding, and fast id parsing.

A line is ``{"id":"<node>:<seq>","node":...,"seq":...,"ts":...,"msg":...,<extra fields>}\\n``,
UTF-8, with the identifying keys first so scanners can read an entry's origin, sequence number
and timestamp without decoding the whole line. JSON escapes newlines, NUL and every other control
character, so any ``str`` message stays on one line and round-trips intact.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from twinlog._levels import DEFAULT_LEVEL, canonical_level
from twinlog.config import MAX_MESSAGE_BYTES_CEILING
from twinlog.exceptions import (
    InvalidEntryError,
    InvalidTypeError,
    MessageTooLargeError,
    ReservedFieldError,
)

__all__ = [
    "RESERVED_FIELDS",
    "Entry",
    "block_heads",
    "block_marks",
    "check_entry",
    "decode_line",
    "encode_entry",
    "id_prefix",
    "parse_key",
]

#: Names an extra field may not take: they identify or order the entry (``key`` is the
#: idempotency key, given to ``write(key=...)`` and stored as a field).
RESERVED_FIELDS = frozenset(
    {"id", "node", "seq", "ts", "msg", "hlc", "origin", "replaces", "key", "chain"}
)
#: The longest idempotency key, in UTF-8 bytes (rsyslog's $uuid has 32).
MAX_KEY_BYTES = 256

_PREFIX = b'{"id":"'
_TS_KEY = b'"ts":"'
_TS_LEN = len("2026-01-01T00:00:00.000000Z")
# The head of a line as encode_entry writes it, matched after the newline before it (the block
# gets one in front): a literal start the regex engine jumps between, instead of trying ``^`` at
# every byte; no class admits a newline, so a match is one line's head. Node, seq and ts, which
# are then what parse_key reads from that line.
_HEAD_RE = re.compile(
    rb'\n\{"id":"([!#-~]*):([0-9]+)","node":"[^"\n]*","seq":[0-9]+,'
    rb'"ts":"([!#-~]{%d}Z)"' % (_TS_LEN - 1)
)
# What json.dumps(..., ensure_ascii=False) uses for a str (the C version), without building an
# encoder per call; one shared encoder for extra fields, for the same reason.
_json_str = json.encoder.encode_basestring
_FIELDS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One log entry. Extra fields given to ``write()`` are in :attr:`fields`.

    ``entry["level"]`` and ``entry.get("level")`` read any key, fixed or extra;
    ``entry.level`` reads an extra field too.
    """

    id: str
    node: str
    seq: int
    ts: str
    msg: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The line's hash chain (hex; ``""`` when unchained or not read from a log): docs/security.md.
    chain: str = dataclasses.field(default="", compare=False, repr=False)

    def __hash__(self) -> int:
        # The id is unique per entry; hashing it lets entries go into sets (fields are a dict).
        return hash(self.id)

    @property
    def sort_key(self) -> tuple[str, str, int]:
        """The merged-view order: hybrid-logical-clock time, then node, then sequence."""
        return (self.ts, self.node, self.seq)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "node": self.node,
            "seq": self.seq,
            "ts": self.ts,
            "msg": self.msg,
        }
        out.update(self.fields)
        return out

    def __getitem__(self, key: str) -> Any:
        if key in ("id", "node", "seq", "ts", "msg"):
            return getattr(self, key)
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not real attributes: expose extra fields.
        fields = self.__dict__.get("fields")
        if fields is not None and name in fields:
            return fields[name]
        raise AttributeError(name)


def check_entry(
    msg: object, fields: Mapping[str, Any], max_message_bytes: int, key: object = None
) -> tuple[bytes, dict[str, Any]]:
    """What ``write()`` stores besides the message: the fields with the level checked (a name
    or syslog severity, stored by name; INFO when none is given) and the idempotency ``key``
    in front when there is one; and their JSON tail (see :func:`check_message`)."""
    if "key" in fields:
        raise ReservedFieldError("field name(s) key are reserved: pass key= instead")
    level = canonical_level(fields.get("level", DEFAULT_LEVEL))
    rest = {name: value for name, value in fields.items() if name != "level"}
    # The level is one of eight ASCII names: spliced in as it is, not run through JSON.
    parts = [b'"level":"' + level.encode() + b'"']
    tail = _encode_checked(msg, rest, max_message_bytes, reserved=_RESERVED_BUT_KEY)
    if tail:
        parts.append(tail)
    stored: dict[str, Any] = {"level": level, **rest}
    if key is not None:
        stored = {"key": check_key(key), **stored}
        parts.insert(0, b'"key":' + _FIELDS_ENCODER.encode(key).encode("utf-8"))
    encoded = b",".join(parts)
    if len(encoded) > max_message_bytes:
        raise MessageTooLargeError(
            f"extra fields are {len(encoded)} bytes, "
            f"more than max_message_bytes={max_message_bytes}; {_RAISE_LIMIT}"
        )
    return encoded, stored


def check_key(key: object) -> str:
    """``key`` if it can be an idempotency key: a non-empty string of at most MAX_KEY_BYTES."""
    size = _utf8_size("key", key)
    if not 0 < size <= MAX_KEY_BYTES:
        raise InvalidEntryError(f"key must be 1 to {MAX_KEY_BYTES} bytes, got {size}")
    return key  # type: ignore[return-value]  # _utf8_size checked it is a str


def _utf8_size(name: str, text: object) -> int:
    """The UTF-8 length of ``text``, which must be a str that UTF-8 can encode."""
    if not isinstance(text, str):
        raise InvalidTypeError(f"{name} must be str, got {type(text).__name__}")
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidEntryError(f"{name} {_not_text(text, exc)}") from None


def check_message(msg: object, fields: Mapping[str, Any], max_message_bytes: int) -> bytes:
    """Validate a caller's message and extra fields; return the encoded extra-fields JSON tail.

    Raises before anything is written, so a rejected entry changes nothing.
    """
    return _encode_checked(msg, fields, max_message_bytes, reserved=RESERVED_FIELDS)


_RESERVED_BUT_KEY = RESERVED_FIELDS - {"key"}


def _encode_checked(
    msg: object, fields: Mapping[str, Any], max_message_bytes: int, *, reserved: frozenset[str]
) -> bytes:
    size = _utf8_size("msg", msg)
    if size > max_message_bytes:
        raise MessageTooLargeError(
            f"msg is {size} bytes, more than max_message_bytes={max_message_bytes}; {_RAISE_LIMIT}"
        )
    taken = sorted(reserved.intersection(fields))
    if taken:
        raise ReservedFieldError(f"field name(s) {', '.join(taken)} are reserved")
    for key in fields:
        if not isinstance(key, str) or not key:
            raise InvalidEntryError(f"field names must be non-empty strings, got {key!r}")
    if not fields:
        return b""
    try:
        tail = _FIELDS_ENCODER.encode(dict(fields))
        encoded = tail.encode("utf-8")
    except TypeError as exc:
        raise InvalidTypeError(f"extra fields must be JSON-serialisable: {exc}") from None
    except UnicodeEncodeError as exc:
        raise InvalidEntryError(
            _bad_field(fields) or f"extra fields {_not_text(tail, exc)}"
        ) from None
    except ValueError as exc:
        raise InvalidEntryError(f"extra fields are not valid JSON values: {exc}") from None
    if len(encoded) > max_message_bytes:
        raise MessageTooLargeError(
            f"extra fields are {len(encoded)} bytes, "
            f"more than max_message_bytes={max_message_bytes}; {_RAISE_LIMIT}"
        )
    return encoded[1:-1]  # without the braces: spliced after "msg"


_RAISE_LIMIT = (
    "shorten it, or raise the limit: the max_message_bytes key of twinlog.toml (at most "
    f"{MAX_MESSAGE_BYTES_CEILING}; Config(max_message_bytes=...) in Python, "
    "twinlog_max_message_bytes in the Ansible role)"
)


def _not_text(text: str, exc: UnicodeEncodeError) -> str:
    """Why ``text`` cannot be stored, in words that point at the cause: a lone surrogate is
    what Python makes of a byte that is not UTF-8 (sys.argv, os.environ and file names are
    decoded with errors="surrogateescape")."""
    bad = text[exc.start]
    code = ord(bad)
    if 0xDC80 <= code <= 0xDCFF:
        return (
            f"is not valid UTF-8: byte 0x{code - 0xDC00:02x} at character {exc.start + 1} "
            "(text from a command line or file name in another encoding); convert it to "
            "UTF-8 first, e.g. with iconv -f latin1 -t utf-8"
        )
    return (
        f"is not valid text: a lone surrogate U+{code:04X} at character {exc.start + 1} "
        "(half of a UTF-16 pair); pass real characters"
    )


def _bad_field(fields: Mapping[str, Any]) -> str | None:
    """Which field name or text value cannot be stored as UTF-8, and why (None: neither)."""
    for key, value in fields.items():
        for what, text in ((f"field name {key!r}", key), (f"field {key!r}", value)):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return f"{what} {_not_text(text, exc)}"
    return None


def encode_entry(node: str, seq: int, ts: str, msg: str, fields_json: bytes) -> bytes:
    """One complete log line (with its newline) for an already validated message.

    The same bytes as ``json.dumps`` of the dict ``{"id", "node", "seq", "ts", "msg"}`` with
    ``ensure_ascii=False`` and compact separators, then the extra fields: formatted directly,
    as this runs once per entry on the write path.
    """
    head = (
        f'{{"id":{_json_str(f"{node}:{seq}")},"node":{_json_str(node)},"seq":{int(seq)},'
        f'"ts":{_json_str(ts)},"msg":{_json_str(msg)}'
    ).encode()
    if fields_json:
        return head + b"," + fields_json + b"}\n"
    return head + b"}\n"


def id_prefix(node: str) -> bytes:
    """How every line of an entry of ``node`` starts: ``{"id":"<node>:``."""
    return _PREFIX + node.encode() + b":"


def parse_key(line: bytes) -> tuple[str, int, str] | None:
    """``(node, seq, ts)`` of a complete line, without decoding it all; None if not an entry."""
    if line.startswith(_PREFIX):
        end = line.find(b'"', 7)
        colon = line.rfind(b":", 7, end)
        t = line.find(_TS_KEY, end)
        if end > 0 and colon > 0 and t > 0:
            try:
                node = line[7:colon].decode("ascii")
                seq = int(line[colon + 1 : end])
                ts = line[t + 6 : t + 6 + _TS_LEN].decode("ascii")
            except (UnicodeDecodeError, ValueError):
                return None
            if len(ts) == _TS_LEN and ts.endswith("Z"):
                return node, seq, ts
    entry = decode_line(line)
    return None if entry is None else (entry.node, entry.seq, entry.ts)


def block_heads(block: bytes) -> list[tuple[bytes, bytes, bytes]] | None:
    """For ``block``, complete lines that all have the head :func:`encode_entry` writes: each
    line's node, seq and ts as bytes, in order, found by one regular-expression pass in C
    (what :func:`parse_key` would read from each). None if any line lacks that head."""
    heads: list[tuple[bytes, bytes, bytes]] = _HEAD_RE.findall(b"\n" + block)
    return heads if len(heads) == block.count(b"\n") else None


def block_marks(block: bytes) -> tuple[dict[str, int], str]:
    """For ``block``, complete lines: the highest seq of each origin and the greatest ts of its
    entries (``""`` if none), as :func:`parse_key` on each line would find them.

    One pass of :func:`block_heads` when every line has the head :func:`encode_entry` writes
    (a group commit's refresh reads hundreds of other processes' lines per commit); line by
    line otherwise.
    """
    heads = block_heads(block)
    if heads is not None:
        top: dict[bytes, int] = {}
        for node, seq, _ts in heads:
            number = int(seq)
            if number > top.get(node, 0):
                top[node] = number
        max_head_ts = max((h[2] for h in heads), default=b"")
        return {node.decode("ascii"): n for node, n in top.items()}, max_head_ts.decode("ascii")
    hwm: dict[str, int] = {}
    max_ts = ""
    for line in block.splitlines(keepends=True):
        key = parse_key(line)
        if key is None:
            continue
        origin, number, ts = key
        if number > hwm.get(origin, 0):
            hwm[origin] = number
        max_ts = max(max_ts, ts)
    return hwm, max_ts


def decode_line(line: bytes) -> Entry | None:
    """The Entry on a complete line, or None when the line is not a valid entry."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        node, seq, ts, msg = data.pop("node"), data.pop("seq"), data.pop("ts"), data.pop("msg")
        entry_id = data.pop("id")
        chain = data.pop("chain", "")
    except KeyError:
        return None
    if (
        not isinstance(node, str)
        or not isinstance(seq, int)
        or not isinstance(ts, str)
        or not isinstance(msg, str)
        or entry_id != f"{node}:{seq}"
        or not isinstance(chain, str)
    ):
        return None
    return Entry(id=entry_id, node=node, seq=seq, ts=ts, msg=msg, fields=data, chain=chain)


def format_ts(micros: int) -> str:
    """RFC 3339 UTC with microseconds, fixed width, so strings sort like the instants."""
    seconds, fraction = divmod(micros, 1_000_000)
    prefix = _format_seconds(seconds)
    return f"{prefix}.{fraction:06d}Z"


def parse_ts(ts: str) -> int:
    """Microseconds since the epoch of a :func:`format_ts` string."""
    return _parse_seconds(ts[:19]) * 1_000_000 + int(ts[20:26])


@functools.lru_cache(maxsize=64)
def _format_seconds(seconds: int) -> str:
    # Entries written close together share their second: formatting it once is the saving.
    return f"{datetime.fromtimestamp(seconds, tz=UTC):%Y-%m-%dT%H:%M:%S}"


@functools.lru_cache(maxsize=64)
def _parse_seconds(text: str) -> int:
    dt = datetime(
        int(text[0:4]),
        int(text[5:7]),
        int(text[8:10]),
        int(text[11:13]),
        int(text[14:16]),
        int(text[17:19]),
        tzinfo=UTC,
    )
    return int(dt.timestamp())
