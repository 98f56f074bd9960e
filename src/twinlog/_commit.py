"""One commit: the method's steps for a batch of entries (or none: a reconcile), in order.

:meth:`Commit.run` reads as the method: lock, refresh, drain (4A and 4B), stage (assign seqs
and append to our log: step 5, or 3's first half), deliver (step 6) or cache (3's second half),
finish (hand the entries back). The peer's reach is decided in ``_reach.py``; the locks are
taken in ``_sides.py``; the drains are ``_drain.py``.

The one fast path that changes the steps' order: a write that expects nothing to drain reaches
the peer once, after our append (``one_trip``): the worker checks the peer's identity, locks
its log, checks that nothing but what we expect was added, appends ours and unlocks. If
something was added after all, it keeps the lock and the drains run then (they deliver our
lines from our log).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twinlog import _failpoints
from twinlog._chain import seal, unsealed
from twinlog._dedupe import KeyLookup, assign, fresh_items
from twinlog._fileops import NO_LOOK, Allowed, Look
from twinlog._group import Follower, Leadership
from twinlog._history import Conflict
from twinlog._repair import RepairResult, finish_with_peer, rebuild, switch
from twinlog._sides import Drained, Sides
from twinlog.entry import Entry, encode_entry, id_prefix
from twinlog.exceptions import PeerError, StorageError, on_local_disk

__all__ = ["Commit", "Pending", "ReconcileResult", "Stats", "repair"]


@dataclass
class Pending:
    """An entry waiting to be committed, checked; then its entry, or the error it got."""

    msg: str
    fields_json: bytes
    fields: dict[str, Any]
    entry: Entry | None = None
    error: BaseException | None = None
    # (seq, ts) a group-commit leader gave it before it died: written if seq is in our log
    orphan: tuple[int, str] | None = None


@dataclass
class Staged:
    """A commit's entries, assigned and appended to our log, before they reach the peer."""

    lines: list[bytes] = field(default_factory=list)
    mark: tuple[str, int, str] | None = None  # (node, seq, ts) of the last line
    own: list[tuple[Pending, int, str]] = field(default_factory=list)  # ours, not followers'
    keys: KeyLookup | None = None  # this commit's idempotency-key lookups, if any has a key


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


@dataclass
class Stats:
    """How commits went in this process (``TwinLog.group_stats``, ``peer_worker_stats``)."""

    group: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("uncontended", "led", "followed", "followers_served", "orphans"), 0
        )
    )
    #: one-round-trip writes that reached the peer, and those that found something to drain
    trips: dict[str, int] = field(default_factory=lambda: {"one_trip": 0, "drained_after": 0})


