"""Reading logs back: the merged view and the by-id comparison of two logs, both streaming."""

from __future__ import annotations

import dataclasses
import errno
import heapq
import os
from collections.abc import Callable, Iterator
from typing import Any

from twinlog._audit import Break
from twinlog._fileops import CHUNK, LOG_FILE
from twinlog._seek import SegmentIndex, build_index, tail_start
from twinlog._store import SEGMENT_RE, LogStore
from twinlog.entry import Entry, block_heads, decode_line, parse_key

__all__ = [
    "Seeker",
    "VerifyResult",
    "compare",
    "last_entries",
    "merged_entries",
    "origin_lines",
    "origin_seqs",
]


class PinnedFiles:
    """Read-only access to a fixed set of open files, immune to a rotation renaming them."""

    def __init__(self, dir_fd: int, names: list[str]) -> None:
        self._fds: dict[str, int] = {}
        for name in names:
            try:
                self._fds[name] = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                continue

    def size(self, name: str) -> int:
        fd = self._fds.get(name)
        return 0 if fd is None else os.fstat(fd).st_size

    def read(self, name: str, offset: int, length: int) -> bytes:
        fd = self._fds.get(name)
        return b"" if fd is None else os.pread(fd, length, offset)

    # The rest of :class:`twinlog._store.Ops`: a reader has nothing else to do with the files.
    def stat(self, name: str) -> tuple[int, int] | None:
        fd = self._fds.get(name)
        if fd is None:
            return None
        st = os.fstat(fd)
        return st.st_size, st.st_ino

    def tail(self, name: str, offset: int, limit: int) -> tuple[int, int, bytes] | None:
        st = self.stat(name)
        return None if st is None else (st[0], st[1], self.read(name, offset, limit))

    def listdir(self) -> list[str]:
        return list(self._fds)

    def append(self, name: str, chunks: list[bytes], fsync: bool) -> int:
        raise _read_only(name)

    def repair_tail(self, name: str) -> int:
        raise _read_only(name)

    def fsync_file(self, name: str) -> None:
        raise _read_only(name)

    def unlink(self, name: str) -> bool:
        raise _read_only(name)

    def replace(self, name: str, data: bytes, fsync: bool) -> None:
        raise _read_only(name)

    def rename(self, src: str, dst: str) -> None:
        raise _read_only(src)

    def fsync_dir(self) -> None:
        raise _read_only(".")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _read_only(name: str) -> OSError:
    return OSError(errno.EROFS, "a pinned snapshot is read-only", name)


def pinned_snapshot(
    store: LogStore, dir_fd: int
) -> tuple[PinnedFiles, list[tuple[str, int | None]]]:
    """Open the segments and the active log so that a concurrent rotation cannot shift them."""
    for _ in range(10):
        names = [*store.segments(), LOG_FILE]
        pinned = PinnedFiles(dir_fd, names)
        if [*store.segments(), LOG_FILE] == names:
            return pinned, [(name, pinned.size(name)) for name in names]
        pinned.close()  # a rotation happened in between: look again
    raise OSError("the log kept rotating while being opened")


def snapshot_files(store: LogStore) -> list[tuple[str, int | None]]:
    """The segments and the active log up to its current complete size."""
    state = store.state
    end = state.offset if state is not None else None
    return [*((name, None) for name in store.segments()), (LOG_FILE, end)]


#: Where to read one origin's lines: (file, start offset, end offset or None), in log order.
Plan = list[tuple[str, int, int | None]]


