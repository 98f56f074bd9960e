"""Draining: moving into one log the entries it lacks that the other holds (steps 4A and 4B).

Pure in the sense that it does no I/O of its own: everything goes through the two
:class:`~twinlog._store.LogStore` objects (one local, one reached through the killable worker),
so the same code runs against real files, bind mounts, NFS or the fault filesystem.

Invariant kept by every append: in every log, the entries of each origin node appear in sequence
order without gaps. So the high-water mark of an origin in a log (its highest seq there) says
exactly which of that origin's entries the log lacks, and a drain appends exactly those:
running it twice, or again after a crash at any point, adds nothing twice.

Four drains run under both locks, each :func:`drain` with a direction and an origin:
:func:`drain_to_peer` (4A: our entries the peer lacks, then our cache goes),
:func:`drain_from_peer` (4B: the peer's entries we lack, then its cache goes), and, for a node
that lost or rolled back its log, :func:`take_back_own` and :func:`give_back_peers`.
"""

from __future__ import annotations

from collections.abc import Callable

from twinlog import _failpoints
from twinlog._fileops import CACHE_FILE
from twinlog._store import CacheRun, LocalStore, LogStore, PeerStore
from twinlog.entry import parse_key
from twinlog.exceptions import on_local_disk

__all__ = ["drain", "drain_from_peer", "drain_to_peer", "give_back_peers", "take_back_own"]


def drain_to_peer(local: LocalStore, peer: PeerStore) -> int:
    """4A: our entries the peer lacks (from our cache, and anything a crash left undelivered)
    into its log; then our cache goes. Returns how many moved."""
    with on_local_disk("read the local cache or log"):
        moved = drain(local, peer, local.node)
        if _failpoints.ACTIVE:
            _failpoints.hit("after_push_append")
        if local.cache_exists():
            local.remove_cache()
            if _failpoints.ACTIVE:
                _failpoints.hit("after_local_cache_remove")
    return moved


def drain_from_peer(peer: PeerStore, local: LocalStore, peer_has_cache: bool) -> int:
    """4B: the peer's entries we lack (its cache, and anything it left undelivered) into our
    log; then the peer's cache goes."""
    with on_local_disk("append to the local log"):
        moved = drain(peer, local, peer.node)
    if _failpoints.ACTIVE:
        _failpoints.hit("after_pull_append")
    if peer_has_cache:
        peer.remove_cache()
        if _failpoints.ACTIVE:
            _failpoints.hit("after_peer_cache_remove")
    return moved


def take_back_own(peer: PeerStore, local: LocalStore) -> int:
    """Our entries the peer holds and our log lacks (it was lost or rolled back) back into our
    log, before any new seq is allocated; their ids are the peer's."""
    with on_local_disk("take back our entries"):
        moved = drain(peer, local, local.node)
    if moved and _failpoints.ACTIVE:
        _failpoints.hit("after_recover")
    return moved


def give_back_peers(local: LocalStore, peer: PeerStore) -> int:
    """The peer's entries we hold and its log lacks (it lost or rolled back its log) back into
    its log: whichever node makes contact first gives a node its history back."""
    with on_local_disk("read the local log"):
        return drain(local, peer, peer.node)


def drain(src: LogStore, dst: LogStore, origin: str) -> int:
    """Append to ``dst`` the entries of ``origin`` that ``src`` has and ``dst`` lacks.

    Both stores must be refreshed and locked. Returns the number of entries appended, which
    are durable (fsync) when it returns. When ``src`` is ``origin``'s own directory its cache
    is read first (cheap: just the undelivered entries, copied a block at a time when a block
    is exactly the next run of seqs); where it has a gap (a crash between the log append and
    the cache append), or when ``src`` is the other node's directory (taking back a node's
    history after it lost its log), the rest comes from ``src``'s log, line by line. Entries
    ``src``'s log no longer holds at all (expired there, and lost where they belong) are
    skipped: what follows them is still delivered, and seqs continue after it.
    """
    assert src.state is not None
    assert dst.state is not None
    have = dst.state.hwm.get(origin, 0)
    want = src.state.hwm.get(origin, 0)
    if want <= have:
        return 0
    run = _Drain(src, dst, origin, have + 1, want)
    if origin == src.node:  # a node's cache holds its own entries only
        run.from_cache()
    if run.next_seq <= want:
        run.from_log()
    if run.moved:
        dst.sync()
    return run.moved