class Commit:
    """One commit under both locks (ours only if the peer is unreachable).

    ``lead``: we lead a group commit; its followers' entries join ours after the drains.
    ``rotate``: make the active log a segment afterwards and apply retention.
    """

    def __init__(
        self,
        sides: Sides,
        stats: Stats,
        batch: list[Pending],
        *,
        lead: Leadership | None = None,
        rotate: bool = False,
    ) -> None:
        self.sides = sides
        self.stats = stats
        self.batch = batch
        self.lead = lead
        self.rotate = rotate
        self.writing = bool(batch) or lead is not None
        self.followers: list[Follower] = []  # other processes' requests this commit takes
        self.result = ReconcileResult(peer_reachable=False, reason="ok")
        self.drained = Drained()
        self.reason: str | None = None  # why the peer is not reached (None: it is)
        self.one_trip = False
        self.held_local = False
        self.held_peer = False
        self.look: Look = NO_LOOK

    def run(self) -> ReconcileResult:
        """Decide whether to try the peer, then commit."""
        reach = self.sides.reach
        self.reason = reach.before_write() if self.writing else reach.precheck()
        return self._steps()

    def run_locked(self, reason: str | None) -> ReconcileResult:
        """Commit with our lock already held; ``reason`` (why not to reach the peer, or None)
        was decided before it was taken."""
        self.held_local = True
        self.reason = reason
        return self._steps()

    def _steps(self) -> ReconcileResult:
        try:
            self.lock()
            self.refresh()
            if self.reason is None and not self.one_trip:
                self.drain(self.look)
            if self.writing:
                staged = self.stage()
                self.deliver_or_cache(staged)
                self.finish(staged)
            self.wrap_up()
        except BaseException as exc:
            self.fail(exc)
            if not self.writing:
                raise
        finally:
            self.unlock()
        self.learn()
        return self.result

    # -- the steps --------------------------------------------------------------------------
    def lock(self) -> None:
        """Our lock and, if the peer is to be reached, its lock (with a look at its log and
        cache), in the one lock order. A one-round-trip write leaves the peer for later."""
        self.one_trip = self._one_trip_possible()
        sides = self.sides
        for peer_now in (True, False) if sides.reach.peer_first else (False, True):
            if not peer_now and not self.held_local:
                sides.lock_local()
                self.held_local = True
            elif peer_now and self.reason is None and not self.one_trip:
                self._lock_peer()
        if _failpoints.ACTIVE:
            _failpoints.hit("after_lock")

    def refresh(self) -> None:
        """Learn what our log holds; a one-round-trip write that now sees something to drain
        locks and looks at the peer after all (our lock comes first in the order)."""
        self.sides.refresh_local()
        if self.one_trip and not self._nothing_to_drain():
            self.one_trip = False
            self._lock_peer()

    def drain(self, look: Look) -> None:
        """Steps 4A and 4B, under both locks."""
        self.held_peer = True
        self.reason = self.sides.drain_both(look, self.drained)

    def stage(self) -> Staged:
        """Assign seqs and stamps to our entries and our followers', and append them to our
        log (step 5, or step 3's first half)."""
        if self.lead is not None:
            self.followers = self.lead.collect()
        staged = _assign(self.sides, self.batch, self.followers)
        if self.followers:
            self.stats.group["followers_served"] += len(self.followers)
        if _failpoints.ACTIVE and self.followers:
            _failpoints.hit("after_assign")
        if staged.lines:
            local, mark = self.sides.local, staged.mark
            with on_local_disk(f"append to the local log {self.sides.config.log_dir}"):
                local.append_lines(staged.lines, one_write_per_line=True, mark=mark)
            if staged.keys is not None and mark is not None:
                staged.keys.appended(mark[1])
            if _failpoints.ACTIVE:
                _failpoints.hit("after_local_append")
        return staged

    def deliver_or_cache(self, staged: Staged) -> None:
        """Step 6, the staged lines to the peer's log; or, the peer away (or our history in
        conflict: nothing of ours moves), step 3's second half, to our cache."""
        histories, node = self.sides.histories, self.sides.config.node
        if self.one_trip:
            self._deliver_in_one_trip(staged)  # its drains may find a conflict
        elif self.reason is None and staged.lines and not histories.blocks(node):
            self._deliver(staged)
        if (self.reason is not None or histories.blocks(node)) and staged.lines:
            with on_local_disk("append to the local cache"):
                self.sides.local.append_cache(staged.lines)
            if _failpoints.ACTIVE:
                _failpoints.hit("after_cache_append")

    def finish(self, staged: Staged) -> None:
        """Our own entries are durable: hand them to their write() calls."""
        node = self.sides.config.node
        for pending, seq, ts in staged.own:
            pending.entry = Entry(f"{node}:{seq}", node, seq, ts, pending.msg, pending.fields)

    def wrap_up(self) -> None:
        """The result; rotation, retention and checkpoints while the locks are held."""
        result, drained = self.result, self.drained
        peer_ok = self.reason is None
        result.peer_reachable = peer_ok
        result.reason = self.reason or "ok"
        result.pushed, result.pulled, result.recovered = (
            drained.pushed,
            drained.pulled,
            drained.recovered,
        )
        result.conflicts = self.sides.histories.ordered()
        _rotate_and_expire(self.sides, result, peer_ok and self.held_peer, force=self.rotate)
        _checkpoints(self.sides, peer_ok and self.held_peer)

    def fail(self, exc: BaseException) -> None:
        """Every entry not yet durable, ours and our followers', gets the error."""
        for pending in self.batch:
            if pending.entry is None:
                pending.error = exc
        for follower in self.followers:
            follower.answer(exc)
        self.followers = []

    def unlock(self) -> None:
        if self.held_peer:
            self.sides.release_peer()
        if self.held_local:
            self.sides.local_ops.unlock()

    def learn(self) -> None:
        """Remember how the peer answered, and tell the followers (a follower that leads next
        does not knock on a peer that just timed out, and reports the right reason)."""
        reach = self.sides.reach
        reach.learnt(self.result.peer_reachable, self.result.reason)
        if self.result.peer_reachable:
            self.sides.forget_cache()
        for follower in self.followers:
            follower.answer(None, (self.result.reason, reach.backoff_until))

    # -- the peer ---------------------------------------------------------------------------
    def _lock_peer(self) -> None:
        try:
            self.look = self.sides.lock_peer()
            self.held_peer = True
        except PeerError as exc:
            self.reason = exc.reason

    def _deliver(self, staged: Staged) -> None:
        """The staged lines to the peer's log, under its lock; the same round trip releases
        the lock when nothing else needs it this commit."""
        assert staged.mark is not None
        peer = self.sides.peer
        release = not _peer_needed_after(self.sides, staged)
        try:
            if release:
                peer.append_and_release(staged.lines, staged.mark)
            else:
                peer.append_lines(staged.lines, one_write_per_line=True, mark=staged.mark)
        except PeerError:
            self.reason = "io_error"
            return
        self.held_peer = self.held_peer and not release
        if _failpoints.ACTIVE:
            _failpoints.hit("after_peer_append")

    def _one_trip_possible(self) -> bool:
        """Whether this write may reach the peer in one round trip after our append: a plain
        write (not a group-commit leader's, which takes its followers after the peer's lock
        stage so that those arriving meanwhile join; nor a rotation) that the peer's reach
        allows, with the peer's log known from the last commit."""
        if not self.writing or self.reason is not None or self.rotate or self.lead is not None:
            return False
        state = self.sides.peer.state
        return (
            self.sides.reach.one_trip_allowed()
            and state is not None
            and state.ino is not None
            and not state.torn
        )

    def _nothing_to_drain(self) -> bool:
        """After our refresh: no cache of ours, and when we last saw the peer's log we had every
        entry of the peer's it held and it had none of ours we lack (the worker checks what
        was added since), and both histories were compared and agree."""
        sides = self.sides
        node, peer_node = sides.config.node, sides.config.peer
        local, peer = sides.local.state, sides.peer.state
        assert local is not None
        assert peer is not None
        return (
            peer.hwm.get(node, 0) <= local.hwm.get(node, 0)
            and peer.hwm.get(peer_node, 0) <= local.hwm.get(peer_node, 0)
            and not sides.histories.conflicts
            and sides.histories.compared
            and not sides.local.cache_exists()
        )

    def _deliver_in_one_trip(self, staged: Staged) -> None:
        """Steps 4 and 6 in one round trip: lock the peer's log and, if nothing was added there
        since but what we expect and it has no cache, append ours and unlock. Otherwise it
        stays locked, and the drains deliver our lines from our log. Rotation or a checkpoint
        due: lock and look at once."""
        try:
            if not staged.lines or _peer_needed_after(self.sides, staged):
                look: Look | None = self.sides.lock_peer()
            else:
                look = self._append_if_settled(staged)
        except PeerError as exc:
            self.reason = exc.reason
            if exc.reason == "timeout":
                self.sides.reach.one_trip_timed_out()
            return
        if look is None:
            self.stats.trips["one_trip"] += 1
            return
        self.stats.trips["drained_after"] += 1
        self.drain(look)

    def _append_if_settled(self, staged: Staged) -> Look | None:
        sides = self.sides
        node, peer_node = sides.config.node, sides.config.peer
        state, peer = sides.local.state, sides.peer.state
        assert state is not None
        assert peer is not None
        assert staged.mark is not None
        # Since we last read the peer's log, our other processes may have added our entries
        # up to just before ours, and the peer's writers their own that we hold.
        allowed = Allowed(
            own=id_prefix(node),
            first=peer.hwm.get(node, 0) + 1,
            last=staged.mark[1] - len(staged.lines),
            others=id_prefix(peer_node),
            most=state.hwm.get(peer_node, 0),
        )
        look = sides.peer.append_if_settled(
            staged.lines, staged.mark, allowed, sides.local_ops.dev_ino()
        )
        if look is None and _failpoints.ACTIVE:
            _failpoints.hit("after_peer_append")
        return look


