"""A node's history across the pair: do both copies of one origin's entries agree?

Each origin's entries sit in both logs, in seq order. A node whose disk was replaced or rolled
back holds fewer of its own entries than the peer does, and may then write new, *different*
entries under ids the peer already holds. Two copies of an origin's history agree up to seq ``m``
when their lines for ``m`` are byte-identical: every line carries its writer's timestamp, and a
node that lost its log cannot write the same line again. So one comparison at the boundary
``min(marks)`` tells whether the shorter history is a prefix of the longer one (then the
missing entries are simply copied, either way), and a bisection finds where two histories part.

A history conflict found once is recorded in the finder's directory (``twinlog.conflict``) and
stays until an operator runs ``twinlog repair``: it is never resolved automatically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from twinlog._fileops import CHUNK, LOG_FILE
from twinlog._store import LogStore
from twinlog.entry import id_prefix

__all__ = [
    "CONFLICT_FILE",
    "Conflict",
    "find_conflict",
    "find_line",
    "read_conflicts",
    "record_conflicts",
]

CONFLICT_FILE = "twinlog.conflict"


@dataclass(frozen=True)
class Conflict:
    """Two different histories of ``origin``: they part at ``first_seq``. ``marks`` are the
    origin's high-water marks in each node's log when it was found (what neither node may
    allocate again)."""

    origin: str
    first_seq: int
    marks: dict[str, int]
    found_by: str
    found_at: float

    @property
    def first_id(self) -> str:
        return f"{self.origin}:{self.first_seq}"

    @property
    def highest_seq(self) -> int:
        return max(self.marks.values(), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "first_id": self.first_id}

    @classmethod
    def from_dict(cls, data: Any) -> Conflict | None:
        try:
            return cls(
                origin=str(data["origin"]),
                first_seq=int(data["first_seq"]),
                marks={str(k): int(v) for k, v in data["marks"].items()},
                found_by=str(data["found_by"]),
                found_at=float(data["found_at"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def read_conflicts(store: LogStore) -> dict[str, Conflict]:
    """The conflicts recorded in ``store``'s directory, by origin."""
    raw = store.ops.read(CONFLICT_FILE, 0, 1 << 20)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        # A record that cannot be read must not be taken for "no conflict".
        return {"?": Conflict("?", 1, {}, "?", 0.0)}
    found = (Conflict.from_dict(item) for item in (data if isinstance(data, list) else []))
    return {c.origin: c for c in found if c is not None}


def record_conflicts(store: LogStore, conflicts: dict[str, Conflict]) -> None:
    """Write ``store``'s conflict record (atomically; removed when empty). Under its lock."""
    if not conflicts:
        store.ops.unlink(CONFLICT_FILE)
        return
    doc = [c.to_dict() for c in sorted(conflicts.values(), key=lambda c: c.origin)]
    store.ops.replace(CONFLICT_FILE, json.dumps(doc, indent=1).encode() + b"\n", True)


def find_conflict(own: LogStore, other: LogStore, origin: str, finder: str) -> Conflict | None:
    """Whether ``origin``'s history in ``own`` (origin's directory) and ``other`` differ below
    the lower of their marks. Both stores refreshed; reads only the lines it compares. Lines one
    side no longer holds (expired) cannot disagree."""
    assert own.state is not None
    assert other.state is not None
    marks = {own.node: own.state.hwm.get(origin, 0), other.node: other.state.hwm.get(origin, 0)}
    top = min(marks.values())
    if top == 0 or _same(own, other, origin, top):
        return None
    low = 1  # bisect: the lines agree below the first seq where they differ, and never after
    while low < top:
        mid = (low + top) // 2
        if _same(own, other, origin, mid):
            low = mid + 1
        else:
            top = mid
    return Conflict(origin, low, marks, finder, time.time())


def _same(own: LogStore, other: LogStore, origin: str, seq: int) -> bool:
    mine, theirs = find_line(own, origin, seq), find_line(other, origin, seq)
    return mine is None or theirs is None or mine == theirs


def find_line(store: LogStore, origin: str, seq: int) -> bytes | None:
    """The line of entry ``origin:seq`` in ``store``'s log (its segments and active log), found
    by its head as ``encode_entry`` writes it, searching back from where it must be."""
    needle = b"\n" + id_prefix(origin) + str(seq).encode() + b'",'
    for name, end in _files_back(store, origin, seq):
        for block in _blocks_back(store, name, end):
            at = (b"\n" + block).rfind(needle)
            if at >= 0:
                stop = block.find(b"\n", at)
                return block[at : stop + 1] if stop >= 0 else None
    return None


def _files_back(store: LogStore, origin: str, seq: int) -> list[tuple[str, int | None]]:
    """The files that may hold ``origin:seq``, newest first: from the segment whose manifest
    mark first reaches ``seq`` (or the active log) back to the oldest."""
    state = store.state
    assert state is not None
    manifest = store.read_manifest()
    files: list[tuple[str, int | None]] = [(name, None) for name in store.segments()]
    files.append((LOG_FILE, state.offset))
    for index, (name, _end) in enumerate(files[:-1]):
        info = manifest.get(name.rsplit(".", 1)[-1])
        hwm = info.get("hwm") if isinstance(info, dict) else None
        if isinstance(hwm, dict) and int(hwm.get(origin, 0)) >= seq:
            files = files[: index + 1]
            break
    return files[::-1]


def _blocks_back(store: LogStore, name: str, end: int | None) -> Iterator[bytes]:
    """Blocks of whole lines of ``name`` up to ``end`` (None: its size), last block first."""
    if end is None:
        st = store.ops.stat(name)
        end = st[0] if st else 0
    pos, carry = end, b""
    while pos > 0:
        start = max(0, pos - CHUNK)
        data = store.ops.read(name, start, pos - start) + carry
        pos = start
        if start > 0:
            cut = data.find(b"\n") + 1
            if not cut:  # one line longer than CHUNK: keep reading back
                carry = data
                continue
            carry, data = data[:cut], data[cut:]
        if data:
            yield data
