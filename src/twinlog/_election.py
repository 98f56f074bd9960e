"""Who commits a batch: this process alone, as the node's group-commit leader, or as a follower
of the process that leads now (the protocol between them is ``_group.py``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from twinlog._commit import Commit, Pending, Stats
from twinlog._dedupe import entry_of
from twinlog._group import Leadership, Outcome, follow
from twinlog._sides import Sides
from twinlog.exceptions import LockTimeoutError, StorageError

__all__ = ["Election"]

EXTRA_ROUNDS = 1  # group commits a leader runs for others after its own
CONTENDED_HOLD = 1.0  # seconds a process elects (no uncontended commits) after company


class Election:
    """The group-commit policy of one process. ``take_queue`` hands over what threads of this
    process queued meanwhile (a leader commits it with its followers')."""

    def __init__(
        self, sides: Sides, stats: Stats, name: bytes, take_queue: Callable[[], list[Pending]]
    ) -> None:
        self.sides = sides
        self.stats = stats
        self.name = name  # of the node's election socket
        self.take_queue = take_queue
        self._contended_until = 0.0

    def commit(self, batch: list[Pending]) -> None:
        """Commit ``batch``: alone if nobody else is about, else as leader or follower."""
        if self._alone(batch):
            return
        give_up = time.monotonic() + self.sides.config.lock_timeout
        items = [(p.msg, p.fields_json) for p in batch]
        join_first = self._join_first()
        while True:
            if not join_first:
                lead = Leadership.try_take(self.name)
                if lead is not None:
                    self.stats.group["led"] += 1
                    with contextlib.closing(lead):
                        self._lead(lead, batch)
                    return
            outcome = follow(self.name, items, max(0.0, give_up - time.monotonic()))
            if outcome.kind == "retry" and join_first:
                join_first = False  # nobody leads: try to
                continue
            self._met_company()
            if outcome.kind == "retry":
                if time.monotonic() < give_up:
                    time.sleep(0.0005)  # the leader is binding or leaving: try again
                    continue
                outcome.kind = "timeout"
            self.stats.group["followed"] += 1
            self._followed(outcome, batch)
            return

    def _join_first(self) -> bool:
        """With company about, someone probably leads already: join before trying to lead (a
        connect instead of a bind that fails, for most writers of a busy node)."""
        return time.monotonic() < self._contended_until

    def _alone(self, batch: list[Pending]) -> bool:
        """Commit ``batch`` alone if the node's lock is free right now: nobody is committing or
        waiting to (a leader waiting for the lock holds the election socket, so another process
        that finds the lock busy joins it). After any sign of company (the lock was busy, we
        followed, we led others) this process elects for a while: writers that just got their
        answers would otherwise race for the free lock one by one instead of grouping. Not when
        the peer will be locked and its lock comes first in the lock order: holding ours while
        waiting for the peer's could deadlock with the peer's writer."""
        sides = self.sides
        if time.monotonic() < self._contended_until:
            return False
        reason = sides.reach.before_write()
        if reason is None and sides.reach.peer_first:
            return False
        if not sides.local_ops.try_lock():
            self._met_company()
            return False
        self.stats.group["uncontended"] += 1
        Commit(sides, self.stats, batch).run_locked(reason)
        return True

    def _met_company(self) -> None:
        """Other writers of this node are about (see :meth:`_alone`)."""
        self._contended_until = time.monotonic() + CONTENDED_HOLD

    def _lead(self, lead: Leadership, batch: list[Pending]) -> None:
        """Commit our batch, then once more for whoever queued meanwhile (followers, and threads
        of this process). Then leave: our own write() is not held hostage by a steady stream of
        others; those still waiting see us go and elect the next leader among themselves."""
        self._commit_as_leader(lead, batch)
        for _ in range(EXTRA_ROUNDS):
            queued = self.take_queue()
            if not (queued or lead.pending()):
                break
            with contextlib.suppress(Exception):  # reported to the waiting writers, not to us
                self._commit_as_leader(lead, queued)

    def _commit_as_leader(self, lead: Leadership, batch: list[Pending]) -> None:
        served = self.stats.group["followers_served"]
        try:
            Commit(self.sides, self.stats, batch, lead=lead).run()
        finally:
            if self.stats.group["followers_served"] != served:
                self._met_company()

    def _followed(self, outcome: Outcome, batch: list[Pending]) -> None:
        """Our entries as the leader committed them; or, its leader gone, committed afresh by
        us (those it wrote are found in our log); or the error it answered."""
        reach, node = self.sides.reach, self.sides.config.node
        if outcome.kind == "done":
            if outcome.peer is not None:
                reach.told(*outcome.peer)
            for p, assigned in zip(batch, outcome.assigned, strict=True):
                p.entry = entry_of(node, assigned, p.msg, p.fields)  # maybe known by its key
        elif outcome.kind == "orphan":
            self.stats.group["orphans"] += 1
            for p, assigned in zip(batch, outcome.assigned, strict=True):
                p.orphan = (assigned[0], assigned[1])  # a known entry's (seq, ts) too
            Commit(self.sides, self.stats, batch).run()
        else:
            kind, text = outcome.error or ("lock_timeout", "")
            error: BaseException
            if outcome.kind == "timeout" or kind == "lock_timeout":
                timeout = self.sides.config.lock_timeout
                error = LockTimeoutError(text or f"no commit within lock_timeout ({timeout:.3g}s)")
            else:
                error = StorageError(text)
            for p in batch:
                p.error = error