# -- staging ------------------------------------------------------------------------------------
def _assign(sides: Sides, batch: list[Pending], followers: list[Follower]) -> Staged:
    """Seqs and stamps for our fresh entries, then for each follower that still waits (the
    list is cut down to those that took their assignment); their encoded lines. An entry whose
    idempotency key this node logged already gets that entry instead, and adds no line."""
    node = sides.config.node
    state = sides.local.state
    assert state is not None
    _settle_orphans(sides, batch)
    fresh = [p for p in batch if p.entry is None]
    total = len(fresh) + sum(len(f.items) for f in followers)
    stamps = iter(sides.clock.next_after(state.max_ts or None, total) if total else ())
    next_seq = _next_seq(sides)
    # Checked here, under our lock, where seqs are assigned (_dedupe.py).
    keys = sides.keys.open(sides.local, node, fresh, followers)
    staged = Staged()
    last_ts = ""  # of the last line staged
    for pending in fresh:
        if keys is not None and keys.answer(pending, staged.own):
            continue  # its key is logged already: answered with that entry
        last_ts = next(stamps)
        staged.own.append((pending, next_seq, last_ts))
        staged.lines.append(encode_entry(node, next_seq, last_ts, pending.msg, pending.fields_json))
        if keys is not None:
            keys.assign(pending.fields_json, next_seq, last_ts, staged.lines[-1], pending)
        next_seq += 1
    next_seq, last_ts = _assign_followers(
        sides,
        followers,
        keys=keys,
        staged=staged,
        next_seq=next_seq,
        stamps=stamps,
        last=last_ts,
    )
    if staged.lines:
        staged.mark = (node, next_seq - 1, last_ts)
        _seal(staged.lines, state.prev_chain(node))
    staged.keys = keys
    return staged