def _origin_entries(
    store: LogStore,
    plan: Plan,
    origin: str,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[Entry]:
    own = origin.encode("ascii")  # node names are plain ASCII (config.NODE_NAME_PATTERN)
    last = 0
    for name, start, end in plan:
        for block in store.iter_blocks(name, start, end):
            if since is not None:
                heads = block_heads(block)
                newest = next((h for h in reversed(heads or ()) if h[0] == own), None)
                if heads is not None and (newest is None or newest[2].decode("ascii") < since):
                    # None of ours in the window here (ours are in ts order): skip the block.
                    last = max(last, int(newest[1])) if newest is not None else last
                    continue
            for line in block.splitlines(keepends=True):
                key = parse_key(line)
                if key is None or key[0] != origin or key[1] <= last:
                    continue  # another origin, not an entry, or a duplicate: shown once
                if until is not None and key[2] >= until:
                    return  # an origin's timestamps only go up: nothing later is in the window
                if since is not None and key[2] < since:
                    last = key[1]
                    continue  # before the window: not even decoded
                entry = decode_line(line)
                if entry is None:
                    continue
                last = entry.seq
                yield entry


def whole_files(files: list[tuple[str, int | None]]) -> Plan:
    return [(name, 0, end) for name, end in files]


def merged_entries(
    store: LogStore,
    files: list[tuple[str, int | None]],
    origins: list[str],
    since: str | None = None,
    until: str | None = None,
    *,
    plans: dict[str, Plan] | None = None,
) -> Iterator[Entry]:
    """Every entry of ``origins`` once, ordered by (ts, node, seq): a k-way merge of the origins'
    own streams, each already in that order, so memory stays constant whatever the log size.
    ``since``/``until``: only entries with ``since <= ts < until``; ``plans``: where to read
    each origin (see :mod:`twinlog._seek`), by default every file from its start."""
    plans = plans if plans is not None else {}
    streams = [
        _origin_entries(
            store, plans[origin] if origin in plans else whole_files(files), origin, since, until
        )
        for origin in origins
    ]
    return heapq.merge(*streams, key=lambda e: e.sort_key)


class Seeker:
    """Plans reading a pinned snapshot of a log: which files of it, from where, for one origin
    and a time window or the last entries (:mod:`twinlog._seek`). Segment indexes come from
    the manifest, or are built in memory when missing or stale."""

    def __init__(
        self,
        store: LogStore,
        files: list[tuple[str, int | None]],
        manifest: dict[str, dict[str, Any]],
    ) -> None:
        self.store = store
        self.files = files
        self.manifest = manifest
        self._indexes: dict[str, SegmentIndex] = {}

    def _info(self, name: str) -> dict[str, Any]:
        match = SEGMENT_RE.fullmatch(name)
        info = self.manifest.get(match.group(1)) if match else None
        return info if isinstance(info, dict) else {}

    def index(self, name: str, end: int | None, *, build: bool = True) -> SegmentIndex | None:
        """A segment's index (None for the active log, or one not stored when not ``build``)."""
        if name == LOG_FILE or end is None:
            return None
        if name not in self._indexes:
            index = SegmentIndex.from_json(self._info(name).get("index"), end)
            if index is None and not build:
                return None
            self._indexes[name] = index or build_index(self.store.iter_blocks(name, 0, end))
        return self._indexes[name]

    def window(self, origin: str, since: str | None, until: str | None) -> Plan:
        """Where ``origin``'s entries with ``since <= ts < until`` can be."""
        if since is None and until is None:
            return whole_files(self.files)
        plan: Plan = []
        for name, end in self.files:
            max_ts = self._info(name).get("max_ts")
            if since is not None and isinstance(max_ts, str) and max_ts and max_ts < since:
                continue  # the newest ts of the log when this segment was rotated: all older
            index = self.index(name, end)
            if index is None:
                plan.append((name, 0, end))
                continue
            first = index.first_ts(origin)
            if until is not None and first is not None and first >= until:
                break  # ours only get later from here on
            start = index.start(origin, since=since)
            if start is not None:
                plan.append((name, start, end))
        return plan

    def last(self, origin: str, count: int) -> Plan:
        """Where ``origin``'s last ``count`` entries start: read backwards from the end, line
        heads only, skipping segments whose index says they hold none of ours."""
        for position in range(len(self.files) - 1, -1, -1):
            name, end = self.files[position]
            assert end is not None, "a pinned snapshot: every file's size is known"
            index = self.index(name, end, build=False)
            if index is not None and origin not in index.origins:
                continue
            offset, found = tail_start(self._read_back(name), end, origin, count)
            count -= found
            if count <= 0:
                return [(name, offset, end), *whole_files(self.files[position + 1 :])]
        return whole_files(self.files)

    def _read_back(self, name: str) -> Callable[[int], tuple[int, bytes]]:
        def read_back(pos: int) -> tuple[int, bytes]:
            start = pos
            data = b""
            while start > 0:
                start = max(0, start - CHUNK)
                data = self.store.ops.read(name, start, pos - start)
                newline = data.find(b"\n") if start > 0 else -1
                if start == 0 or newline >= 0:
                    data, start = data[newline + 1 :], start + newline + 1
                    break  # a line longer than CHUNK: reach further back
            return start, data[: data.rfind(b"\n") + 1]

        return read_back


def last_entries(seeker: Seeker, origins: list[str], count: int) -> list[Entry]:
    """The last ``count`` entries of ``origins`` in the merged order, reading only the end of
    each origin's stream (its ``count`` newest entries are its last in the log)."""
    if count <= 0:
        return []
    newest: list[Entry] = []
    for origin in origins:
        plan = seeker.last(origin, count)
        newest += list(_origin_entries(seeker.store, plan, origin))[-count:]
    newest.sort(key=lambda e: e.sort_key)
    return newest[-count:]


def origin_seqs(store: LogStore, files: list[tuple[str, int | None]], origin: str) -> Iterator[int]:
    """The seqs of ``origin``'s entries in ``files``, in log order."""
    for seq, _digest in origin_lines(store, files, origin):
        yield seq


def origin_lines(
    store: LogStore, files: list[tuple[str, int | None]], origin: str
) -> Iterator[tuple[int, int]]:
    """``(seq, digest of its line)`` of ``origin``'s entries in ``files``, in log order (what
    verify compares; equal digests in one process: the same line): a block of lines at a time
    by one regular-expression pass, line by line where a block has a line without the usual
    head."""
    own = origin.encode("ascii")  # node names are plain ASCII (config.NODE_NAME_PATTERN)
    for name, end in files:
        for block in store.iter_blocks(name, 0, end):
            lines = block.split(b"\n")[:-1]
            heads = block_heads(block)
            if heads is not None:
                yield from [
                    (int(seq), hash(line))
                    for (node, seq, _ts), line in zip(heads, lines, strict=True)
                    if node == own
                ]
                continue
            for line in lines:
                key = parse_key(line + b"\n")
                if key is not None and key[0] == origin:
                    yield key[1], hash(line)


@dataclasses.dataclass
class VerifyResult:
    """The by-id comparison of this node's log and the peer's."""

    in_sync: bool
    node: str
    peer: str
    peer_reachable: bool
    reason: str
    missing_on_local: list[str] = dataclasses.field(default_factory=list)
    missing_on_peer: list[str] = dataclasses.field(default_factory=list)
    duplicates_local: list[str] = dataclasses.field(default_factory=list)
    duplicates_peer: list[str] = dataclasses.field(default_factory=list)
    #: Ids both logs hold with different entries: a history conflict (``twinlog repair``).
    conflicts: list[str] = dataclasses.field(default_factory=list)
    local_entries: int = 0
    peer_entries: int = 0
    expired_on_local: int = 0
    expired_on_peer: int = 0
    #: Per origin, both nodes' chain heads ``[seq, chain]`` (None: no chained entry).
    chain_heads: dict[str, dict[str, list[Any] | None]] = dataclasses.field(default_factory=dict)
    #: Whether every origin's heads are equal at equal seqs (the O(origins) check).
    heads_agree: bool = False
    #: ``verify(deep=True)`` only: every link and witness re-checked on both nodes.
    deep: bool = False
    #: What the deep check found: each break with its node, file, byte offset and id.
    broken: list[Break] = dataclasses.field(default_factory=list)
    #: Per node, per origin, the last seq of the unchained prefix (written before the chain).
    unchained: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    lines_checked: int = 0

    @property
    def duplicates(self) -> list[str]:
        return sorted(set(self.duplicates_local) | set(self.duplicates_peer))

    @property
    def note(self) -> str:
        """Plain words on what was compared; says so when one side expired what the other keeps."""
        if not self.peer_reachable:
            return f"nothing compared: peer {self.peer} not reachable ({self.reason})"
        parts = []
        if self.expired_on_local:
            parts.append(f"{self.expired_on_local} older entries expired on {self.node} only")
        if self.expired_on_peer:
            parts.append(f"{self.expired_on_peer} older entries expired on {self.peer} only")
        deep = f"; {self.lines_checked} lines' chains re-checked" if self.deep else ""
        if parts:
            return "compared over the retained window: " + "; ".join(parts) + deep
        return "compared both logs in full" + deep

    @property
    def missing(self) -> dict[str, list[str]]:
        """Ids missing on each node, keyed by node name."""
        return {self.node: self.missing_on_local, self.peer: self.missing_on_peer}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["duplicates"] = self.duplicates
        out["note"] = self.note
        if not self.peer_reachable:
            # Nothing was compared: no counts or lists that would read as "none found".
            for key in out:
                if key not in _WHAT_WAS_ASKED:
                    out[key] = None
        return out


#: VerifyResult.to_dict keys that stay when nothing could be compared.
_WHAT_WAS_ASKED = frozenset({"in_sync", "node", "peer", "peer_reachable", "reason", "note"})


def _ascending(
    seqs: Iterator[tuple[int, int]], origin: str, result: VerifyResult, side: str
) -> Iterator[tuple[int, int]]:
    """``seqs`` without second copies of an id (in a valid log seqs only go up), which are
    recorded as ``result.duplicates_<side>``; every line counts in ``<side>_entries``."""
    dups: list[str] = getattr(result, f"duplicates_{side}")
    counter = f"{side}_entries"
    last = 0
    for seq, digest in seqs:
        setattr(result, counter, getattr(result, counter) + 1)
        if seq <= last:
            dups.append(f"{origin}:{seq}")
            continue
        last = seq
        yield seq, digest


def compare(
    local: Iterator[tuple[int, int]],
    peer: Iterator[tuple[int, int]],
    origin: str,
    result: VerifyResult,
    *,
    local_mark: int = 0,
    peer_mark: int = 0,
) -> None:
    """Walk two ``(seq, line digest)`` streams of one origin (each ascending) and record
    differences by id: ids one side lacks, and ids whose lines differ (conflicts).

    An id one side lacks is *missing* there unless that side has expired it: it is below the
    first seq that side still keeps (or, keeping none, at most the side's high-water mark
    ``*_mark``, which survives rotation and expiry).
    """
    sentinel = 1 << 62
    end = (sentinel, 0)
    a = _ascending(local, origin, result, "local")
    b = _ascending(peer, origin, result, "peer")
    (x, x_digest), (y, y_digest) = next(a, end), next(b, end)
    local_floor = x if x != sentinel else local_mark + 1
    peer_floor = y if y != sentinel else peer_mark + 1
    while x != sentinel or y != sentinel:
        if x == y:
            if x_digest != y_digest:
                result.conflicts.append(f"{origin}:{x}")
            (x, x_digest), (y, y_digest) = next(a, end), next(b, end)
        elif x < y:
            if x < peer_floor:
                result.expired_on_peer += 1
            else:
                result.missing_on_peer.append(f"{origin}:{x}")
            x, x_digest = next(a, end)
        else:
            if y < local_floor:
                result.expired_on_local += 1
            else:
                result.missing_on_local.append(f"{origin}:{y}")
            y, y_digest = next(b, end)
