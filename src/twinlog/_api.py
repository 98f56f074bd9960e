"""The public facade: :class:`TwinLog`, the method's write path, reconcile, read, status, verify."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twinlog import _failpoints
from twinlog._dedupe import KeyWindow, assign, entry_of, fresh_items, requests_of
from twinlog._delivery import last_sync, oldest_undelivered, record_sync, ts_seconds
from twinlog._fileops import CACHE_FILE, CHUNK, LOG_FILE, MARKER_FILE, READ_ONLY_ERRNOS, DirOps
from twinlog._group import Follower, Leadership, follow, socket_name
from twinlog._history import Conflict, find_conflict, read_conflicts, record_conflicts
from twinlog._locks import LOCK_FILE
from twinlog._peer import RemoteOps
from twinlog._query import Query, TimeBound
from twinlog._read import (
    Seeker,
    VerifyResult,
    compare,
    last_entries,
    merged_entries,
    origin_lines,
    pinned_snapshot,
    snapshot_files,
)
from twinlog._repair import (
    RepairResult,
    finish_with_peer,
    pending_origin,
    rebuild,
    roll_forward,
    switch,
)
from twinlog._store import LogStore
from twinlog._sync import transfer
from twinlog._worker import RemoteDir
from twinlog.clock import HybridClock
from twinlog.config import Config
from twinlog.entry import Entry, check_entry, encode_entry, format_ts, id_prefix
from twinlog.exceptions import (
    ConfigError,
    InvalidEntryError,
    InvalidQueryError,
    InvalidTypeError,
    LockTimeoutError,
    NotInitialisedError,
    PeerError,
    StorageError,
)
from twinlog.probe import REASONS, MountTable, StuckRegistry

__all__ = ["ReconcileResult", "TwinLog"]

_MOUNTS = MountTable()
_EXTRA_ROUNDS = 1  # group commits a leader runs for others after its own
_CONTENDED_HOLD = 1.0  # seconds a process elects (no uncontended commits) after company
# After a one-round-trip write timed out, writes look before they append for this long: that
# round trip must answer within probe_timeout, fsync included, and a slow (not dead) peer's
# fsync may take longer; the two-round-trip write gives its append io_timeout.
_SETTLED_PAUSE = 60.0
_instances: weakref.WeakSet[TwinLog] = weakref.WeakSet()
_T = TypeVar("_T")


def _reset_in_child() -> None:
    for twin in list(_instances):
        twin._mutex = threading.Lock()
        twin._queue_guard = threading.Lock()
        twin._queue = []


os.register_at_fork(after_in_child=_reset_in_child)


@dataclass
class _Pending:
    msg: str
    fields_json: bytes
    fields: dict[str, Any]
    entry: Entry | None = None
    error: BaseException | None = None
    # (seq, ts) a group-commit leader gave it before it died: written if seq is in our log
    orphan: tuple[int, str] | None = None


@dataclass
class _Staged:
    """A commit's entries, assigned and appended to our log, before they reach the peer."""

    lines: list[bytes] = field(default_factory=list)
    mark: tuple[str, int, str] | None = None  # (node, seq, ts) of the last line
    own: list[tuple[_Pending, int, str]] = field(default_factory=list)  # ours, not followers'


@dataclass
class ReconcileResult:
    """What one reconcile (or the drain part of a write) moved, and whether the peer answered."""

    peer_reachable: bool
    reason: str
    pushed: int = 0
    pulled: int = 0
    rotated: str | None = None
    expired: list[str] = field(default_factory=list)
    #: Entries of this node's own that it took back from the peer (it had lost them).
    recovered: int = 0
    #: History conflicts known after this commit (see ``TwinLog.repair``), by origin.
    conflicts: list[Conflict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer_reachable": self.peer_reachable,
            "reason": self.reason,
            "pushed": self.pushed,
            "pulled": self.pulled,
            "recovered": self.recovered,
            "rotated": self.rotated,
            "expired": list(self.expired),
            "conflicts": [c.to_dict() for c in self.conflicts],
        }