def _seal(lines: list[bytes], prev: bytes) -> None:
    """Chain our lines (all of our origin, in seq order) to our newest entry (_chain.py)."""
    for i, line in enumerate(lines):
        lines[i], prev = seal(line, prev)


def _assign_followers(
    sides: Sides,
    followers: list[Follower],
    *,
    keys: KeyLookup | None,
    staged: Staged,
    next_seq: int,
    stamps: Iterator[str],
    last: str,
) -> tuple[int, str]:
    """Each follower's assignment, before anything is appended: one that gave up is left out
    (``followers`` is cut down to those that took theirs). Returns the next seq and last ts."""
    node = sides.config.node
    last_ts = last
    taken: list[Follower] = []
    for follower in followers:
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
        staged.lines += [
            encode_entry(node, seq, ts, msg, fields_json) for (msg, fields_json), (seq, ts) in new
        ]
    followers[:] = taken
    return next_seq, last_ts


def _next_seq(sides: Sides) -> int:
    """The next seq of ours: after our log's mark, and while our history conflicts with the
    peer's, after every seq of ours either node holds (no id is ever given twice)."""
    node = sides.config.node
    state = sides.local.state
    assert state is not None
    mark = state.hwm.get(node, 0)
    conflict = sides.histories.conflicts.get(node)
    if conflict is not None:
        peer = sides.peer.state
        mark = max(mark, conflict.highest_seq, peer.hwm.get(node, 0) if peer else 0)
    return mark + 1


