"""Whether, and for how long, to reach the peer: the one place that decides.

Everything a commit asks before and after it touches the peer lives here: the checks that need
no peer I/O (the link, a stuck worker), the deadlines of each peer stage, the back-off after a
timeout, the memo that lets a write skip re-checking the peer's identity, and the lock order.
The worker (``_worker.py``) enforces the deadlines by killing itself out of a hung call; the
link (``PeerLink``) is the seam tests replace (``twinlog.testing``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple, Protocol

from twinlog._fileops import Look
from twinlog._peer import RemoteOps
from twinlog._worker import RemoteDir
from twinlog.config import Config
from twinlog.probe import MountTable, StuckRegistry

__all__ = ["Deadlines", "MountLink", "PeerLink", "PeerReach"]

_MOUNTS = MountTable()

# After a one-round-trip write timed out, writes look before they append for this long: that
# round trip must answer within probe_timeout, fsync included, and a slow (not dead) peer's
# fsync may take longer; the two-round-trip write gives its append io_timeout.
ONE_TRIP_PAUSE = 60.0


class Deadlines(NamedTuple):
    """How long each peer stage may take, in seconds (from :class:`~twinlog.Config`).

    ``probe``: the first contact (identity check, or the lock when the identity is known);
    ``io``: every other single operation, and each attempt at a busy lock;
    ``lock_patience``: how long a busy peer lock is waited for in all.
    """

    probe: float
    io: float
    lock_patience: float

    @classmethod
    def of(cls, config: Config) -> Deadlines:
        return cls(config.probe_timeout, config.io_timeout, config.lock_timeout)

    @property
    def backoff(self) -> float:
        """How long writes leave a peer alone after it timed out: one full attempt's worth."""
        return self.probe + self.io


class PeerLink(Protocol):
    """How this node is connected to the peer's directory, as far as it can tell without
    touching it."""

    def down(self) -> str | None:
        """Why the peer cannot be reached (a key of ``probe.REASONS``), or None: try it."""


class MountLink:
    """The real link: ``peer_dir`` must be a mount point (unless ``require_mount`` is off)."""

    def __init__(self, peer_dir: Path, *, require_mount: bool) -> None:
        self.peer_dir = peer_dir
        self.require_mount = require_mount

    def down(self) -> str | None:
        if self.require_mount and not _MOUNTS.is_mount(self.peer_dir):
            return "not_mounted"
        return None


class PeerReach:
    """This node's view of the peer: may a commit try it now, how, and what it learnt."""

    def __init__(self, config: Config, link: PeerLink) -> None:
        self.config = config
        self.link = link
        self.deadlines = Deadlines.of(config)
        self.stuck = StuckRegistry(config.log_dir)
        self.remote = RemoteDir(os.fspath(config.peer_dir), on_stuck=self.stuck.add)
        #: The peer directory's operations, each within its deadline.
        deadlines = self.deadlines
        self.ops = RemoteOps(
            self.remote,
            probe=deadlines.probe,
            io=deadlines.io,
            lock_patience=deadlines.lock_patience,
        )
        self.last_reason = "ok"
        self._backoff_until = 0.0
        self._one_trip_paused_until = 0.0

    @property
    def peer_first(self) -> bool:
        """The one global lock order, by node name, so two nodes writing at once never
        deadlock: True when the peer's lock must be taken before ours."""
        return self.config.peer < self.config.node

    def precheck(self) -> str | None:
        """The checks that need no peer I/O: why the peer is unreachable, or None."""
        reason = self.link.down()
        if reason is not None:
            return reason
        if self.remote.stuck_pids or self.stuck.alive():
            return "stuck"
        return None

    def backing_off(self) -> str | None:
        """While writes leave a peer that timed out alone, why (``"timeout"``); else None.
        A write does not knock (its callers would each wait out the timeout holding our lock,
        and our peer's writers with them); a reconcile does."""
        return "timeout" if time.monotonic() < self._backoff_until else None

    def before_write(self) -> str | None:
        """Why a write should not try the peer now, or None."""
        return self.precheck() or self.backing_off()

    # -- contact ------------------------------------------------------------------------------
    def look(self, not_dev_ino: tuple[int, int], log_offset: int) -> Look:
        """Check the peer's identity (its marker names the peer; not ourselves), lock it and
        look at its log's tail (from ``log_offset``) and cache, in one round trip within the
        ``probe`` deadline (see ``RemoteOps.connect_and_look``). The identity is checked on
        every contact: remembering it saved under 10% of a write (docs/benchmarks.md)."""
        return self.ops.connect_and_look(self.config.peer, not_dev_ino, log_offset)

    # -- the one-round-trip write --------------------------------------------------------------
    def one_trip_allowed(self) -> bool:
        """The one-round-trip write holds the peer's lock while we hold ours (so our lock must
        come first), and not for a while after one timed out (see ``ONE_TRIP_PAUSE``)."""
        return not self.peer_first and time.monotonic() >= self._one_trip_paused_until

    def one_trip_timed_out(self) -> None:
        self._one_trip_paused_until = time.monotonic() + ONE_TRIP_PAUSE

    # -- what a commit learnt --------------------------------------------------------------
    def learnt(self, reachable: bool, reason: str) -> None:
        """After a commit: remember whether and why it (not) reached the peer; back off after
        a timeout for one full attempt's worth."""
        self.last_reason = reason
        if reason == "timeout" and not self.backing_off():
            self._backoff_until = time.monotonic() + self.deadlines.backoff
        elif reachable:
            self._backoff_until = 0.0

    def told(self, reason: str, backoff_until: float) -> None:
        """Take over a group-commit leader's view of the peer (its reason and back-off)."""
        self.last_reason = reason
        if reason == "timeout":
            self._backoff_until = max(self._backoff_until, backoff_until)
        elif reason == "ok":
            self._backoff_until = 0.0

    @property
    def backoff_until(self) -> float:
        return self._backoff_until