class TwinLog:
    """This node's side of the pair. Thread-safe; one instance per process is plenty.

    ``write()`` is the method of the invention: it appends the entry to the local log and, if the
    peer is reachable, first drains both caches and then appends to the peer's log; if not, it
    appends the entry to the local cache. It returns only when the entry is durable locally and
    either on the peer or in the cache, and it never fails because of the peer.
    """

    def __init__(self, config: Config, *, clock: HybridClock | None = None) -> None:
        if not isinstance(config, Config):
            raise ConfigError(f"TwinLog needs a twinlog.Config, got {type(config).__name__}")
        self.config = config
        self._clock = clock or HybridClock()
        self._mutex = threading.Lock()
        self._queue_guard = threading.Lock()
        self._queue: list[_Pending] = []
        self._local_ops = DirOps(
            os.fspath(config.log_dir), lock_kind="ofd", keep_open=frozenset({LOG_FILE, CACHE_FILE})
        )
        self._init_local_dir()
        self._local = LogStore(self._local_ops, config.node, fsync=config.fsync)
        self._stuck = StuckRegistry(config.log_dir)
        self._remote = RemoteDir(os.fspath(config.peer_dir), on_stuck=self._stuck.add)
        self._peer_ops = RemoteOps(self._remote, config.io_timeout, config.lock_timeout)
        self._peer = LogStore(self._peer_ops, config.peer, fsync=config.fsync)
        self._last_reason = "ok"
        self._backoff_until = 0.0
        # (worker spawn count, mount table generation) of the last identity check that passed:
        # while neither changes, the worker's open directory is still the checked peer's.
        self._checked: tuple[int, int] | None = None
        self._contended_until = 0.0  # see _commit_uncontended
        self._settled_paused_until = 0.0  # see _SETTLED_PAUSE
        self._trips = {"one_trip": 0, "drained_after": 0}  # see peer_worker_stats
        # History conflicts known, by origin (recorded in our directory, or found), and the
        # (local, peer) store loads when both histories were last compared: they need comparing
        # again only when a log was read afresh (a new process, a replaced or rolled-back log).
        self._conflicts: dict[str, Conflict] = {}
        self._history_seen: tuple[int, int] | None = None
        self._local_loads_seen = -1
        # Named after the directory we opened (its dev and inode), not its path.
        self._group_name = socket_name(self._local_ops.dev_ino()) if config.group_commit else None
        self._keys = KeyWindow(config.dedupe_window)  # idempotency keys (see _dedupe.py)
        self.group_stats = {
            "uncontended": 0,
            "led": 0,
            "followed": 0,
            "followers_served": 0,
            "orphans": 0,
        }
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
            self._remote.close()
            self._local_ops.close()

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
        node, share one lock hold and one fsync per file (group commit, see ``_group.py``).
        """
        fields_json, stored = check_entry(msg, fields, self.config.max_message_bytes, key)
        return self._submit([_Pending(msg, fields_json, stored)])[0]

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
            pending.append(_Pending(msg, fields_json, stored))
        return self._submit(pending)

    def _submit(self, pending: list[_Pending]) -> list[Entry]:
        """Queue checked entries, side by side, and commit them (or wait for the thread that
        commits them with its own); raise the first error any of them got."""
        if not pending:
            return []
        with self._queue_guard:
            self._queue.extend(pending)
        with self._mutex:
            if any(p.entry is None and p.error is None for p in pending):
                self._commit_group(self._take_queue())
        for p in pending:
            if p.error is not None:
                raise p.error
        return [p.entry for p in pending if p.entry is not None]

    def _take_queue(self) -> list[_Pending]:
        with self._queue_guard:
            batch, self._queue = self._queue, []
        return batch

    def _commit_group(self, batch: list[_Pending]) -> None:
        """Commit ``batch``: as the node's group-commit leader (for every process waiting too),
        or as a follower of the process that leads now."""
        name = self._group_name
        if name is None:
            self._commit(batch)
            return
        if self._commit_uncontended(batch):
            return
        give_up = time.monotonic() + self.config.lock_timeout
        items = [(p.msg, p.fields_json) for p in batch]
        # With company about, someone probably leads already: join before trying to lead
        # (a connect instead of a bind that fails, for most writers of a busy node).
        join_first = time.monotonic() < self._contended_until
        while True:
            if not join_first:
                lead = Leadership.try_take(name)
                if lead is not None:
                    self.group_stats["led"] += 1
                    try:
                        self._lead(lead, batch)
                    finally:
                        lead.close()
                    return
            outcome = follow(name, items, max(0.0, give_up - time.monotonic()))
            if outcome.kind == "retry" and join_first:
                join_first = False  # nobody leads: try to
                continue
            self._met_company()
            if outcome.kind == "retry":
                if time.monotonic() < give_up:
                    time.sleep(0.0005)  # the leader is binding or leaving: try again
                    continue
                outcome.kind = "timeout"
            self.group_stats["followed"] += 1
            if outcome.kind == "done":
                self._learn(outcome.peer)
                node = self.config.node
                for p, assigned in zip(batch, outcome.assigned, strict=True):
                    p.entry = entry_of(node, assigned, p.msg, p.fields)  # dedupe: maybe known
            elif outcome.kind == "orphan":
                self.group_stats["orphans"] += 1
                for p, assigned in zip(batch, outcome.assigned, strict=True):
                    p.orphan = (assigned[0], assigned[1])  # dedupe: a known one's (seq, ts)
                self._commit(batch)
            else:
                kind, text = outcome.error or ("lock_timeout", "")
                error: BaseException
                if outcome.kind == "timeout" or kind == "lock_timeout":
                    error = LockTimeoutError(
                        text or f"no commit within lock_timeout ({self.config.lock_timeout:.3g}s)"
                    )
                else:
                    error = StorageError(text)
                for p in batch:
                    p.error = error
            return

    def _commit_uncontended(self, batch: list[_Pending]) -> bool:
        """Commit ``batch`` alone if the node's lock is free right now: nobody is committing or
        waiting to (a leader waiting for the lock holds the election socket, so another process
        that finds the lock busy joins it). Skips the election when there is nobody to group
        with. After any sign of company (the lock was busy, we followed, we led others) this
        process elects for a while: writers that just got their answers would otherwise race
        for the free lock one by one instead of grouping. Not when the peer's lock comes first
        in the lock order and the peer will be locked: holding ours while waiting for the
        peer's could deadlock with the peer's writer.
        """
        cfg = self.config
        if time.monotonic() < self._contended_until:
            return False
        reason = self._precheck() or self._backoff_reason()
        if reason is None and cfg.peer < cfg.node:
            return False
        if not self._local_ops.try_lock():
            self._met_company()
            return False
        self.group_stats["uncontended"] += 1
        self._commit(batch, locked=True, reason=reason)
        return True

    def _met_company(self) -> None:
        """Other writers of this node are about (see :meth:`_commit_uncontended`)."""
        self._contended_until = time.monotonic() + _CONTENDED_HOLD

    def _learn(self, peer: tuple[str, float] | None) -> None:
        """Take over the leader's view of the peer: its last reason and its back-off."""
        if peer is None:
            return
        reason, backoff_until = peer
        self._last_reason = reason
        if reason == "timeout":
            self._backoff_until = max(self._backoff_until, backoff_until)
        elif reason == "ok":
            self._backoff_until = 0.0

    def _lead(self, lead: Leadership, batch: list[_Pending]) -> None:
        """Commit our batch, then once more for whoever queued meanwhile (followers, and threads
        of this process). Then leave: our own write() is not held hostage by a steady stream of
        others; those still waiting see us go and elect the next leader among themselves."""
        self._commit(batch, lead=lead)
        for _ in range(_EXTRA_ROUNDS):
            if not (lead.pending() or self._queue):
                break
            with contextlib.suppress(Exception):  # reported to the waiting writers, not to us
                self._commit(self._take_queue(), lead=lead)

    def reconcile(self) -> ReconcileResult:
        """Steps 4A and 4B without a new entry: deliver whatever either side has not delivered."""
        with self._mutex:
            result = self._commit([])
            if result.peer_reachable:
                record_sync(self._local_ops)  # both drains done under both locks: complete
            return result

    def rotate(self) -> ReconcileResult:
        """Reconcile, then make the active log a segment and apply retention.

        Retention (``retain_segments``, ``retain_days``) deletes old segments only while the
        peer is reachable, and never one holding an entry of ours the peer lacks.
        """
        with self._mutex:
            return self._commit([], rotate=True)

    def _commit(
        self,
        batch: list[_Pending],
        *,
        rotate: bool = False,
        lead: Leadership | None = None,
        locked: bool = False,
        reason: str | None = None,
    ) -> ReconcileResult:
        """One commit under both locks (ours only if the peer is unreachable). ``locked``: the
        caller already holds our lock, and ``reason`` is why the peer is not to be reached
        (None: try it), decided before the lock was taken; they go together."""
        cfg = self.config
        followers: list[Follower] = []  # other processes' requests this commit takes
        result = ReconcileResult(peer_reachable=False, reason="ok")
        # A write does not knock on a peer that just timed out (its callers would each wait out
        # the timeout, holding our lock, and our peer's writers with them); reconcile does.
        writing = bool(batch) or lead is not None
        if not locked:
            reason = self._precheck() or (self._backoff_reason() if writing else None)
        peer_ok = reason is None
        # With nothing to drain, a write reaches the peer once, after our append (_settled).
        # Not a group-commit leader's: it takes its followers after the peer's lock stage, and
        # those that arrive meanwhile join (its groups were half as big the other way round).
        settled = writing and peer_ok and not rotate and lead is None and self._settled_possible()
        held_local = locked
        held_peer = False
        look: tuple[tuple[int, int, bytes] | None, bool] = (None, False)
        try:
            # One global lock order (by node name) so two nodes writing at once never deadlock.
            for side in sorted((cfg.node, cfg.peer)):
                if side == cfg.node:
                    if not held_local:
                        self._lock_local()
                        held_local = True
                elif peer_ok and not settled:
                    try:
                        look = self._connect_and_look()
                        held_peer = True
                    except PeerError as exc:
                        peer_ok, reason = False, exc.reason
            if _failpoints.ACTIVE:
                _failpoints.hit("after_lock")
            self._refresh_local()
            if settled and not self._settled_here():
                # Something to drain: lock and look now (our lock comes first in the order).
                settled = False
                try:
                    look = self._connect_and_look()
                    held_peer = True
                except PeerError as exc:
                    peer_ok, reason = False, exc.reason
            if peer_ok and not settled:
                peer_ok, reason = self._sync_peer(result, look)
            if writing:
                if lead is not None:
                    followers = lead.collect()
                staged = self._append_local(batch, followers)
                if settled:
                    try:
                        look_now = self._deliver_settled(staged)
                        if look_now is None:
                            self._trips["one_trip"] += 1
                        else:  # it locked and looked: the drains deliver ours
                            self._trips["drained_after"] += 1
                            held_peer = True
                            peer_ok, reason = self._sync_peer(result, look_now)
                    except PeerError as exc:
                        peer_ok, reason = False, exc.reason
                        if exc.reason == "timeout":
                            self._settled_paused_until = time.monotonic() + _SETTLED_PAUSE
                elif peer_ok and staged.lines and cfg.node not in self._conflicts:
                    peer_ok, released = self._deliver(staged)
                    reason = None if peer_ok else "io_error"
                    held_peer = held_peer and not released
                if not peer_ok or cfg.node in self._conflicts:
                    self._cache(staged)  # a history conflict delivers nothing of ours
                self._finish(staged)
            result.peer_reachable = peer_ok
            result.reason = "ok" if peer_ok else (reason or "io_error")
            result.conflicts = [self._conflicts[o] for o in sorted(self._conflicts)]
            self._rotate_and_expire(result, peer_ok and held_peer, force=rotate)
            self._checkpoints(peer_ok and held_peer)
        except BaseException as exc:
            for pending in batch:
                if pending.entry is None:
                    pending.error = exc
            for follower in followers:
                follower.answer(exc)
            followers = []
            if not writing:
                raise
        finally:
            if held_peer:
                # A failing unlock means the worker was killed, and its lock went with it.
                with contextlib.suppress(PeerError):
                    self._peer_ops.release()
            if held_local:
                self._local_ops.unlock()
        self._last_reason = result.reason
        if not result.peer_reachable:
            self._checked = None  # whatever went wrong, check the directory again next time
        if result.reason == "timeout" and not self._backoff_reason():
            self._backoff_until = time.monotonic() + cfg.probe_timeout + cfg.io_timeout
        elif result.peer_reachable:
            self._backoff_until = 0.0
            # The cache is drained (and unlinked, maybe by the peer): don't hold its file open.
            self._local_ops.forget(CACHE_FILE)
        for follower in followers:
            # What we learnt about the peer goes with the answer: a follower that leads next
            # does not knock on a peer that just timed out (and reports the right reason).
            follower.answer(None, (result.reason, self._backoff_until))
        return result

    def _settled_possible(self) -> bool:
        """Whether this write may reach the peer in one round trip after our append
        (:meth:`_deliver_settled`) instead of locking and looking first: our lock comes first
        in the lock order (the peer's is taken while we hold ours), this worker has checked
        the peer's identity under the current mount table, and we know the peer's log from the
        last commit. Not for a while after such a write timed out (see ``_SETTLED_PAUSE``)."""
        cfg = self.config
        state = self._peer.state
        return (
            cfg.node < cfg.peer
            and state is not None
            and state.ino is not None
            and not state.torn
            and self._identity_checked()
            and time.monotonic() >= self._settled_paused_until
        )

    def _identity_checked(self) -> bool:
        """Whether the worker alive now checked the peer's identity under the current mount
        table (so its open directory is still the peer's; needs ``require_mount``)."""
        remote = self._remote
        return (
            self.config.require_mount
            and remote.alive
            and self._checked == (remote.spawned, _MOUNTS.generation)
        )

    def _settled_here(self) -> bool:
        """After our refresh: no cache of ours, and when we last saw the peer's log we had every
        entry of the peer's it held and it had none of ours we lack (the worker checks what
        was added since: :meth:`_deliver_settled`)."""
        cfg = self.config
        local = self._local.state
        peer = self._peer.state
        assert local is not None
        assert peer is not None
        return (
            peer.hwm.get(cfg.node, 0) <= local.hwm.get(cfg.node, 0)
            and peer.hwm.get(cfg.peer, 0) <= local.hwm.get(cfg.peer, 0)
            and not self._conflicts
            and self._history_seen == (self._local.loads, self._peer.loads)
            and not self._local.cache_exists()
        )

    def _sync_peer(
        self, result: ReconcileResult, look: tuple[tuple[int, int, bytes] | None, bool]
    ) -> tuple[bool, str | None]:
        """Steps 4A and 4B under both locks, from what the peer's lock stage saw (``look``:
        its log's tail and whether it has a cache). Whether the peer is still reachable, and
        why not."""
        cfg = self.config
        try:
            self._peer.refresh(repair=True, prefetched=look[0])
            self._compare_histories()
            if cfg.node not in self._conflicts:
                result.recovered += self._recover_own()
                result.pushed += self._drain_to_peer()
            if cfg.peer not in self._conflicts:
                result.pulled += self._drain_from_peer(look[1])
                result.pushed += self._restore_peers()
        except PeerError as exc:
            return False, exc.reason
        return True, None

    def _compare_histories(self) -> None:
        """Whether each origin's history is the same in both logs (under both locks, after
        both refreshes), where it may have changed since we last looked: on first contact,
        and after either log was read afresh. A conflict found is recorded in our directory,
        with those the peer recorded in its own; recorded ones stay until ``repair()``."""
        cfg = self.config
        seen = (self._local.loads, self._peer.loads)
        if seen == self._history_seen:
            return
        if pending_origin(self._local_ops) is not None:
            # A repair switched our log and crashed, or lost the peer, before this.
            finish_with_peer(self._local, self._local_ops, self._peer)
        mine = read_conflicts(self._local)
        known = self._with_found_conflicts({**read_conflicts(self._peer), **mine})
        if known.keys() - mine.keys():
            self._append_here(
                lambda: record_conflicts(self._local, known),
                f"the conflict record in {cfg.log_dir}",
                "after_conflict_record",
            )
        self._conflicts = known
        self._history_seen = seen

    def _with_found_conflicts(self, known: dict[str, Conflict]) -> dict[str, Conflict]:
        """``known``, and what comparing both (refreshed) logs finds for each other origin."""
        cfg = self.config
        found = dict(known)
        for origin, own, other in (
            (cfg.node, self._local, self._peer),
            (cfg.peer, self._peer, self._local),
        ):
            if origin not in found:
                conflict = find_conflict(own, other, origin, cfg.node)
                if conflict is not None:
                    found[origin] = conflict
        return found

    def _recover_own(self) -> int:
        """Take back into our log the entries of ours the peer holds and we do not (our log was
        lost or rolled back), before any new seq is allocated. Their ids are the peer's."""
        cfg = self.config
        moved = self._transfer(self._peer, self._local, cfg.node, "take back our entries")
        if moved and _failpoints.ACTIVE:
            _failpoints.hit("after_recover")
        return moved

    def _restore_peers(self) -> int:
        """The peer's entries we hold and its log lacks (it lost or rolled back its log) back
        into its log: whichever node makes contact first gives a node its history back."""
        cfg = self.config
        return self._transfer(self._local, self._peer, cfg.peer, "read the local log")

    def _connect_and_look(self) -> tuple[tuple[int, int, bytes] | None, bool]:
        """Lock the peer and look at its log's tail and cache, checking its identity first
        unless this very worker checked it under the current mount table."""
        cfg = self.config
        remote = self._remote
        recheck = not self._identity_checked()
        self._checked = None
        result = self._peer_ops.connect_and_look(
            cfg.peer,
            self._local_ops.dev_ino(),
            cfg.probe_timeout,
            self._peer.read_offset,
            check_identity=recheck,
        )
        if cfg.require_mount:
            self._checked = (remote.spawned, _MOUNTS.generation)
        return result

    def _backoff_reason(self) -> str | None:
        """While backing off from a peer that timed out, why (``"timeout"``); else None."""
        return "timeout" if time.monotonic() < self._backoff_until else None

    def _lock_local(self) -> None:
        try:
            self._local_ops.lock(self.config.lock_timeout)
        except LockTimeoutError:
            raise
        except OSError as exc:
            where = self.config.log_dir / LOCK_FILE
            why = exc.strerror or str(exc)
            if exc.errno in READ_ONLY_ERRNOS:
                why += " (reading works; writing needs log_dir writable by this user)"
            raise StorageError(exc.errno, f"cannot lock {where} to write: {why}") from exc

    def _precheck(self) -> str | None:
        """The peer checks that need no peer I/O; a reason when the peer is unreachable."""
        if self.config.require_mount and not _MOUNTS.is_mount(self.config.peer_dir):
            return "not_mounted"
        if self._remote.stuck_pids or self._stuck.alive():
            return "stuck"
        return None

    def _refresh_local(self, *, repair: bool = True) -> None:
        """Learn what our log holds (cutting a torn tail only when ``repair``, under the lock)."""
        try:
            self._local.refresh(repair=repair)
            fresh = self._local.loads != self._local_loads_seen
            # Read afresh, under our lock: finish (or drop) a repair that crashed first.
            if repair and fresh and roll_forward(self._local, self._local_ops):
                self._local.refresh(repair=True)
            if self._local.loads != self._local_loads_seen:
                # Read afresh (a new process, a replaced log, a repair by another process):
                # what is recorded about conflicts may have changed with it.
                self._conflicts = read_conflicts(self._local)
                self._local_loads_seen = self._local.loads
        except OSError as exc:
            raise StorageError(
                exc.errno, f"cannot read the local log in {self.config.log_dir}: {exc.strerror}"
            ) from exc

    @staticmethod
    def _transfer(src: LogStore, dst: LogStore, origin: str, local_part: str) -> int:
        """:func:`transfer`, with our own directory's failures (``local_part`` says what it
        does there) as StorageError; the peer's stay PeerError."""
        try:
            return transfer(src, dst, origin)
        except PeerError:
            raise
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot {local_part}: {exc}") from exc

    def _drain_to_peer(self) -> int:
        """4A: the local cache (and anything a crash left undelivered) to the peer's log."""
        moved = self._transfer(
            self._local, self._peer, self.config.node, "read the local cache or log"
        )
        if _failpoints.ACTIVE:
            _failpoints.hit("after_push_append")
        if self._local.cache_exists():
            self._local.remove_cache()
            if _failpoints.ACTIVE:
                _failpoints.hit("after_local_cache_remove")
        return moved

    def _drain_from_peer(self, peer_has_cache: bool) -> int:
        """4B: the peer's cache (and anything it left undelivered) to the local log."""
        moved = self._transfer(self._peer, self._local, self.config.peer, "append to the local log")
        if _failpoints.ACTIVE:
            _failpoints.hit("after_pull_append")
        if peer_has_cache:
            self._peer.remove_cache()
            if _failpoints.ACTIVE:
                _failpoints.hit("after_peer_cache_remove")
        return moved

    def _next_seq(self) -> int:
        """The next seq of ours: after our log's mark, and while our history conflicts with the
        peer's, after every seq of ours either node holds (no id is ever given twice)."""
        node = self.config.node
        state = self._local.state
        assert state is not None
        mark = state.hwm.get(node, 0)
        conflict = self._conflicts.get(node)
        if conflict is not None:
            peer = self._peer.state
            mark = max(mark, conflict.highest_seq, peer.hwm.get(node, 0) if peer else 0)
        return mark + 1

    def _append_local(self, batch: list[_Pending], followers: list[Follower]) -> _Staged:
        """Step 5 (or 3's first half) for our entries and those of the group-commit
        ``followers`` (the list is cut down to those that took their assignment): assign their
        seqs and stamps and append them to our log."""
        cfg = self.config
        state = self._local.state
        assert state is not None
        self._settle_orphans(batch)
        fresh = [p for p in batch if p.entry is None]
        total = len(fresh) + sum(len(f.items) for f in followers)
        stamps = iter(self._clock.next_after(state.max_ts or None, total) if total else ())
        next_seq = self._next_seq()
        # Idempotency keys, checked here, under the lock, where seqs are assigned (_dedupe.py).
        keys = self._keys.open(self._local, cfg.node, requests_of(fresh, followers))
        staged = _Staged()
        lines = staged.lines
        last_ts = ""  # of the last line in ``lines``
        for pending in fresh:
            if keys is not None and keys.answer(pending, staged.own):
                continue  # its key is logged already: answered with that entry
            last_ts = next(stamps)
            staged.own.append((pending, next_seq, last_ts))
            lines.append(
                encode_entry(cfg.node, next_seq, last_ts, pending.msg, pending.fields_json)
            )
            if keys is not None:
                keys.assign(pending.fields_json, next_seq, last_ts, lines[-1], pending)
            next_seq += 1
        taken: list[Follower] = []
        for follower in followers:
            # Assigned before anything is appended: a follower that gave up is left out.
            # An item whose key is logged already is assigned that entry, and adds no line.
            assigned = assign(keys, follower.items, next_seq, stamps)
            if not follower.assign(assigned):
                if keys is not None:
                    keys.undo()
                follower.sock.close()
                continue
            taken.append(follower)
            new = fresh_items(follower.items, assigned)
            next_seq += len(new)
            last_ts = new[-1][1][1] if new else last_ts
            lines += [
                encode_entry(cfg.node, seq, ts, msg, fields_json)
                for (msg, fields_json), (seq, ts) in new
            ]
        followers[:] = taken
        if taken:
            self.group_stats["followers_served"] += len(taken)
            self._met_company()
        if _failpoints.ACTIVE and taken:
            _failpoints.hit("after_assign")
        if lines:
            mark = staged.mark = (cfg.node, next_seq - 1, last_ts)
            self._append_here(
                lambda: self._local.append_lines(lines, one_write_per_line=True, mark=mark),
                f"the local log {cfg.log_dir}",
                "after_local_append",
            )
            if keys is not None:
                keys.appended(next_seq - 1)
        return staged

    @staticmethod
    def _append_here(append: Callable[[], None], what: str, failpoint: str) -> None:
        """An append to our own directory: its failure is a StorageError."""
        try:
            append()
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot append to {what}: {exc.strerror}") from exc
        if _failpoints.ACTIVE:
            _failpoints.hit(failpoint)

    def _deliver(self, staged: _Staged) -> tuple[bool, bool]:
        """Step 6 under both locks: append the staged lines to the peer's log. Whether they
        reached it, and whether that call also released the peer's lock (when nothing else
        needs it this round: the retention after a rotation, or a checkpoint of its log)."""
        release = not self._peer_needed_after(staged)
        try:
            self._peer.append_lines(
                staged.lines, one_write_per_line=True, release=release, mark=staged.mark
            )
        except PeerError:
            return False, False
        if _failpoints.ACTIVE:
            _failpoints.hit("after_peer_append")
        return True, release

    def _peer_needed_after(self, staged: _Staged) -> bool:
        """Whether this commit needs the peer's lock after appending ``staged`` there: for the
        retention after a rotation of our log, or to checkpoint the peer's."""
        state = self._local.state
        assert state is not None
        return state.offset >= self.config.rotate_bytes or self._peer.checkpoint_due(
            sum(map(len, staged.lines))
        )

    def _deliver_settled(
        self, staged: _Staged
    ) -> tuple[tuple[int, int, bytes] | None, bool] | None:
        """Steps 4 and 6 in one round trip, when :meth:`_settled_here` said there was nothing
        to drain when we last saw the peer: lock its log and, if nothing was added there since
        but its own entries we already hold and it has no cache, append ours and unlock (None).
        Otherwise it stays locked and this returns what it saw, for the drains (which deliver
        our lines from our log). Rotation or a checkpoint due: lock and look at once."""
        cfg = self.config
        if not staged.lines or self._peer_needed_after(staged):
            return self._connect_and_look()
        state = self._local.state
        peer = self._peer.state
        assert state is not None
        assert peer is not None
        assert staged.mark is not None
        # Since we last read the peer's log, our other processes may have added our entries
        # up to just before ours, and the peer's writers their own that we hold.
        added = (
            id_prefix(cfg.node),
            peer.hwm.get(cfg.node, 0) + 1,
            staged.mark[1] - len(staged.lines),
            id_prefix(cfg.peer),
            state.hwm.get(cfg.peer, 0),
        )
        look = self._peer.append_if_settled(staged.lines, staged.mark, added, cfg.probe_timeout)
        if look is None and _failpoints.ACTIVE:
            _failpoints.hit("after_peer_append")
        return look

    def _cache(self, staged: _Staged) -> None:
        """Step 3's second half: the staged lines to our cache (the peer did not get them)."""
        if staged.lines:
            self._append_here(
                lambda: self._local.append_cache(staged.lines),
                "the local cache",
                "after_cache_append",
            )

    def _finish(self, staged: _Staged) -> None:
        """Our own entries are durable: hand them to their write() calls."""
        node = self.config.node
        for pending, seq, ts in staged.own:
            pending.entry = Entry(
                id=f"{node}:{seq}",
                node=node,
                seq=seq,
                ts=ts,
                msg=pending.msg,
                fields=pending.fields,
            )

    def _settle_orphans(self, batch: list[_Pending]) -> None:
        """Entries a group-commit leader assigned and then died (or failed) over: those whose
        line is in our log were written, and are answered; the others get committed afresh.

        A written one is not cached again, even with the peer away: our log is the source of
        every drain (the cache only indexes it, and a drain fills a cache's gaps from the log),
        and appending it now could put it after a later seq in the cache."""
        node = self.config.node
        state = self._local.state
        assert state is not None
        mark = state.hwm.get(node, 0)
        for pending in batch:
            if pending.orphan is None:
                continue
            seq, ts = pending.orphan
            pending.orphan = None
            line = encode_entry(node, seq, ts, pending.msg, pending.fields_json)
            # Its seq in the log is not enough: once the leader was gone, another writer may
            # have taken that seq for its own entry. Only the very line counts.
            if seq <= mark and self._line_of(seq) == line:
                pending.entry = Entry(f"{node}:{seq}", node, seq, ts, pending.msg, pending.fields)

    def _line_of(self, seq: int) -> bytes | None:
        """Our own entry ``seq`` as it is in our log (found from the end: it is recent)."""
        return self._local.line_of(self.config.node, seq)

    def _rotate_and_expire(self, result: ReconcileResult, peer_ok: bool, *, force: bool) -> None:
        cfg = self.config
        state = self._local.state
        assert state is not None
        if force or state.offset >= cfg.rotate_bytes:
            try:
                result.rotated = self._local.rotate()
            except OSError as exc:
                if force:
                    raise StorageError(exc.errno, f"cannot rotate: {exc.strerror}") from exc
                return  # the next write tries again; the log is intact either way
        if peer_ok and (result.rotated or force):
            peer_state = self._peer.state
            assert peer_state is not None
            with contextlib.suppress(OSError):
                result.expired = self._local.expire(
                    delivered_own_seq=peer_state.hwm.get(cfg.node, 0),
                    retain_segments=cfg.retain_segments,
                    retain_days=cfg.retain_days,
                )

    def _checkpoints(self, peer_ok: bool) -> None:
        # A checkpoint only saves reading time; failing to write one loses nothing.
        with contextlib.suppress(OSError):
            self._local.checkpoint_if_due()
        if peer_ok:
            with contextlib.suppress(PeerError):
                self._peer.checkpoint_if_due()

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
        origins = [o for o in (self.config.node, self.config.peer) if query.node in (None, o)]
        dir_ops = DirOps(os.fspath(self.config.log_dir))
        dir_ops.open_dir(self.config.node, None, False)
        store = LogStore(dir_ops, self.config.node, fsync=False)
        pinned, files = pinned_snapshot(store, dir_ops.dir_fd)
        manifest = store.read_manifest()
        store.ops = pinned  # type: ignore[assignment]  # reading needs only read()
        seeker = Seeker(store, files, manifest)

        def entries() -> Iterator[Entry]:
            try:
                if last is not None and query.by_origin_only:
                    yield from last_entries(seeker, origins, last)
                    return
                plans = {o: seeker.window(o, query.since, query.until) for o in origins}
                found = merged_entries(store, files, origins, query.since, query.until, plans=plans)
                matching = (entry for entry in found if query.matches(entry))
                yield from matching if last is None else collections.deque(matching, last)
            finally:
                pinned.close()
                dir_ops.close()

        return entries()

    def status(self) -> dict[str, Any]:
        """Reachability (and why not), what waits in each cache, the last sequence numbers."""
        cfg = self.config
        with self._mutex:
            local = self._local
            self._refresh_local(repair=False)
            assert local.state is not None
            local_hwm = dict(local.state.hwm)
            from_peer: str | None = None
            info: dict[str, Any] = {
                "node": cfg.node,
                "peer": cfg.peer,
                "peer_reachable": False,
                "peer_reason": "ok",
                "peer_reason_text": "",
                "cache_entries": {"local": local.count_cache(), "peer": None},
                "last_seq": {
                    cfg.node: local_hwm.get(cfg.node, 0),
                    cfg.peer: local_hwm.get(cfg.peer, 0),
                },
                "peer_last_seq": None,
                "pending_to_peer": None,
                "pending_from_peer": None,
                # Entries of ours the peer holds and our log lost (a replaced or rolled-back
                # disk), and of the peer's that its log lost and ours holds: the next contact
                # gives each node its history back.
                "to_take_back": None,
                "to_give_back": None,
                "stuck_workers": self._remote.stuck_pids,
                "conflict": None,
                "conflicts": [],
                "in_sync": False,
            }
            conflicts = read_conflicts(local)
            reason = self._precheck()
            if reason is None:
                try:
                    self._peer_ops.check_identity(
                        cfg.peer, self._local_ops.dev_ino(), cfg.probe_timeout
                    )
                    peer_state = self._peer.refresh(repair=False)
                    peer_hwm = dict(peer_state.hwm)
                    info["cache_entries"]["peer"] = self._peer.count_cache()
                    info["peer_last_seq"] = {
                        cfg.node: peer_hwm.get(cfg.node, 0),
                        cfg.peer: peer_hwm.get(cfg.peer, 0),
                    }
                    ours = local_hwm.get(cfg.node, 0) - peer_hwm.get(cfg.node, 0)
                    theirs = peer_hwm.get(cfg.peer, 0) - local_hwm.get(cfg.peer, 0)
                    info["pending_to_peer"], info["to_take_back"] = max(ours, 0), max(-ours, 0)
                    info["pending_from_peer"], info["to_give_back"] = (
                        max(theirs, 0),
                        max(-theirs, 0),
                    )
                    conflicts = self._with_found_conflicts(
                        {**read_conflicts(self._peer), **conflicts}
                    )
                    info["peer_reachable"] = True
                    from_peer = oldest_undelivered(self._peer, cfg.peer, local_hwm.get(cfg.peer, 0))
                except PeerError as exc:
                    reason = exc.reason
                    info["peer_reason_text"] = exc.detail
            info["peer_reason"] = reason or "ok"
            info["peer_reason_text"] = info["peer_reason_text"] or REASONS.get(reason or "ok", "")
            ordered = sorted(conflicts.values(), key=lambda c: (c.origin != cfg.node, c.origin))
            info["conflicts"] = [c.to_dict() for c in ordered]
            info["conflict"] = info["conflicts"][0] if ordered else None
            info["in_sync"] = bool(
                not ordered
                and info["peer_reachable"]
                and info["pending_to_peer"] == 0
                and info["pending_from_peer"] == 0
                and info["to_take_back"] == 0
                and info["to_give_back"] == 0
                and not info["cache_entries"]["local"]
                and not info["cache_entries"]["peer"]
            )
            self._report_delivery(info, from_peer)
            return info

    def repair(self) -> RepairResult:
        """Resolve a history conflict in this node's own entries (``twinlog repair``): the
        peer's copy of our history wins, our entries under ids it holds differently are
        re-logged after it as new entries (``replaces`` names the old id), and the files that
        held them move whole into ``log_dir/twinlog.repaired.<time>/``. Needs the peer.

        Never automatic: a conflict means both nodes acknowledged different entries under one
        id, and only an operator can say that re-logging ours is right.
        """
        cfg = self.config
        with self._mutex:
            reason = self._precheck()
            if reason is not None:
                return RepairResult(False, reason)
            try:
                with self._both_locks() as look:
                    self._refresh_local()
                    self._peer.refresh(repair=True, prefetched=look[0])
                    self._history_seen = None  # compare afresh, whatever was seen before
                    self._compare_histories()
                    conflict = self._conflicts.get(cfg.node)
                    if conflict is None:
                        other = self._conflicts.get(cfg.peer)
                        if other is None:
                            return RepairResult(False, "no_conflict")
                        return RepairResult(False, "peer_history", other.origin, other.first_id)
                    local, ops = self._local, self._local_ops
                    result = self._storage(
                        lambda: rebuild(local, ops, self._peer, conflict, self._clock),
                        "write the repaired log",
                    )
                    self._storage(lambda: switch(local, ops), "switch to the repaired log")
                    self._refresh_local()
                    self._storage(
                        lambda: finish_with_peer(local, ops, self._peer),
                        "clear the conflict records",
                    )
                    self._conflicts = read_conflicts(local)
                    self._history_seen = None
                    # Deliver what the new log holds beyond the peer's (as a reconcile would).
                    fresh = self._peer_ops.tail(LOG_FILE, self._peer.read_offset, CHUNK)
                    self._sync_peer(ReconcileResult(True, "ok"), (fresh, self._peer.cache_exists()))
                    return result
            except PeerError as exc:
                return RepairResult(False, exc.reason)

    @contextlib.contextmanager
    def _both_locks(self) -> Iterator[tuple[tuple[int, int, bytes] | None, bool]]:
        """Our lock and the peer's, taken in the one global order (by node name) and released
        on the way out; yields what the peer's lock stage saw (see ``_connect_and_look``)."""
        cfg = self.config
        held_local = held_peer = False
        look: tuple[tuple[int, int, bytes] | None, bool] = (None, False)
        try:
            for side in sorted((cfg.node, cfg.peer)):
                if side == cfg.node:
                    self._lock_local()
                    held_local = True
                else:
                    look = self._connect_and_look()
                    held_peer = True
            yield look
        finally:
            if held_peer:
                with contextlib.suppress(PeerError):  # a dead worker's lock died with it
                    self._peer_ops.release()
            if held_local:
                self._local_ops.unlock()

    def _storage(self, step: Callable[[], _T], what: str) -> _T:
        """A step on our own directory: its failure is a StorageError naming the directory
        (the peer's failures stay PeerError)."""
        try:
            return step()
        except PeerError:
            raise
        except OSError as exc:
            raise StorageError(
                exc.errno, f"cannot {what} in {self.config.log_dir}: {exc.strerror or exc}"
            ) from exc

    def _report_delivery(self, info: dict[str, Any], from_peer: str | None) -> None:
        """status(): the oldest undelivered entry each way (None: nothing waits, or unknown
        for ``from_peer`` while the peer is away) and the last complete sync."""
        cfg = self.config
        now = time.time()
        delivered = info["peer_last_seq"][cfg.node] if info["peer_reachable"] else None
        to_peer = oldest_undelivered(self._local, cfg.node, delivered)
        oldest = {"to_peer": to_peer, "from_peer": from_peer if info["peer_reachable"] else None}
        info["oldest_undelivered_ts"] = oldest
        info["oldest_undelivered_age_seconds"] = {
            way: None if ts is None else round(max(0.0, now - ts_seconds(ts)), 3)
            for way, ts in oldest.items()
        }
        if info["in_sync"]:
            record_sync(self._local_ops, now)
        synced = last_sync(self._local_ops)
        info["last_sync"] = None if synced is None else format_ts(round(synced * 1_000_000))
        info["last_sync_age_seconds"] = None if synced is None else round(now - synced, 3)

    def verify(self) -> VerifyResult:
        """Compare this node's log with the peer's, by entry id (over the retained window)."""
        with self._mutex:
            for _ in range(3):
                result, stable = self._verify_once()
                if stable:
                    break
            return result

    def _verify_once(self) -> tuple[VerifyResult, bool]:
        """One comparison, and whether neither log rotated while it read them."""
        cfg = self.config
        result = VerifyResult(
            in_sync=False, node=cfg.node, peer=cfg.peer, peer_reachable=False, reason="ok"
        )
        reason = self._precheck()
        if reason is not None:
            result.reason = reason
            return result, True
        # Snapshot both logs' complete sizes under both locks, then read without them.
        held_local = held_peer = False
        try:
            for side in sorted((cfg.node, cfg.peer)):
                if side == cfg.node:
                    try:
                        self._local_ops.lock(cfg.lock_timeout)
                        held_local = True
                    except OSError as exc:
                        if exc.errno not in READ_ONLY_ERRNOS:
                            raise
                        # A reader without write access (a member of the log's group, a
                        # read-only copy) compares without the locks: a write landing meanwhile
                        # may show as missing.
                        self._peer_ops.check_identity(
                            cfg.peer, self._local_ops.dev_ino(), cfg.probe_timeout
                        )
                        break
                else:
                    self._peer_ops.connect(cfg.peer, self._local_ops.dev_ino(), cfg.probe_timeout)
                    held_peer = True
            local_state = self._local.refresh(repair=False)
            peer_state = self._peer.refresh(repair=False)
            local_files = snapshot_files(self._local)
            peer_files = snapshot_files(self._peer)
        except PeerError as exc:
            result.reason = exc.reason
            return result, True
        finally:
            if held_peer:
                with contextlib.suppress(PeerError):
                    self._peer_ops.release()
            if held_local:
                self._local_ops.unlock()
        try:
            for origin in (cfg.node, cfg.peer):
                compare(
                    origin_lines(self._local, local_files, origin),
                    origin_lines(self._peer, peer_files, origin),
                    origin,
                    result,
                    local_mark=local_state.hwm.get(origin, 0),
                    peer_mark=peer_state.hwm.get(origin, 0),
                )
            stable = all(
                store.segments() == [name for name, _ in files[:-1]]
                and (store.ops.stat(LOG_FILE) or (0, None))[1] == state.ino
                for store, files, state in (
                    (self._local, local_files, local_state),
                    (self._peer, peer_files, peer_state),
                )
            )
        except PeerError as exc:
            result.reason = exc.reason
            return result, True
        result.peer_reachable = True
        result.in_sync = not (
            result.conflicts
            or result.missing_on_local
            or result.missing_on_peer
            or result.duplicates_local
            or result.duplicates_peer
        )
        return result, stable

    # -- introspection for tests and the CLI --------------------------------------------
    @property
    def last_reason(self) -> str:
        """Why the last write or reconcile did (``"ok"``) or did not reach the peer."""
        return self._last_reason

    def peer_worker_stats(self) -> Mapping[str, int]:
        """Peer workers started, killed and stuck so far; writes that reached the peer in one
        round trip (``one_trip``), and those that tried and found something to drain
        (``drained_after``)."""
        return {
            "spawned": self._remote.spawned,
            "killed": self._remote.killed,
            "stuck": len(self._remote.stuck_pids),
            **self._trips,
        }