def _settle_orphans(sides: Sides, batch: list[Pending]) -> None:
    """Entries a group-commit leader assigned and then died (or failed) over: those whose line
    is in our log were written, and are answered; the others get committed afresh.

    A written one is not cached again, even with the peer away: our log is the source of every
    drain (the cache only indexes it, and a drain fills a cache's gaps from the log), and
    appending it now could put it after a later seq in the cache."""
    node = sides.config.node
    state = sides.local.state
    assert state is not None
    mark = state.hwm.get(node, 0)
    for pending in batch:
        if pending.orphan is None:
            continue
        seq, ts = pending.orphan
        pending.orphan = None
        line = encode_entry(node, seq, ts, pending.msg, pending.fields_json)
        # Its seq in the log is not enough: once the leader was gone, another writer may have
        # taken that seq for its own entry. Only the very line counts.
        found = sides.local.line_of(node, seq) if seq <= mark else None
        if found is not None and unsealed(found) == line:
            pending.entry = Entry(f"{node}:{seq}", node, seq, ts, pending.msg, pending.fields)


# -- after the entries --------------------------------------------------------------------------
def _peer_needed_after(sides: Sides, staged: Staged) -> bool:
    """Whether this commit needs the peer's lock after appending ``staged`` there: for the
    retention after a rotation of our log, or to checkpoint the peer's."""
    state = sides.local.state
    assert state is not None
    return state.offset >= sides.config.rotate_bytes or sides.peer.checkpoint_due(
        sum(map(len, staged.lines))
    )


def _rotate_and_expire(
    sides: Sides, result: ReconcileResult, peer_ok: bool, *, force: bool
) -> None:
    cfg = sides.config
    state = sides.local.state
    assert state is not None
    if force or state.offset >= cfg.rotate_bytes:
        try:
            result.rotated = sides.local.rotate()
        except OSError as exc:
            if force:
                raise StorageError(exc.errno, f"cannot rotate: {exc.strerror}") from exc
            return  # the next write tries again; the log is intact either way
    if peer_ok and (result.rotated or force):
        peer_state = sides.peer.state
        assert peer_state is not None
        with contextlib.suppress(OSError):
            result.expired = sides.local.expire(
                delivered_own_seq=peer_state.hwm.get(cfg.node, 0),
                retain_segments=cfg.retain_segments,
                retain_days=cfg.retain_days,
            )


def _checkpoints(sides: Sides, peer_ok: bool) -> None:
    # A checkpoint only saves reading time; failing to write one loses nothing.
    with contextlib.suppress(OSError):
        sides.local.checkpoint_if_due()
    if peer_ok:
        with contextlib.suppress(PeerError):
            sides.peer.checkpoint_if_due()


# -- repair -------------------------------------------------------------------------------------
def repair(sides: Sides) -> RepairResult:
    """``TwinLog.repair``, under both locks: the peer's copy of our history wins (see
    ``_repair.py`` for the crash-safe steps); then what the new log holds beyond the peer's
    is delivered, as a reconcile would."""
    cfg, local, ops, peer, histories = (
        sides.config,
        sides.local,
        sides.local_ops,
        sides.peer,
        sides.histories,
    )
    reason = sides.reach.precheck()
    if reason is not None:
        return RepairResult(False, reason)
    try:
        with sides.both_locks() as look:
            sides.refresh_local()
            peer.refresh_with(look.tail, repair=True)
            histories.forget_comparison()  # compare afresh, whatever was seen before
            histories.compare()
            conflict = histories.conflicts.get(cfg.node)
            if conflict is None:
                other = histories.conflicts.get(cfg.peer)
                if other is None:
                    return RepairResult(False, "no_conflict")
                return RepairResult(False, "peer_history", other.origin, other.first_id)
            where = cfg.log_dir
            with on_local_disk(f"write the repaired log in {where}"):
                result = rebuild(local, ops, peer, conflict, sides.clock)
            with on_local_disk(f"switch to the repaired log in {where}"):
                switch(local, ops)
            sides.refresh_local()
            with on_local_disk(f"clear the conflict records in {where}"):
                finish_with_peer(local, ops, peer)
            histories.reread_record()
            histories.forget_comparison()
            sides.drain_both(sides.peer_log_tail(), Drained())
            return result
    except PeerError as exc:
        return RepairResult(False, exc.reason)
