"""The pair-sync algorithm, given two stores: moving what one log lacks from the other.

Pure in the sense that it does no I/O of its own: everything goes through the two
:class:`~twinlog._store.LogStore` objects (one local, one reached through the killable worker),
so the same code runs against real files, bind mounts, NFS or the fault filesystem.

Invariant kept by every append: in every log, the entries of each origin node appear in sequence
order without gaps. So the high-water mark of an origin in a log (its highest seq there) says
exactly which of that origin's entries the log lacks, and a transfer appends exactly those:
running it twice, or again after a crash at any point, adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable

from twinlog import _failpoints
from twinlog._fileops import CACHE_FILE
from twinlog._store import CacheRun, LogStore
from twinlog.entry import parse_key

__all__ = ["transfer"]


def transfer(src: LogStore, dst: LogStore, origin: str) -> int:
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
    next_seq = have + 1
    moved = 0

    def take(lines: list[bytes], *, skip_missing: bool = False) -> bool:
        """Append the contiguous lines that come next; False at the first gap, unless
        ``skip_missing``: the log's first line after ``next_seq`` then starts the run."""
        nonlocal next_seq, moved
        picked: list[bytes] = []
        gap = False
        for line in lines:
            key = parse_key(line)
            if key is None or key[0] != origin or key[1] < next_seq:
                continue
            if skip_missing and not picked and next_seq < key[1] <= want:
                next_seq = key[1]
            skip_missing = False
            if key[1] > next_seq or key[1] > want:
                gap = key[1] > next_seq
                break
            picked.append(line)
            next_seq += 1
        if picked:
            dst.append_lines(picked, one_write_per_line=False, durable=False)
            moved += len(picked)
        return not gap

    own_cache = origin == src.node  # a node's cache holds its own entries only
    cache_path = src.local_path(CACHE_FILE) if own_cache else None
    resume = 0
    if cache_path is not None:
        resume, next_seq, moved = _counted_runs(
            src, dst, origin, next_seq, want, cache_path=cache_path
        )
    for _offset, block in src.iter_cache_blocks_at(resume) if own_cache else ():
        if next_seq > want:
            break
        run = _next_run(block, origin, next_seq, want)
        if run is not None:
            count, last_seq, last_ts = run
            dst.append_run(block, origin, last_seq, last_ts)
            next_seq = last_seq + 1
            moved += count
        elif not take(block.splitlines(keepends=True)):
            break
        if _failpoints.ACTIVE:
            _failpoints.hit("mid_transfer")
    if next_seq <= want:
        first = True
        for lines in src.iter_origin_after(origin, next_seq - 1):
            if not take(lines, skip_missing=first) or next_seq > want:
                break
            first = False
            if _failpoints.ACTIVE:
                _failpoints.hit("mid_transfer")
    if moved:
        dst.sync()
    return moved


def _counted_runs(
    src: LogStore, dst: LogStore, origin: str, next_seq: int, want: int, *, cache_path: str
) -> tuple[int, int, int]:
    """The fast drain: each block of the local cache is judged by its edges (first and last
    seq) and its line count, and the peer's worker copies it straight from the cache file
    (``append_run_later``) while this process judges the next block: the two processes share
    the work, and no byte reaches the peer before its block was found whole. Returns where the
    block-by-block drain must go on (the cache's end when all went this way), the next seq, and
    the entries moved."""
    size = src.cache_size()
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
        if finish_run is None:
            return pos, next_seq, moved
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
