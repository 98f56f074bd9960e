"""Idempotency keys: the window of keys this node logged lately, and the lookup a commit makes.

A write may carry a ``key``; one whose key this node already logged among its last
``dedupe_window`` entries of its own origin gets that entry back instead of a new one. Whoever
assigns seqs holds the node's lock, so the check is made there (for a group-commit leader's
followers too): two processes writing the same key at once log it once. The window is read
from the log, not kept only in memory, so it holds across processes and restarts: each commit
that carries a key first reads the node's own lines it has not seen (usually none but the ones
other processes appended since; after a restart, the last ``dedupe_window`` of them).

A key is stored as the first extra field of its line (``..."msg":"...","key":"...",...``):
finding the key of a request is a prefix test on its fields JSON, and a line without
``"key":`` anywhere is never decoded.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from twinlog._store import LogStore
from twinlog.entry import Entry, decode_line, encode_entry, parse_key

__all__ = [
    "KeyLookup",
    "KeyWindow",
    "assign",
    "entry_of",
    "fresh_items",
    "key_of",
]

KEY_FIELD = b'"key":'
_DECODER = json.JSONDecoder()

#: What a group-commit leader sends for an item it did not log because its key was logged
#: already: the existing entry's seq, ts and line (a fresh item gets ``(seq, ts)``).
Known = tuple[int, str, bytes]


def key_of(fields_json: bytes) -> str | None:
    """The idempotency key of a checked request, from its fields JSON (the key comes first)."""
    if not fields_json.startswith(KEY_FIELD):
        return None
    value, _end = _DECODER.raw_decode(fields_json[len(KEY_FIELD) :].decode("utf-8"))
    return value if isinstance(value, str) else None


def _line_key(line: bytes) -> str | None:
    if KEY_FIELD not in line:
        return None
    entry = decode_line(line)
    if entry is None:
        return None
    key = entry.fields.get("key")
    return key if isinstance(key, str) else None


def entry_of(node: str, assigned: tuple[Any, ...], msg: str, fields: dict[str, Any]) -> Entry:
    """A follower's entry from what its leader assigned: a fresh ``(seq, ts)``, or the entry
    already logged with the item's key (``(seq, ts, line)``)."""
    if len(assigned) == 3:
        known = decode_line(assigned[2])
        if known is not None:
            return known
    seq, ts = assigned[0], assigned[1]
    return Entry(f"{node}:{seq}", node, seq, ts, msg, fields)