class _Drain:
    """One :func:`drain`: the next seq ``dst`` needs, up to ``want``, and how many moved."""

    def __init__(self, src: LogStore, dst: LogStore, origin: str, next_seq: int, want: int):
        self.src, self.dst, self.origin = src, dst, origin
        self.next_seq, self.want = next_seq, want
        self.moved = 0

    def from_cache(self) -> None:
        """The cache's blocks: whole runs of the next seqs go as they are (copied by the
        peer's worker straight from our cache file when we push), the others line by line."""
        src, dst, origin, resume = self.src, self.dst, self.origin, 0
        if isinstance(src, LocalStore) and isinstance(dst, PeerStore):
            resume, self.next_seq, self.moved = _counted_runs(
                src, dst, origin, self.next_seq, self.want
            )
        for _offset, block in src.iter_cache_blocks_at(resume):
            if self.next_seq > self.want:
                break
            run = _next_run(block, origin, self.next_seq, self.want)
            if run is not None:
                count, last_seq, last_ts = run
                dst.append_run(block, origin, last_seq, last_ts)
                self.next_seq = last_seq + 1
                self.moved += count
            elif not self.take(block.splitlines(keepends=True)):
                break
            if _failpoints.ACTIVE:
                _failpoints.hit("mid_transfer")

    def from_log(self) -> None:
        """The rest from ``src``'s log, from the first line after what ``dst`` has."""
        first = True
        for lines in self.src.iter_origin_after(self.origin, self.next_seq - 1):
            if not self.take(lines, skip_missing=first) or self.next_seq > self.want:
                break
            first = False
            if _failpoints.ACTIVE:
                _failpoints.hit("mid_transfer")

    def take(self, lines: list[bytes], *, skip_missing: bool = False) -> bool:
        """Append the contiguous lines that come next; False at the first gap, unless
        ``skip_missing``: the log's first line after ``next_seq`` then starts the run."""
        picked: list[bytes] = []
        gap = False
        for line in lines:
            key = parse_key(line)
            if key is None or key[0] != self.origin or key[1] < self.next_seq:
                continue
            if skip_missing and not picked and self.next_seq < key[1] <= self.want:
                self.next_seq = key[1]
            skip_missing = False
            if key[1] > self.next_seq or key[1] > self.want:
                gap = key[1] > self.next_seq
                break
            picked.append(line)
            self.next_seq += 1
        if picked:
            self.dst.append_lines(picked, one_write_per_line=False, durable=False)
            self.moved += len(picked)
        return not gap


def _counted_runs(
    src: LocalStore, dst: PeerStore, origin: str, next_seq: int, want: int
) -> tuple[int, int, int]:
    """The fast drain: each block of the local cache is judged by its edges (first and last
    seq) and its line count, and the peer's worker copies it straight from the cache file
    (``append_run_later``) while this process judges the next block: the two processes share
    the work, and no byte reaches the peer before its block was found whole. Returns where the
    block-by-block drain must go on (the cache's end when all went this way), the next seq, and
    the entries moved."""
    size = src.cache_size()
    cache_path = src.local_path(CACHE_FILE)
    pos, planned, moved = 0, next_seq, 0
    pending: tuple[Callable[[], bool], CacheRun] | None = None
    while True:
        run = src.cache_run_at(pos, size) if pos < size and planned <= want else None
        if run is not None and not (
            run.first[0] == origin == run.last[0]
            and run.first[1] == planned
            and planned <= run.last[1] <= want
            and src.cache_run_is_whole(run)
        ):
            run = None
        if pending is not None:
            finish, done = pending
            pending = None
            if not finish():  # not whole lines after all: that block goes the slow way
                return done.start, done.first[1], moved
            moved += done.last[1] - done.first[1] + 1
            next_seq = done.last[1] + 1
            if _failpoints.ACTIVE:
                _failpoints.hit("mid_transfer")
        if run is None:
            return pos, next_seq, moved
        finish_run = dst.append_run_later(cache_path, run)
        pending = (finish_run, run)
        pos, planned = run.end, run.last[1] + 1


def _next_run(block: bytes, origin: str, next_seq: int, want: int) -> tuple[int, int, str] | None:
    """``(count, last seq, last ts)`` if ``block`` is exactly ``origin``'s entries
    ``next_seq, next_seq + 1, ...`` (at most ``want``), judged from its first and last lines and
    its line count: a cache holds one origin's entries in order, so this is the common case."""
    first_end = block.find(b"\n") + 1
    last_start = block.rfind(b"\n", 0, len(block) - 1) + 1
    first = parse_key(block[:first_end])
    last = parse_key(block[last_start:])
    if first is None or last is None or first[0] != origin or last[0] != origin:
        return None
    count = block.count(b"\n")
    if first[1] != next_seq or last[1] != next_seq + count - 1 or last[1] > want:
        return None
    return count, last[1], last[2]
