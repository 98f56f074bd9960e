"""One node directory's log as seen from here: what it holds, and appending to it.

A :class:`LogStore` drives a directory through an :class:`Ops` (in-process for our own
directory, the killable worker for the peer's) and keeps, in memory, what it has read of the
active log: the byte offset of the last complete line and, per origin node, the highest sequence
number present (the *high-water mark*). Entries of each origin sit in every log in sequence order
without gaps, so the high-water mark alone says which entries a log lacks; that is what makes
drains idempotent. A checkpoint file (``twinlog.idx``) bounds how much a fresh process must read
to learn the marks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from twinlog import _failpoints
from twinlog._chain import GENESIS, SUFFIX_LEN, chain_at_end
from twinlog._fileops import CACHE_FILE, CHUNK, LOG_FILE, Allowed, Look
from twinlog._seek import SegmentIndex, build_index
from twinlog.entry import block_marks, parse_key

__all__ = [
    "INDEX_FILE",
    "SEGMENTS_FILE",
    "SEGMENT_RE",
    "LocalOps",
    "LocalStore",
    "LogState",
    "LogStore",
    "Ops",
    "PeerOps",
    "PeerStore",
    "segment_name",
]

INDEX_FILE = "twinlog.idx"
SEGMENTS_FILE = "twinlog.segments"
DRAIN_CHUNK = 4 << 20
CHECKPOINT_EVERY = 1 << 20
_TAIL_BYTES = 80  # at least a line's chain field: _account_run reads the head from it
_EDGE = 256 * 1024  # how much of a drain block's edges is read to find its first and last line
SEGMENT_RE = re.compile(r"twinlog\.log\.(\d+)")


def segment_name(number: int) -> str:
    return f"{LOG_FILE}.{number}"


class Ops(Protocol):
    """The file operations a store needs; see :class:`twinlog._fileops.DirOps`."""

    def stat(self, name: str) -> tuple[int, int] | None: ...
    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def tail(self, name: str, offset: int, limit: int) -> tuple[int, int, bytes] | None: ...
    def append(self, name: str, chunks: list[bytes], fsync: bool) -> int: ...
    def repair_tail(self, name: str) -> int: ...
    def fsync_file(self, name: str) -> None: ...
    def unlink(self, name: str) -> bool: ...
    def replace(self, name: str, data: bytes, fsync: bool) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def listdir(self) -> list[str]: ...
    def fsync_dir(self) -> None: ...


class LocalOps(Ops, Protocol):
    """Our own directory's operations (:class:`twinlog._fileops.DirOps`): its files have paths
    here, which the peer's worker can read directly."""

    def local_path(self, name: str) -> str: ...
    def count_lines(self, name: str, start: int, end: int) -> int: ...


class PeerOps(Ops, Protocol):
    """The peer directory's operations (:class:`twinlog._peer.RemoteOps`): each a round trip
    to the worker, so some are combined into one."""

    def append_and_release(self, name: str, chunks: list[bytes], fsync: bool) -> int: ...
    def append_if_settled(
        self,
        expected_node: str,
        not_dev_ino: tuple[int, int],
        *,
        known: tuple[int, int, bytes],
        allowed: Allowed,
        chunks: list[bytes],
        fsync: bool,
    ) -> tuple[bool, Any, Any]: ...
    def append_from_later(
        self, name: str, src_path: str, offset: int, length: int, fsync: bool
    ) -> Callable[[], int]: ...


@dataclass
class LogState:
    """What has been read of the active log."""

    ino: int | None = None
    offset: int = 0
    hwm: dict[str, int] = field(default_factory=dict)
    #: Each origin's newest entry, ``(seq, chain)``, where that entry is chained (_chain.py).
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    max_ts: str = ""
    tail: bytes = b""
    checkpoint_offset: int = 0
    torn: bool = False
    segment: int = 0  # the newest rotated segment's number when this state was built

    def absorb(self, block: bytes) -> None:
        """Account for ``block``, complete lines read or written after what was seen."""
        hwm, max_ts = block_marks(block)
        for node, seq in hwm.items():
            if seq > self.hwm.get(node, 0):
                self.hwm[node] = seq
                self.set_head(node, seq, _chain_of_line(block, node, seq))
        self.max_ts = max(self.max_ts, max_ts)

    def set_head(self, origin: str, seq: int, chain: str | None) -> None:
        if chain is None:
            self.heads.pop(origin, None)
        else:
            self.heads[origin] = (seq, chain)

    def prev_chain(self, origin: str) -> bytes:
        """What the next entry of ``origin`` chains to: its newest entry's chain, if chained."""
        head = self.heads.get(origin)
        if head is None or head[0] != self.hwm.get(origin, 0):
            return GENESIS
        return bytes.fromhex(head[1])


