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

from collections.abc import Iterator

from twinlog import _failpoints
from twinlog._store import LogStore
from twinlog.entry import parse_key

__all__ = ["transfer"]


def transfer(src: LogStore, dst: LogStore, origin: str) -> int:
    """Append to ``dst`` the entries of ``origin`` that ``src`` has and ``dst`` lacks.

    ``src`` must be ``origin``'s own directory (whose log holds all of origin's entries and whose
    cache lists those not yet delivered). Both stores must be refreshed and locked. Returns the
    number of entries appended. The cache is read first (cheap: just the undelivered entries);
    where it has a gap (a crash between the log append and the cache append), the rest comes
    from ``src``'s log.
    """
    assert src.state is not None
    assert dst.state is not None
    have = dst.state.hwm.get(origin, 0)
    want = src.state.hwm.get(origin, 0)
    if want <= have:
        return 0
    next_seq = have + 1
    moved = 0

    def take(chunks: Iterator[list[bytes]]) -> bool:
        """Append contiguous lines from ``chunks``; False at the first gap."""
        nonlocal next_seq, moved
        for lines in chunks:
            picked: list[bytes] = []
            gap = False
            for line in lines:
                key = parse_key(line)
                if key is None or key[0] != origin or key[1] < next_seq:
                    continue
                if key[1] > next_seq or key[1] > want:
                    gap = key[1] > next_seq
                    break
                picked.append(line)
                next_seq += 1
            if picked:
                dst.append_lines(picked, one_write_per_line=False)
                moved += len(picked)
                if _failpoints.ACTIVE:
                    _failpoints.hit("mid_transfer")
            if gap or next_seq > want:
                return not gap
        return True

    take(src.iter_cache())
    if next_seq <= want:
        take(src.iter_origin_after(origin, next_seq - 1))
    return moved
