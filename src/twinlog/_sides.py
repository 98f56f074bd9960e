"""Both sides of the pair as this process reaches them, and where their locks are taken.

Locks: our directory's (an OFD lock, ``DirOps.lock``) and the peer's (a POSIX lock taken by the
worker through the mount, ``PeerReach.look``), always in the one order that
:attr:`PeerReach.peer_first` gives, so two nodes writing at once never deadlock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from twinlog._conflicts import Histories
from twinlog._dedupe import KeyWindow
from twinlog._drain import drain_from_peer, drain_to_peer, give_back_peers, take_back_own
from twinlog._fileops import CACHE_FILE, CHUNK, LOG_FILE, NO_LOOK, READ_ONLY_ERRNOS, DirOps, Look
from twinlog._locks import LOCK_FILE
from twinlog._reach import PeerLink, PeerReach
from twinlog._repair import roll_forward
from twinlog._store import LocalStore, PeerStore
from twinlog.clock import HybridClock
from twinlog.config import Config
from twinlog.exceptions import LockTimeoutError, PeerError, StorageError, on_local_disk

__all__ = ["Drained", "Sides"]


@dataclass
class Drained:
    """What the drains of one contact moved."""

    pushed: int = 0
    pulled: int = 0
    recovered: int = 0  # entries of ours taken back from the peer (our log had lost them)


@dataclass
class Sides:
    """Our directory and the peer's: their stores, the peer's reach, what we know of both
    histories."""

    config: Config
    local_ops: DirOps
    local: LocalStore
    reach: PeerReach
    peer: PeerStore
    histories: Histories
    clock: HybridClock
    keys: KeyWindow  # the idempotency keys of our latest entries (see _dedupe.py)

    @classmethod
    def open(cls, config: Config, local_ops: DirOps, link: PeerLink, clock: HybridClock) -> Sides:
        local = LocalStore(local_ops, config.node, fsync=config.fsync)
        reach = PeerReach(config, link)
        peer = PeerStore(reach.ops, config.peer, fsync=config.fsync)
        histories = Histories(local, local_ops, peer)
        keys = KeyWindow(config.dedupe_window)
        return cls(config, local_ops, local, reach, peer, histories, clock, keys)

    def close(self) -> None:
        self.reach.remote.close()
        self.local_ops.close()

    # -- locks ------------------------------------------------------------------------------
    def lock_local(self) -> None:
        """Take our directory's lock, waiting at most ``lock_timeout``."""
        try:
            self.local_ops.lock(self.config.lock_timeout)
        except LockTimeoutError:
            raise
        except OSError as exc:
            where = self.config.log_dir / LOCK_FILE
            why = exc.strerror or str(exc)
            if exc.errno in READ_ONLY_ERRNOS:
                why += " (reading works; writing needs log_dir writable by this user)"
            raise StorageError(exc.errno, f"cannot lock {where} to write: {why}") from exc

    def lock_peer(self) -> Look:
        """Take the peer's lock (and look at its log and cache): see :meth:`PeerReach.look`."""
        return self.reach.look(self.local_ops.dev_ino(), self.peer.read_offset)

    def release_peer(self) -> None:
        # A failing unlock means the worker was killed, and its lock went with it.
        with contextlib.suppress(PeerError):
            self.reach.ops.release()

    @contextlib.contextmanager
    def both_locks(self) -> Iterator[Look]:
        """Our lock and the peer's, in the one order, released on the way out; yields what the
        peer's lock stage saw."""
        held_local = held_peer = False
        look = NO_LOOK
        try:
            for peer_now in (True, False) if self.reach.peer_first else (False, True):
                if peer_now:
                    look = self.lock_peer()
                    held_peer = True
                else:
                    self.lock_local()
                    held_local = True
            yield look
        finally:
            if held_peer:
                self.release_peer()
            if held_local:
                self.local_ops.unlock()

    @contextlib.contextmanager
    def snapshot_locks(self) -> Iterator[None]:
        """Both locks for taking a consistent snapshot of both logs' sizes (``verify``). A
        reader without write access (a member of the log's group, a read-only copy) gets no
        locks, only the peer's identity checked: a write landing meanwhile may show as missing.
        """
        cfg = self.config
        held_local = held_peer = False
        try:
            for peer_now in (True, False) if self.reach.peer_first else (False, True):
                if peer_now:
                    self.reach.ops.connect(cfg.peer, self.local_ops.dev_ino())
                    held_peer = True
                    continue
                try:
                    self.local_ops.lock(cfg.lock_timeout)
                    held_local = True
                except OSError as exc:
                    if exc.errno not in READ_ONLY_ERRNOS:
                        raise
                    self.reach.ops.check_identity(cfg.peer, self.local_ops.dev_ino())
                    break
            yield
        finally:
            if held_peer:
                self.release_peer()
            if held_local:
                self.local_ops.unlock()

    # -- under the locks ----------------------------------------------------------------------
    def refresh_local(self, *, repair: bool = True) -> None:
        """Learn what our log holds (cutting a torn tail only when ``repair``, under our lock);
        read afresh under our lock, first finish (or drop) a repair that crashed."""
        local = self.local
        with on_local_disk(f"read the local log in {self.config.log_dir}"):
            loads = local.loads
            local.refresh(repair=repair)
            if repair and local.loads != loads and roll_forward(local, self.local_ops):
                local.refresh(repair=True)
            self.histories.local_refreshed()

    def drain_both(self, look: Look, drained: Drained) -> str | None:
        """Steps 4A and 4B under both locks, from what the peer's lock stage saw (``look``),
        after comparing both histories; a conflicting origin's entries do not move. None when
        the peer stayed reachable, else why not."""
        local, peer, histories = self.local, self.peer, self.histories
        try:
            peer.refresh_with(look.tail, repair=True)
            histories.compare()
            if not histories.blocks(local.node):
                drained.recovered += take_back_own(peer, local)
                drained.pushed += drain_to_peer(local, peer)
            if not histories.blocks(peer.node):
                drained.pulled += drain_from_peer(peer, local, look.has_cache)
                drained.pushed += give_back_peers(local, peer)
        except PeerError as exc:
            return exc.reason
        return None

    def forget_cache(self) -> None:
        """The cache is drained (and unlinked, maybe by the peer): don't hold its file open."""
        self.local_ops.forget(CACHE_FILE)

    def peer_log_tail(self) -> Look:
        """The peer's new log bytes and cache, while we hold its lock (after a repair)."""
        tail = self.reach.ops.tail(LOG_FILE, self.peer.read_offset, CHUNK)
        return Look(tail, self.peer.cache_exists())