def _heads_from_json(raw: object) -> dict[str, tuple[int, str]]:
    """Heads as a checkpoint or the manifest stores them (none from an older twinlog)."""
    if not isinstance(raw, dict):
        return {}
    try:
        return {str(origin): (int(head[0]), str(head[1])) for origin, head in raw.items()}
    except (ValueError, TypeError, IndexError, KeyError):
        return {}


def _chain_of_line(block: bytes, origin: str, seq: int) -> str | None:
    """The chain of the line of ``origin:seq`` in ``block`` (its last of that origin)."""
    start = block.rfind(b'{"id":"' + f"{origin}:{seq}".encode() + b'",')
    if start < 0:
        return None
    end = block.find(b"\n", start) + 1
    return chain_at_end(block[max(start, end - SUFFIX_LEN) : end]) if end else None


@dataclass(frozen=True)
class CacheRun:
    """A stretch of whole cache lines: offsets, the keys of its first and last lines, and its
    last bytes."""

    start: int
    end: int
    first: tuple[str, int, str]
    last: tuple[str, int, str]
    tail: bytes


class LogStore:
    """A node's log directory, reached through ``ops``."""

    def __init__(self, ops: Ops, node: str, *, fsync: bool) -> None:
        self.ops = ops
        self.node = node
        self.fsync = fsync
        self.state: LogState | None = None
        #: How many times :attr:`state` was built afresh (a new process, a replaced or rotated
        #: log): what was checked about the log before may no longer hold.
        self.loads = 0

    # -- learning what the log holds ------------------------------------------------------
    @property
    def read_offset(self) -> int:
        """Where the next :meth:`refresh` reads from (for a prefetched ``tail``): the bytes
        last read before the offset, then what is new. The file's inode and size alone do not
        say that it is the file read before: a log made anew (a wiped or rolled-back
        directory) may get the freed inode number and grow past the old offset."""
        return self.state.offset - len(self.state.tail) if self.state else 0

    def refresh(self, *, repair: bool) -> LogState:
        """Bring :attr:`state` up to date with the file; cut a torn tail when ``repair``.
        Only call with ``repair=True`` while holding the directory's lock."""
        return self.refresh_with(self.ops.tail(LOG_FILE, self.read_offset, CHUNK), repair=repair)

    def refresh_with(self, first: tuple[int, int, bytes] | None, *, repair: bool) -> LogState:
        """:meth:`refresh` from ``first``, what ``ops.tail(LOG_FILE, read_offset, CHUNK)``
        answered (fetched together with the peer's lock: one round trip instead of two)."""
        state = self.state
        if (
            state is None
            or first is None
            or first[1] != state.ino
            or first[0] < state.offset
            or not first[2].startswith(state.tail)  # another file under the same inode
        ):
            state = self._load(first)
        else:
            size, _ino, data = first
            self._consume(state, data[len(state.tail) :], size)
        if state.torn and repair:
            self.ops.repair_tail(LOG_FILE)
            state.torn = False
        self.state = state
        return state

    def _consume(self, state: LogState, data: bytes, size: int) -> None:
        """Absorb ``data`` (read at ``state.offset``) and whatever follows up to ``size``."""
        while True:
            used = data.rfind(b"\n") + 1
            if used:
                block = data[:used] if used < len(data) else data
                state.absorb(block)
                state.offset += used
                state.tail = (state.tail + block[-_TAIL_BYTES:])[-_TAIL_BYTES:]
            if state.offset >= size:
                state.torn = False
                return
            if not used and len(data) < CHUNK:
                # Bytes after the last newline, and nothing more to read: a torn line (a writer
                # died mid-append) or, without the lock, one being written right now.
                state.torn = True
                return
            if not used:
                data = data + self.ops.read(LOG_FILE, state.offset + len(data), CHUNK)
                continue
            data = self.ops.read(LOG_FILE, state.offset, CHUNK)
            if not data:
                state.torn = state.offset < size
                return

    def _load(self, first: tuple[int, int, bytes] | None) -> LogState:
        """Build the state from the checkpoint if it matches the file, else from the segments."""
        size, ino = (first[0], first[1]) if first else (0, None)
        numbered = self._numbered_segments()
        newest = numbered[-1][0] if numbered else 0
        state = self._from_checkpoint(size, newest)
        if state is None:
            state = self._from_segments(numbered)
        state.segment = newest
        state.ino = ino
        self.loads += 1
        self._consume(state, self.ops.read(LOG_FILE, state.offset, CHUNK), size)
        return state

    def _from_segments(self, numbered: list[tuple[int, str]]) -> LogState:
        """Marks rebuilt from the segments: from the newest one the manifest describes, reading
        only the segments after it (a rotation that crashed midway left those undescribed)."""
        state = LogState()
        manifest = self.read_manifest()
        start = 0
        for index in range(len(numbered) - 1, -1, -1):
            info = manifest.get(str(numbered[index][0]))
            if isinstance(info, dict) and isinstance(info.get("hwm"), dict):
                state.hwm = {str(k): int(v) for k, v in info["hwm"].items()}
                state.heads = _heads_from_json(info.get("heads"))
                state.max_ts = str(info.get("max_ts", ""))
                start = index + 1
                break
        for _number, name in numbered[start:]:
            self._scan_into(state, name)
        return state

    def _from_checkpoint(self, size: int, newest_segment: int) -> LogState | None:
        """The checkpoint's state, if it was taken on this very active log.

        It names the newest segment that existed when it was taken: after a rotation (even
        one that crashed before writing a new checkpoint) that no longer matches. A checkpoint
        past offset 0 also keeps the bytes just before its offset, which must still be there.
        """
        raw = self.ops.read(INDEX_FILE, 0, 1 << 16)
        try:
            data = json.loads(raw) if raw else None
            if not isinstance(data, dict):
                return None
            offset = int(data["offset"])
            tail = bytes.fromhex(data["tail"])
            hwm = {str(k): int(v) for k, v in data["hwm"].items()}
            heads = _heads_from_json(data.get("heads"))
            max_ts = str(data["max_ts"])
            segment = int(data.get("segment", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if segment != newest_segment:
            return None
        if offset > size or len(tail) > offset:
            return None
        if tail and self.ops.read(LOG_FILE, offset - len(tail), len(tail)) != tail:
            return None
        if offset == 0 and size > 0 and not data.get("fresh"):
            return None
        return LogState(
            offset=offset,
            hwm=hwm,
            heads=heads,
            max_ts=max_ts,
            tail=tail,
            checkpoint_offset=offset,
        )

    def _scan_into(self, state: LogState, name: str) -> None:
        for block in self.iter_blocks(name, 0, None):
            state.absorb(block)

    def checkpoint_due(self, extra: int = 0) -> bool:
        """Whether the log has grown (or will have, by ``extra`` bytes) past the checkpoint."""
        state = self.state
        return (
            state is not None
            and not state.torn
            and state.offset + extra - state.checkpoint_offset >= CHECKPOINT_EVERY
        )

    def checkpoint_if_due(self, *, force: bool = False) -> None:
        """Record the marks at the current offset, so a fresh reader starts from here."""
        state = self.state
        if state is None or state.torn:
            return
        if not force and not self.checkpoint_due():
            return
        self.ops.replace(INDEX_FILE, self.checkpoint_bytes(state), False)
        state.checkpoint_offset = state.offset

    @staticmethod
    def checkpoint_bytes(state: LogState, *, fresh: bool = False) -> bytes:
        doc: dict[str, Any] = {
            "offset": state.offset,
            "tail": state.tail.hex(),
            "hwm": state.hwm,
            "heads": state.heads,
            "max_ts": state.max_ts,
            "segment": state.segment,
        }
        if fresh:
            doc["fresh"] = True
        return json.dumps(doc, sort_keys=True).encode() + b"\n"

    def segments(self) -> list[str]:
        """Rotated segments, oldest first (not the active log)."""
        return [name for _, name in self._numbered_segments()]

    def _numbered_segments(self) -> list[tuple[int, str]]:
        numbered = []
        for name in self.ops.listdir():
            m = SEGMENT_RE.fullmatch(name)
            if m:
                numbered.append((int(m.group(1)), name))
        return sorted(numbered)

    # -- rotation and retention (only ever on this node's own directory, under its lock) ----
    def rotate(self) -> str | None:
        """Make the active log an immutable segment and start an empty one.

        Crash-safe in any order of its steps: the marks never depend on which file holds an
        entry, and a missing or stale checkpoint falls back to reading the segments.
        """
        state = self.state
        assert state is not None, "refresh() first"
        if state.offset == 0:
            return None
        numbered = self._numbered_segments()
        number = numbered[-1][0] + 1 if numbered else 1
        name = segment_name(number)
        self.ops.rename(LOG_FILE, name)
        if _failpoints.ACTIVE:
            _failpoints.hit("after_rotate_rename")
        fresh = LogState(
            hwm=dict(state.hwm), heads=dict(state.heads), max_ts=state.max_ts, segment=number
        )
        self.ops.replace(INDEX_FILE, self.checkpoint_bytes(fresh, fresh=True), True)
        if _failpoints.ACTIVE:
            _failpoints.hit("after_rotate_index")
        manifest = self.read_manifest()
        manifest[str(number)] = {
            "hwm": dict(state.hwm),
            "heads": dict(state.heads),
            "max_ts": state.max_ts,
            "rotated_at": time.time(),
            "index": self._segment_index(name),
        }
        self._index_one_missing(manifest, numbered)
        self._write_manifest(manifest)
        self.ops.append(LOG_FILE, [], self.fsync)  # the new, empty active log
        self.ops.fsync_dir()
        st = self.ops.stat(LOG_FILE)
        fresh.ino = st[1] if st else None
        self.state = fresh
        return name

    def _segment_index(self, name: str) -> dict[str, Any]:
        """The seek index of a segment (``_seek.py``): its line heads read once, in page
        cache right after the rename (about 0.2 s per 50 MiB, once per segment)."""
        return build_index(self.iter_blocks(name, 0, None)).to_json()

    def _index_one_missing(
        self, manifest: dict[str, dict[str, Any]], numbered: list[tuple[int, str]]
    ) -> None:
        """Index the newest older segment whose index is missing or stale (left by an older
        twinlog or a crashed rotation): one per rotation, so catching up never holds the
        lock for long; readers build what is still missing in memory meanwhile."""
        for number, name in reversed(numbered):
            info = manifest.get(str(number))
            st = self.ops.stat(name)
            if not isinstance(info, dict) or st is None:
                continue
            if SegmentIndex.from_json(info.get("index"), st[0]) is None:
                info["index"] = self._segment_index(name)
                return

    def read_manifest(self) -> dict[str, dict[str, Any]]:
        """What is known of each segment: its final marks and when it was rotated."""
        raw = self.ops.read(SEGMENTS_FILE, 0, 1 << 24)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def forget_segments(self, names: list[str]) -> None:
        """Drop what the manifest says of segments no longer in the directory (a repair moved
        them into its archive)."""
        manifest = self.read_manifest()
        numbers = [name.rsplit(".", 1)[-1] for name in names]
        if any(number in manifest for number in numbers):
            for number in numbers:
                manifest.pop(number, None)
            self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict[str, dict[str, Any]]) -> None:
        self.ops.replace(SEGMENTS_FILE, json.dumps(manifest, sort_keys=True).encode(), True)

    def expire(
        self,
        *,
        delivered_own_seq: int,
        retain_segments: int | None,
        retain_days: float | None,
        now: float | None = None,
    ) -> list[str]:
        """Delete the oldest segments beyond the retention limits, oldest first, stopping at the
        first one that still holds an own entry the peer has not received
        (``delivered_own_seq`` is the peer log's mark for this node). Never the active log."""
        if retain_segments is None and retain_days is None:
            return []
        now = time.time() if now is None else now
        numbered = self._numbered_segments()
        manifest = self.read_manifest()
        deleted: list[str] = []
        for index, (number, name) in enumerate(numbered):
            newer = len(numbered) - index - 1
            if newer == 0:
                # The newest segment always stays: its manifest entry and number anchor the
                # marks (and so the next seq) should the checkpoint be lost.
                break
            info = manifest.get(str(number)) or self._describe_segment(name)
            too_many = retain_segments is not None and newer >= retain_segments
            too_old = retain_days is not None and now - float(info["rotated_at"]) > (
                retain_days * 86400
            )
            if not (too_many or too_old):
                break
            if int(info["hwm"].get(self.node, 0)) > delivered_own_seq:
                break  # the peer still needs something in here
            self.ops.unlink(name)
            manifest.pop(str(number), None)
            deleted.append(name)
        if deleted:
            self._write_manifest(manifest)
        return deleted

    def _describe_segment(self, name: str) -> dict[str, Any]:
        """Manifest data for a segment rotated by a crashed rotation: read it."""
        state = LogState()
        self._scan_into(state, name)
        st = self.ops.stat(name)
        return {
            "hwm": state.hwm,
            "heads": state.heads,
            "max_ts": state.max_ts,
            "rotated_at": time.time() if st is None else 0,
        }

    # -- appending ------------------------------------------------------------------------
    def append_lines(
        self,
        lines: list[bytes],
        *,
        one_write_per_line: bool,
        durable: bool = True,
        mark: tuple[str, int, str] | None = None,
    ) -> None:
        """Append complete lines to the active log (fsync per config) and account for them.

        ``durable=False`` leaves the fsync to a later :meth:`sync` (a drain's many chunks).
        ``mark``: ``(origin, seq, ts)`` of the last line, when every line is that origin's and
        in order (the caller just made them): accounted without parsing them back.
        """
        if not lines:
            return
        chunks = lines if one_write_per_line else _pack(lines)
        size = self.ops.append(LOG_FILE, chunks, self.fsync and durable)
        self._appended(size, lines, mark)

    def _appended(self, size: int, lines: list[bytes], mark: tuple[str, int, str] | None) -> None:
        state = self.state
        assert state is not None, "refresh() first"
        if state.ino is None:
            st = self.ops.stat(LOG_FILE)
            state.ino = st[1] if st else None
        if mark is not None:
            self._account_run(size, *mark, b"".join(lines[-2:]))
            return
        state.absorb(b"".join(lines))
        state.tail = (state.tail + b"".join(lines[-2:]))[-_TAIL_BYTES:]
        state.offset = size

    def append_run(self, block: bytes, origin: str, last_seq: int, last_ts: str) -> None:
        """Append a block of complete lines known to be ``origin``'s entries up to
        ``last_seq`` (checked by the caller), without fsync: see :meth:`sync`."""
        size = self.ops.append(LOG_FILE, [block], False)
        self._account_run(size, origin, last_seq, last_ts, block[-_TAIL_BYTES:])

    def _account_run(
        self, size: int, origin: str, last_seq: int, last_ts: str, tail: bytes
    ) -> None:
        state = self.state
        assert state is not None
        if last_seq > state.hwm.get(origin, 0):
            state.hwm[origin] = last_seq
            state.set_head(origin, last_seq, chain_at_end(tail))
        state.max_ts = max(state.max_ts, last_ts)
        state.tail = (state.tail + tail)[-_TAIL_BYTES:]
        state.offset = size

    def sync(self) -> None:
        """fsync the active log (after non-durable appends), if the config asks for fsync."""
        if self.fsync:
            self.ops.fsync_file(LOG_FILE)

    def append_cache(self, lines: list[bytes]) -> None:
        self.ops.append(CACHE_FILE, lines, self.fsync)

    def cache_exists(self) -> bool:
        return self.ops.stat(CACHE_FILE) is not None

    def remove_cache(self) -> bool:
        return self.ops.unlink(CACHE_FILE)

    def count_cache(self) -> int:
        count = 0
        offset = 0
        while True:
            data = self.ops.read(CACHE_FILE, offset, CHUNK)
            if not data:
                return count
            count += data.count(b"\n")
            offset += len(data)

    # -- reading entries of one origin ------------------------------------------------------
    def iter_cache(self) -> Iterator[list[bytes]]:
        """The cache file's complete lines, in chunks."""
        for block in self.iter_cache_blocks():
            yield block.splitlines(keepends=True)

    def iter_cache_blocks(self) -> Iterator[bytes]:
        """The cache file in blocks of whole lines (a torn last line left out)."""
        for _, block in self.iter_cache_blocks_at():
            yield block

    def iter_cache_blocks_at(self, offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """:meth:`iter_cache_blocks` from ``offset`` (a line's start), with each block's offset
        in the file."""
        rest = b""
        while True:
            data = self.ops.read(CACHE_FILE, offset, DRAIN_CHUNK)
            if not data:
                return
            start = offset - len(rest)
            offset += len(data)
            if rest:
                data = rest + data
            end = data.rfind(b"\n") + 1
            rest = data[end:]
            if end:
                yield start, (data[:end] if rest else data)

    def cache_size(self) -> int:
        st = self.ops.stat(CACHE_FILE)
        return st[0] if st else 0

    def cache_run_at(self, pos: int, size: int) -> CacheRun | None:
        """The whole lines of the cache from ``pos`` (a line's start) to at most
        ``DRAIN_CHUNK`` further, judged from its edges only: None where an edge line is not an
        entry or longer than the edge read (the caller then reads the block itself)."""
        head = self.ops.read(CACHE_FILE, pos, min(_EDGE, size - pos))
        first_end = head.find(b"\n") + 1
        limit = min(size, pos + DRAIN_CHUNK)
        tail_start = max(pos, limit - _EDGE)
        if limit - pos <= len(head):
            tail = head[tail_start - pos : limit - pos]
        else:
            tail = self.ops.read(CACHE_FILE, tail_start, limit - tail_start)
        end = tail.rfind(b"\n") + 1
        if not first_end or not end:
            return None
        last_start = tail.rfind(b"\n", 0, end - 1) + 1
        if last_start == 0 and tail_start > pos:
            return None  # the last line began before the tail we read
        first = parse_key(head[:first_end])
        last = parse_key(tail[last_start:end])
        if first is None or last is None:
            return None
        return CacheRun(pos, tail_start + end, first, last, tail[max(0, end - _TAIL_BYTES) : end])

    def iter_blocks(self, name: str, offset: int, end: int | None) -> Iterator[bytes]:
        """Complete lines of ``name`` from ``offset`` to ``end`` (None: the end), a block of
        whole lines per read; a last line without its newline (torn, or being written) is never
        yielded."""
        rest = b""
        while end is None or offset < end:
            want = CHUNK if end is None else min(CHUNK, end - offset)
            data = self.ops.read(name, offset, want)
            if not data:
                return
            offset += len(data)
            data = rest + data
            used = data.rfind(b"\n") + 1
            rest = data[used:]
            if used:
                yield data[:used] if rest else data

    def iter_lines(self, name: str, offset: int, end: int | None) -> Iterator[list[bytes]]:
        """:meth:`iter_blocks`, each block split into its lines."""
        for block in self.iter_blocks(name, offset, end):
            yield block.splitlines(keepends=True)

    def iter_origin_after(self, origin: str, after_seq: int) -> Iterator[list[bytes]]:
        """Lines of ``origin`` with seq > ``after_seq``, in log order, across segments.

        Finds the start by reading backwards from the end of the active log to the last line of
        ``origin`` with seq <= ``after_seq``; then streams forward from there.
        """
        state = self.state
        assert state is not None, "refresh() first"
        files = [*self.segments(), LOG_FILE]
        ends = {LOG_FILE: state.offset}
        start_file, start_offset = 0, 0
        for index in range(len(files) - 1, -1, -1) if after_seq > 0 else ():
            found = self._find_back(files[index], ends.get(files[index]), origin, after_seq)
            if found is not None:
                start_file, start_offset = index, found
                break
        for index in range(start_file, len(files)):
            name = files[index]
            offset = start_offset if index == start_file else 0
            for lines in self.iter_lines(name, offset, ends.get(name)):
                picked = []
                for line in lines:
                    key = parse_key(line)
                    if key is not None and key[0] == origin and key[1] > after_seq:
                        picked.append(line)
                if picked:
                    yield picked

    def line_of(self, origin: str, seq: int) -> bytes | None:
        """The line of entry ``seq`` of ``origin`` as it is in the log (found from the end: it
        is meant for recent entries)."""
        for chunk in self.iter_origin_after(origin, seq - 1):
            for line in chunk:
                key = parse_key(line)
                if key is not None and key[1] == seq:
                    return line
            return None
        return None

    def _find_back(self, name: str, end: int | None, origin: str, after_seq: int) -> int | None:
        """Offset just past the last line of ``origin`` with seq <= after_seq, or None."""
        if end is None:
            st = self.ops.stat(name)
            if st is None:
                return None
            end = st[0]
        pos = end
        carry = b""  # the start of a line that began before ``pos``
        while pos > 0:
            start = max(0, pos - CHUNK)
            block = self.ops.read(name, start, pos - start) + carry
            first_nl = block.find(b"\n") if start > 0 else -1
            if start > 0 and first_nl < 0:  # one line longer than CHUNK: keep reading back
                carry = block
                pos = start
                continue
            body = block[first_nl + 1 :]
            base = start + first_nl + 1
            carry = block[: first_nl + 1] if start > 0 else b""
            lines = body.splitlines(keepends=True)
            offsets = []
            running = base
            for line in lines:
                offsets.append(running)
                running += len(line)
            for line, line_start in zip(reversed(lines), reversed(offsets), strict=True):
                if not line.endswith(b"\n"):
                    continue
                key = parse_key(line)
                if key is not None and key[0] == origin and key[1] <= after_seq:
                    return line_start + len(line)
            pos = start
        return None


class LocalStore(LogStore):
    """Our own directory: its files can be read by path (the fast drain hands the peer's
    worker the cache file's path)."""

    ops: LocalOps

    def __init__(self, ops: LocalOps, node: str, *, fsync: bool) -> None:
        super().__init__(ops, node, fsync=fsync)
        self.ops = ops

    def local_path(self, name: str) -> str:
        """The path of ``name`` here (the peer's worker can read it directly)."""
        return self.ops.local_path(name)

    def cache_run_is_whole(self, run: CacheRun) -> bool:
        """Whether ``run`` holds exactly one line per seq from its first to its last (a crash
        between a log append and the cache append leaves the cache a line short)."""
        lines = self.ops.count_lines(CACHE_FILE, run.start, run.end)
        return lines == run.last[1] - run.first[1] + 1


class PeerStore(LogStore):
    """The peer's directory, reached through the worker: its appends can be combined with the
    lock or the unlock into one round trip."""

    ops: PeerOps

    def __init__(self, ops: PeerOps, node: str, *, fsync: bool) -> None:
        super().__init__(ops, node, fsync=fsync)
        self.ops = ops

    def append_and_release(self, lines: list[bytes], mark: tuple[str, int, str]) -> None:
        """:meth:`append_lines` (one write per line, durable) and unlock the directory, in
        one round trip (the write path's last peer call)."""
        size = self.ops.append_and_release(LOG_FILE, lines, self.fsync)
        self._appended(size, lines, mark)

    def append_if_settled(
        self,
        lines: list[bytes],
        mark: tuple[str, int, str],
        allowed: Allowed,
        not_dev_ino: tuple[int, int],
    ) -> Look | None:
        """Check the directory is this store's node's and not ours (``not_dev_ino``), lock,
        and append our ``lines`` (``mark`` as in :meth:`append_lines`)
        and unlock if nothing but what ``allowed`` allows was added since :attr:`state` was read
        and there is no cache (see ``DirOps.append_if_settled``): None, and the new bytes and
        ours are accounted. Otherwise the directory stays locked, and this returns the log's
        tail from :attr:`read_offset` and whether there is a cache, for :meth:`refresh`."""
        state = self.state
        assert state is not None
        assert state.ino is not None
        done, first, second = self.ops.append_if_settled(
            self.node,
            not_dev_ino,
            known=(state.offset, state.ino, state.tail),
            allowed=allowed,
            chunks=lines,
            fsync=self.fsync,
        )
        if not done:
            return Look(first, bool(second))
        if first:
            self._consume(state, first, state.offset + len(first))
        self._account_run(int(second), *mark, b"".join(lines[-2:]))
        return None

    def append_run_later(self, source: str, run: CacheRun) -> Callable[[], bool]:
        """Have the peer's worker append ``run`` of the local file ``source`` (checked whole by
        :meth:`cache_run_is_whole`). Returns the function that waits for it and accounts for
        it (False: nothing appended)."""
        finish = self.ops.append_from_later(LOG_FILE, source, run.start, run.end - run.start, False)

        def done() -> bool:
            size = finish()
            if size < 0:
                return False
            self._account_run(size, run.last[0], run.last[1], run.last[2], run.tail)
            return True

        return done


def _pack(lines: list[bytes]) -> list[bytes]:
    """Group lines into chunks of about CHUNK bytes, each made of whole lines."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        current.append(line)
        size += len(line)
        if size >= CHUNK:
            chunks.append(b"".join(current))
            current, size = [], 0
    if current:
        chunks.append(b"".join(current))
    return chunks
