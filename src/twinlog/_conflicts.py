"""What this node knows of the two histories: the conflicts recorded or found, and whether both
logs were compared since either was read afresh (``_history.py`` does the comparing)."""

from __future__ import annotations

from twinlog import _failpoints
from twinlog._fileops import DirOps
from twinlog._history import Conflict, find_conflict, read_conflicts, record_conflicts
from twinlog._repair import finish_with_peer, pending_origin
from twinlog._store import LocalStore, PeerStore
from twinlog.exceptions import on_local_disk

__all__ = ["Histories"]


class Histories:
    """History conflicts known, by origin (recorded in our directory, or found), and the
    (local, peer) store loads when both histories were last compared: they need comparing again
    only when a log was read afresh (a new process, a replaced or rolled-back log)."""

    def __init__(self, local: LocalStore, local_ops: DirOps, peer: PeerStore) -> None:
        self.local = local
        self.local_ops = local_ops
        self.peer = peer
        self.conflicts: dict[str, Conflict] = {}
        self._compared: tuple[int, int] | None = None
        self._local_loads = -1

    def blocks(self, origin: str) -> bool:
        """Whether ``origin``'s history conflicts: nothing of it moves until ``repair()``."""
        return origin in self.conflicts

    def ordered(self) -> list[Conflict]:
        return [self.conflicts[o] for o in sorted(self.conflicts)]

    def local_refreshed(self) -> None:
        """After our log was refreshed: if it was read afresh (a new process, a replaced log, a
        repair by another process), what is recorded about conflicts may have changed too."""
        if self.local.loads != self._local_loads:
            self.reread_record()

    def reread_record(self) -> None:
        """Read our conflict record again (a repair just rewrote it)."""
        self.conflicts = read_conflicts(self.local)
        self._local_loads = self.local.loads

    @property
    def compared(self) -> bool:
        """Whether both histories were compared since either log was last read afresh."""
        return self._compared == (self.local.loads, self.peer.loads)

    def forget_comparison(self) -> None:
        self._compared = None

    def compare(self) -> None:
        """Whether each origin's history is the same in both logs (under both locks, after
        both refreshes), where it may have changed since we last looked: on first contact, and
        after either log was read afresh. A conflict found is recorded in our directory, with
        those the peer recorded in its own; recorded ones stay until ``repair()``."""
        if self.compared:
            return
        if pending_origin(self.local_ops) is not None:
            # A repair switched our log and crashed, or lost the peer, before this.
            finish_with_peer(self.local, self.local_ops, self.peer)
        mine = read_conflicts(self.local)
        known = self.with_found({**read_conflicts(self.peer), **mine})
        if known.keys() - mine.keys():
            with on_local_disk(f"append to the conflict record in {self.local_ops.path}"):
                record_conflicts(self.local, known)
            if _failpoints.ACTIVE:
                _failpoints.hit("after_conflict_record")
        self.conflicts = known
        self._compared = (self.local.loads, self.peer.loads)

    def with_found(self, known: dict[str, Conflict]) -> dict[str, Conflict]:
        """``known``, and what comparing both (refreshed) logs finds for each other origin."""
        local, peer = self.local, self.peer
        found = dict(known)
        for origin, own, other in ((local.node, local, peer), (peer.node, peer, local)):
            if origin not in found:
                conflict = find_conflict(own, other, origin, local.node)
                if conflict is not None:
                    found[origin] = conflict
        return found
