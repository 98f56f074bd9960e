"""Seeking in a log by time or by sequence number, instead of reading it from the first byte.

Entries sit in a log in *arrival* order, not time order: a drain appends the peer's older
entries after newer ones. But each origin's own entries are in order: its seqs go up by one
and its timestamps (a hybrid logical clock, ``clock.py``) strictly increase with them, and a
log receives an origin's entries in seq order. So, per origin, a log is sorted by time, and an
index that keeps, per origin, "the last entry before this offset" can be binary-searched for a
time or a seq without assuming anything about the other origin's lines around it.

A rotated segment's index is kept in the segment manifest (``twinlog.segments``), under its
number, as ``"index"``: its size (a different size means stale: it is rebuilt), per origin its
first and last ``(seq, ts)``, and a mark about every ``MARK_EVERY`` bytes, at a line start:
``[offset, {origin: [seq, ts] of its last line before offset}]``. Written at rotation; a reader
that finds none (an old manifest, a rotation that crashed) builds it in memory from the
segment, reading only the line heads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from twinlog._fileops import CHUNK
from twinlog.entry import block_heads, parse_key

__all__ = ["MARK_EVERY", "SegmentIndex", "build_index", "heads_of", "tail_start"]

MARK_EVERY = CHUNK  # what LogStore.iter_blocks reads at a time

# (seq, ts) of an origin's line
_Point = tuple[int, str]


def heads_of(block: bytes) -> list[tuple[str, int, str]]:
    """``(origin, seq, ts)`` of every entry line of ``block`` (whole lines), in order: one
    regular-expression pass when every line has the usual head, line by line otherwise."""
    heads = block_heads(block)
    if heads is not None:
        return [(node.decode("ascii"), int(seq), ts.decode("ascii")) for node, seq, ts in heads]
    keys = (parse_key(line) for line in block.splitlines(keepends=True))
    return [key for key in keys if key is not None]


@dataclasses.dataclass(frozen=True)
class SegmentIndex:
    """Where each origin's entries are in one segment (see the module docstring)."""

    size: int
    # origin -> (first seq, first ts, last seq, last ts)
    origins: dict[str, tuple[int, str, int, str]]
    marks: list[tuple[int, dict[str, _Point]]]

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "origins": {origin: list(span) for origin, span in self.origins.items()},
            "marks": [
                [offset, {origin: list(point) for origin, point in before.items()}]
                for offset, before in self.marks
            ],
        }

    @classmethod
    def from_json(cls, data: object, size: int) -> SegmentIndex | None:
        """The index stored for a segment now ``size`` bytes long; None if missing, malformed
        or stale (made for another size)."""
        if not isinstance(data, dict):
            return None
        try:
            if int(data["size"]) != size:
                return None
            origins = {
                str(o): (int(a), str(b), int(c), str(d))
                for o, (a, b, c, d) in data["origins"].items()
            }
            marks = [
                (int(offset), {str(o): (int(s), str(t)) for o, (s, t) in before.items()})
                for offset, before in data["marks"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return cls(size, origins, marks)

    def start(self, origin: str, *, since: str | None = None, after_seq: int = 0) -> int | None:
        """Where to start reading ``origin``'s lines to meet its first one with ``ts >= since``
        and ``seq > after_seq``; None when the segment holds none of them."""
        span = self.origins.get(origin)
        if span is None:
            return None
        _first_seq, _first_ts, last_seq, last_ts = span
        if (since is not None and last_ts < since) or last_seq <= after_seq:
            return None
        start = 0
        for offset, before in self.marks:  # ascending; a segment has a few dozen marks
            seen = before.get(origin)
            # Safe to start here if our last line before it is unwanted: then so are all
            # our earlier ones (their seq and ts are lower). Once not, never again.
            if seen is not None and seen[0] > after_seq and (since is None or seen[1] >= since):
                break
            start = offset
        return start

    def first_ts(self, origin: str) -> str | None:
        span = self.origins.get(origin)
        return None if span is None else span[1]


def build_index(blocks: Iterator[bytes]) -> SegmentIndex:
    """The index of a segment read as ``blocks`` of whole lines from offset 0, each at most
    ``MARK_EVERY`` bytes (``LogStore.iter_blocks``): a mark at each block's start."""
    offset = 0
    first: dict[str, _Point] = {}
    last: dict[str, _Point] = {}
    marks: list[tuple[int, dict[str, _Point]]] = []
    for block in blocks:
        if offset:  # blocks are at most MARK_EVERY bytes: a mark about every MiB
            marks.append((offset, dict(last)))
        for origin, seq, ts in heads_of(block):
            if seq > last.get(origin, (0, ""))[0]:  # a duplicate line is not the newest
                last[origin] = (seq, ts)
            if origin not in first:
                first[origin] = (seq, ts)
        offset += len(block)
    origins = {o: (first[o][0], first[o][1], last[o][0], last[o][1]) for o in last}
    return SegmentIndex(offset, origins, marks)


def tail_start(
    read_back: Callable[[int], tuple[int, bytes]], end: int, origin: str, count: int
) -> tuple[int, int]:
    """Reading backwards from ``end``: the offset of ``origin``'s ``count``-th line from the
    end (0 if it has fewer), and how many of its lines lie from there to ``end``.

    ``read_back(pos)`` returns ``(start, data)``: whole lines ending at ``pos``, from ``start``
    (a line start). Only line heads are parsed.
    """
    pos = end
    found = 0
    while pos > 0 and found < count:
        start, data = read_back(pos)
        heads = heads_of(data)
        own = [i for i, head in enumerate(heads) if head[0] == origin]
        if found + len(own) >= count:
            # The wanted line is in this block: find its offset by walking the lines.
            index_in_block = own[len(own) - (count - found)]
            lines = data.splitlines(keepends=True)
            if len(lines) == len(heads):
                return start + sum(map(len, lines[:index_in_block])), count
            return start, found + len(own)  # odd lines in the block: start at the block
        found += len(own)
        pos = start
    return 0, found
