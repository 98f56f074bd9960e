"""The public facade: :class:`TwinLog` wires the pieces together and reads as the method.

Where things are decided (docs/design.md has the module map): whether and for how long to
reach the peer, ``_reach.py``; the commit's steps, ``_commit.py``; where locks are taken,
``_sides.py``; the drains, ``_drain.py``; who commits a batch (group commit), ``_election.py``;
reading, status and verify, ``_inspect.py``.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from twinlog import _inspect, _witness
from twinlog._audit import WITNESS_FIELD
from twinlog._commit import Commit, Pending, ReconcileResult, Stats, repair
from twinlog._delivery import record_sync
from twinlog._election import Election
from twinlog._fileops import CACHE_FILE, LOG_FILE, MARKER_FILE, DirOps
from twinlog._group import socket_name
from twinlog._query import Query, TimeBound
from twinlog._reach import MountLink, PeerLink
from twinlog._read import VerifyResult
from twinlog._repair import RepairResult
from twinlog._sides import Sides
from twinlog.clock import HybridClock
from twinlog.config import Config
from twinlog.entry import Entry, check_entry
from twinlog.exceptions import (
    ConfigError,
    InvalidEntryError,
    InvalidQueryError,
    InvalidTypeError,
    NotInitialisedError,
    StorageError,
)

__all__ = ["ReconcileResult", "TwinLog"]

_instances: weakref.WeakSet[TwinLog] = weakref.WeakSet()


def _reset_in_child() -> None:
    for twin in list(_instances):
        twin._mutex = threading.Lock()
        twin._queue_guard = threading.Lock()
        twin._queue = []


os.register_at_fork(after_in_child=_reset_in_child)


class TwinLog:
    """This node's side of the pair. Thread-safe; one instance per process is plenty.

    ``write()`` is the method of the invention: it appends the entry to the local log and, if the
    peer is reachable, first drains both caches and then appends to the peer's log; if not, it
    appends the entry to the local cache. It returns only when the entry is durable locally and
    either on the peer or in the cache, and it never fails because of the peer.

    ``link`` says how this node reaches the peer's directory without touching it; the default
    needs ``peer_dir`` to be a mount point (``require_mount``). ``twinlog.testing`` passes its
    own, to run a pair without mounts.
    """

    def __init__(
        self, config: Config, *, clock: HybridClock | None = None, link: PeerLink | None = None
    ) -> None:
        if not isinstance(config, Config):
            raise ConfigError(f"TwinLog needs a twinlog.Config, got {type(config).__name__}")
        self.config = config
        self._mutex = threading.Lock()
        self._queue_guard = threading.Lock()
        self._queue: list[Pending] = []
        local_ops = DirOps(
            os.fspath(config.log_dir), lock_kind="ofd", keep_open=frozenset({LOG_FILE, CACHE_FILE})
        )
        self._local_ops = local_ops
        self._init_local_dir()
        link = link or MountLink(config.peer_dir, require_mount=config.require_mount)
        self._sides = Sides.open(config, local_ops, link, clock or HybridClock())
        self._stats = Stats()
        self.group_stats = self._stats.group
        self._election: Election | None = None
        if config.group_commit:
            # Named after the directory we opened (its dev and inode), not its path.
            name = socket_name(local_ops.dev_ino())
            self._election = Election(self._sides, self._stats, name, self._take_queue)
        _instances.add(self)

    @classmethod
    def init(cls, config: Config) -> TwinLog:
        """Create ``log_dir`` if it is missing (what ``twinlog init`` does), then open it.

        The only way a log directory comes into being: ``TwinLog()`` refuses a missing one,
        which usually means the disk that holds it is not mounted. A new, empty directory gets
        this node's history back from the peer at the first contact (``reconcile()``).
        """
        try:
            config.log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                exc.errno, f"cannot initialise log_dir {config.log_dir}: {exc.strerror}"
            ) from exc
        return cls(config)

    def _init_local_dir(self) -> None:
        cfg = self.config
        if not cfg.log_dir.is_dir():
            raise NotInitialisedError(
                f"log_dir {cfg.log_dir} does not exist: run 'twinlog init' to create it, or "
                "mount the disk that holds it"
            )
        try:
            marker = cfg.log_dir / MARKER_FILE
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(cfg.node + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            owner = marker.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StorageError(
                exc.errno, f"cannot initialise log_dir {cfg.log_dir}: {exc.strerror}"
            ) from exc
        if owner != cfg.node:
            raise ConfigError(
                f"log_dir {cfg.log_dir} belongs to node {owner!r} (see {marker}), not {cfg.node!r}"
            )
        reason = self._local_ops.open_dir(cfg.node, None, True)
        if reason != "ok":  # pragma: no cover - we just wrote the marker
            raise ConfigError(f"log_dir {cfg.log_dir}: {reason}")

    def close(self) -> None:
        """Stop the peer worker. The instance must not be used afterwards."""
        with self._mutex:
            self._sides.close()

    def __enter__(self) -> TwinLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------
    def write(self, msg: str, *, key: str | None = None, **fields: Any) -> Entry:
        """Log ``msg`` with optional extra JSON-serialisable fields; return the durable entry.

        ``level`` is a level name or syslog severity 0-7, stored by name (INFO when not given).
        ``key`` is an idempotency key: if this node logged an entry with it among its last
        ``dedupe_window`` entries, that entry is returned and nothing new is logged.

        Entries written concurrently, by threads of this process or by other processes of this
        node, share one lock hold and one fsync per file (group commit, see ``_election.py``).
        """
        fields_json, stored = check_entry(msg, fields, self.config.max_message_bytes, key)
        return self._submit([Pending(msg, fields_json, stored)])[0]

    def write_many(
        self,
        items: Iterable[
            str | tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str | None]
        ],
    ) -> list[Entry]:
        """Log several entries in one commit; return them, durable, in order (new ones with
        their ids in order, without gaps between them).

        Each item is a message, a ``(msg, fields)`` pair or a ``(msg, fields, key)`` triple
        (``key`` as in :meth:`write`: an item whose key is logged already gets that entry).
        The promise is ``write()``'s for every entry, and so are the errors; every item is
        checked before anything is written, and one bad item rejects the whole batch (the
        error names its index).
        """
        pending = []
        for index, item in enumerate(items):
            fields: Mapping[str, Any]
            key: object = None
            if isinstance(item, str):
                msg, fields = item, {}
            elif isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[1], Mapping):
                msg, fields = item[0], item[1]
                key = item[2] if len(item) == 3 else None
            else:
                raise InvalidTypeError(
                    f"item {index}: expected a message, a (msg, fields) pair or a "
                    f"(msg, fields, key) triple, got {type(item).__name__}"
                )
            try:
                fields_json, stored = check_entry(msg, fields, self.config.max_message_bytes, key)
            except (InvalidEntryError, InvalidTypeError) as exc:
                raise type(exc)(f"item {index}: {exc}") from None
            pending.append(Pending(msg, fields_json, stored))
        return self._submit(pending)

    def _submit(self, pending: list[Pending]) -> list[Entry]:
        """Queue checked entries, side by side, and commit them (or wait for the thread that
        commits them with its own); raise the first error any of them got."""
        if not pending:
            return []
        with self._queue_guard:
            self._queue.extend(pending)
        with self._mutex:
            if any(p.entry is None and p.error is None for p in pending):
                batch = self._take_queue()
                if self._election is None:
                    Commit(self._sides, self._stats, batch).run()
                else:
                    self._election.commit(batch)
        for p in pending:
            if p.error is not None:
                raise p.error
        return [p.entry for p in pending if p.entry is not None]

    def _take_queue(self) -> list[Pending]:
        with self._queue_guard:
            batch, self._queue = self._queue, []
        return batch

    def reconcile(self) -> ReconcileResult:
        """Steps 4A and 4B without a new entry: deliver whatever either side has not delivered."""
        with self._mutex:
            result = Commit(self._sides, self._stats, []).run()
            if result.peer_reachable:
                record_sync(self._local_ops)  # both drains done under both locks: complete
            witness = None
            if result.peer_reachable and self.config.witness:
                sides = self._sides
                witness = _witness.due(
                    sides.local, self._local_ops, sides.peer.state, sides.peer.node
                )
        if witness is not None:
            self._submit([Pending(*witness)])
            _witness.remember(self._local_ops, self.config.peer, witness[2][WITNESS_FIELD]["seq"])
        return result

    def rotate(self) -> ReconcileResult:
        """Reconcile, then make the active log a segment and apply retention.

        Retention (``retain_segments``, ``retain_days``) deletes old segments only while the
        peer is reachable, and never one holding an entry of ours the peer lacks.
        """
        with self._mutex:
            return Commit(self._sides, self._stats, [], rotate=True).run()

    # -- reading ------------------------------------------------------------------------
    def read(
        self,
        *,
        since: TimeBound | None = None,
        until: TimeBound | None = None,
        level: str | None = None,
        node: str | None = None,
        grep: str | re.Pattern[str] | None = None,
        fields: Mapping[str, Any] | None = None,
        last: int | None = None,
    ) -> Iterator[Entry]:
        """Every entry of both nodes in this node's log, once each, in the merged order.

        Reads only local files; identical on both nodes once they have converged. Filters, all
        of which must hold: ``since <= ts < until`` (a timezone-aware datetime, RFC 3339 text or
        a duration back from now such as ``"15m"``), ``level`` and more severe (no level counts
        as INFO), origin ``node``, ``grep`` (a regular expression searched in ``msg``) and
        ``fields`` (each key present with that value); ``last``: only the last N of those.
        A bad filter raises InvalidQueryError.

        A time window, or ``last`` alone, reads only the parts of the log it needs (the
        segment indexes, see ``_seek.py``), not the log from its start.
        """
        query = Query.build(
            since=since, until=until, level=level, node=node, grep=grep, fields=fields
        )
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise InvalidQueryError(f"last must be a whole number >= 0, got {last!r}")
        return _inspect.read(self.config, query, last)

    def status(self) -> dict[str, Any]:
        """Reachability (and why not), what waits in each cache, the last sequence numbers."""
        with self._mutex:
            return _inspect.status(self._sides)

    def repair(self) -> RepairResult:
        """Resolve a history conflict in this node's own entries (``twinlog repair``): the
        peer's copy of our history wins, our entries under ids it holds differently are
        re-logged after it as new entries (``replaces`` names the old id), and the files that
        held them move whole into ``log_dir/twinlog.repaired.<time>/``. Needs the peer.

        Never automatic: a conflict means both nodes acknowledged different entries under one
        id, and only an operator can say that re-logging ours is right.
        """
        with self._mutex:
            return repair(self._sides)

    def verify(self, *, deep: bool = False, full: bool = False) -> VerifyResult:
        """Compare this node's log with the peer's, by entry id (over the retained window),
        and their chain heads. ``deep``: also re-check every link of every chain and every
        witness on both nodes; each break is in ``broken`` (docs/security.md). A deep check
        starts where the last one without a break ended (``twinlog.verified``); ``full``:
        from the start of both logs."""
        with self._mutex:
            return _inspect.verify(self._sides, deep=deep or full, full=full)

    # -- introspection for tests and the CLI --------------------------------------------
    @property
    def last_reason(self) -> str:
        """Why the last write or reconcile did (``"ok"``) or did not reach the peer."""
        return self._sides.reach.last_reason

    def peer_worker_stats(self) -> Mapping[str, int]:
        """Peer workers started, killed and stuck so far; writes that reached the peer in one
        round trip (``one_trip``), and those that tried and found something to drain
        (``drained_after``)."""
        remote = self._sides.reach.remote
        return {
            "spawned": remote.spawned,
            "killed": remote.killed,
            "stuck": len(remote.stuck_pids),
            **self._stats.trips,
        }
