"""How far behind delivery is: the oldest entry one side still owes the other, and when both
logs were last known complete. What ``status()`` reports for monitoring.

The last complete sync is remembered in ``twinlog.synced`` (a UTC epoch in seconds, replaced
atomically): written when a reconcile reached the peer (its drains leave both logs holding
every entry and both caches empty) and when ``status()`` finds the pair in sync. Not by
``write()``, which would pay a file replace per commit for it: the reconcile timer (every few
minutes) keeps it fresh. A reader without write access to the directory skips the update.
"""

from __future__ import annotations

import contextlib
import time

from twinlog._fileops import DirOps
from twinlog._store import LogStore
from twinlog.entry import parse_key, parse_ts

__all__ = ["SYNCED_FILE", "last_sync", "oldest_undelivered", "record_sync", "ts_seconds"]

SYNCED_FILE = "twinlog.synced"


def oldest_undelivered(store: LogStore, origin: str, delivered_seq: int | None) -> str | None:
    """The ts of ``origin``'s oldest entry in ``store`` that the other side lacks, or None.

    ``delivered_seq`` is the other log's high-water mark for ``origin`` when it could be read;
    None when it could not (the peer is away): then the cache alone says what waits, its first
    line the oldest (a drain cut short may have delivered it already: an upper bound). With
    the mark, the cache is searched for the first entry above it, then the log (an entry
    appended here and not yet delivered nor cached: a commit in flight, or a crash between).
    """
    for lines in store.iter_cache():
        for line in lines:
            key = parse_key(line)
            if (
                key is not None
                and key[0] == origin
                and (delivered_seq is None or key[1] > delivered_seq)
            ):
                return key[2]
    if delivered_seq is None:
        return None
    state = store.state
    if state is None or state.hwm.get(origin, 0) <= delivered_seq:
        return None
    for lines in store.iter_origin_after(origin, delivered_seq):
        for line in lines:
            key = parse_key(line)
            if key is not None:
                return key[2]
    return None


def ts_seconds(ts: str) -> float:
    """An entry timestamp as seconds since the epoch."""
    return parse_ts(ts) / 1_000_000


def record_sync(ops: DirOps, when: float | None = None) -> None:
    """Remember that both logs were complete at ``when`` (now). Losing it loses nothing but
    this report, so it is not fsynced, and a failure (read-only access) is ignored."""
    moment = time.time() if when is None else when
    with contextlib.suppress(OSError):
        ops.replace(SYNCED_FILE, f"{moment:.6f}\n".encode(), False)


def last_sync(ops: DirOps) -> float | None:
    """When both logs were last known complete (epoch seconds), or None if never recorded."""
    try:
        raw = ops.read(SYNCED_FILE, 0, 64)
    except OSError:
        return None
    try:
        return float(raw.decode("ascii").strip()) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None