class KeyWindow:
    """The keys of this node's last ``size`` entries of its own origin, as read from its log."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seqs: dict[str, int] = {}  # key -> the latest seq that carries it
        self._order: deque[tuple[int, str]] = deque()
        self._seen = 0  # our own entries up to this seq have been read
        self._loads = -1  # the store's ``loads`` when they were
        #: Own lines read to keep the window (for the tests and the benchmark notes).
        self.lines_read = 0

    def open(
        self, store: LogStore, node: str, pending: Iterable[Any], followers: Iterable[Any]
    ) -> KeyLookup | None:
        """Before seqs are assigned, under the node's lock, with ``store`` refreshed: the lookup
        for this commit, or None when no request of it (our ``pending`` entries, each
        follower's items) has a key: most commits, which then build nothing."""
        if self.size == 0 or not _any_key(pending, followers):
            return None
        self._catch_up(store, node)
        return KeyLookup(self, store, node)

    def appended(self, keyed: list[tuple[str, int]], last_seq: int) -> None:
        """Our append of seqs up to ``last_seq`` succeeded: take its keys without reading."""
        if last_seq <= self._seen:
            return
        for key, seq in keyed:
            self._add(key, seq)
        self._seen = last_seq
        self._evict()

    def _catch_up(self, store: LogStore, node: str) -> None:
        state = store.state
        assert state is not None, "refresh() first"
        hwm = state.hwm.get(node, 0)
        if store.loads != self._loads or hwm < self._seen:
            # A new process, or the log was replaced or rotated: read the window afresh.
            self._seqs.clear()
            self._order.clear()
            self._seen = 0
            self._loads = store.loads
        start = max(self._seen, hwm - self.size)
        if hwm > start:
            for lines in store.iter_origin_after(node, start):
                for line in lines:
                    self.lines_read += 1
                    key = _line_key(line)
                    if key is not None:
                        head = parse_key(line)
                        if head is not None:
                            self._add(key, head[1])
        self._seen = max(self._seen, hwm)
        self._evict()

    def _add(self, key: str, seq: int) -> None:
        if seq >= self._seqs.get(key, 0):
            self._seqs[key] = seq
            self._order.append((seq, key))

    def _evict(self) -> None:
        floor = self._seen - self.size
        while self._order and self._order[0][0] <= floor:
            seq, key = self._order.popleft()
            if self._seqs.get(key) == seq:
                del self._seqs[key]

    def seq_of(self, key: str) -> int | None:
        return self._seqs.get(key)


class KeyLookup:
    """One commit's lookups: the window's keys and those this commit has assigned so far."""

    def __init__(self, window: KeyWindow, store: LogStore, node: str) -> None:
        self._window = window
        self._store = store
        self._node = node
        self._here: dict[str, tuple[int, str, bytes, Any]] = {}  # key -> seq, ts, line, pending
        self._undo: list[str] = []
        #: (key, seq) of each keyed line this commit appends.
        self.keyed: list[tuple[str, int]] = []

    def known(self, fields_json: bytes) -> Known | None:
        """The entry already logged (or assigned in this commit) with this request's key."""
        key = key_of(fields_json)
        if key is None:
            return None
        here = self._here.get(key)
        if here is not None:
            return here[:3]
        seq = self._window.seq_of(key)
        if seq is None:
            return None
        line = self._store.line_of(self._node, seq)
        head = None if line is None else parse_key(line)
        return None if line is None or head is None else (seq, head[2], line)

    def answer(self, pending: Any, own: list[tuple[Any, int, str]]) -> bool:
        """Whether ``pending`` (an entry of this process) has a key logged already: then it is
        answered with that entry, now if it is in the log, else with the entry of this commit
        that has its key once that is durable (appended to ``own``); nothing new is logged."""
        known = self.known(pending.fields_json)
        if known is None:
            return False
        seq, ts, line = known
        first = self._here.get(key_of(pending.fields_json) or "")
        if first is not None and first[3] is not None:
            pending.msg, pending.fields = first[3].msg, first[3].fields
            own.append((pending, seq, ts))
        else:
            pending.entry = decode_line(line)
        return True

    def assign(self, fields_json: bytes, seq: int, ts: str, line: bytes, pending: Any) -> None:
        """This commit logs ``line`` as ``seq``: a later request with its key gets it."""
        key = key_of(fields_json)
        if key is not None:
            self._here[key] = (seq, ts, line, pending)
            self._undo.append(key)
            self.keyed.append((key, seq))

    def assign_items(
        self, items: list[tuple[str, bytes]], next_seq: int, stamps: Iterator[str]
    ) -> list[tuple[Any, ...]]:
        """A follower's assignment: ``(seq, ts)`` for each item to log, from ``next_seq`` on,
        or the known entry's ``(seq, ts, line)`` for an item whose key is logged already."""
        self._undo = []
        out: list[tuple[Any, ...]] = []
        for msg, fields_json in items:
            known = self.known(fields_json)
            if known is not None:
                out.append(known)
                continue
            ts = next(stamps)
            line = encode_entry(self._node, next_seq, ts, msg, fields_json)
            self.assign(fields_json, next_seq, ts, line, None)
            out.append((next_seq, ts))
            next_seq += 1
        return out

    def undo(self) -> None:
        """Forget the last :meth:`assign_items` (its follower gave up: none of it is logged)."""
        for key in self._undo:
            del self._here[key]
        del self.keyed[len(self.keyed) - len(self._undo) :]
        self._undo = []

    def appended(self, last_seq: int) -> None:
        """Our log now holds this commit's lines, up to ``last_seq``."""
        self._window.appended(self.keyed, last_seq)


def _any_key(pending: Iterable[Any], followers: Iterable[Any]) -> bool:
    """Whether a request of a commit (its fields JSON: the key comes first) has a key."""
    for p in pending:
        if p.fields_json.startswith(KEY_FIELD):
            return True
    for follower in followers:
        for _msg, fields_json in follower.items:
            if fields_json.startswith(KEY_FIELD):
                return True
    return False


def assign(
    keys: KeyLookup | None, items: list[tuple[str, bytes]], next_seq: int, stamps: Iterator[str]
) -> list[tuple[Any, ...]]:
    """A follower's assignment (see :meth:`KeyLookup.assign_items`; without keys, all fresh)."""
    if keys is None:
        return [(next_seq + i, next(stamps)) for i in range(len(items))]
    return keys.assign_items(items, next_seq, stamps)


def fresh_items(
    items: list[tuple[str, bytes]], assigned: list[tuple[Any, ...]]
) -> list[tuple[tuple[str, bytes], tuple[int, str]]]:
    """The items of an assignment that get a new line, each with its ``(seq, ts)``."""
    return [(item, (a[0], a[1])) for item, a in zip(items, assigned, strict=True) if len(a) == 2]
