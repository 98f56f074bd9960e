"""Witnesses: on a reconcile that reached the peer, this node logs the peer's chain head.

The witness is an entry of our own origin (so our chain seals it, and both nodes hold it)
naming the peer's origin, seq and chain as the peer's log showed them. A history the peer
rewrites afterwards, even with its chain recomputed, then contradicts what we witnessed:
``verify(deep=True)`` checks every witness on both nodes (_audit.py). One is logged only when
the peer's head moved since our last one (``twinlog.witnessed`` remembers it; losing that
file costs one extra witness, nothing else).
"""

from __future__ import annotations

import json
from typing import Any

from twinlog._audit import WITNESS_FIELD
from twinlog._chain import chain_at_end
from twinlog._store import LocalOps, LocalStore, LogState
from twinlog.entry import check_entry

__all__ = ["WITNESSED_FILE", "due", "remember"]

WITNESSED_FILE = "twinlog.witnessed"
_MARK = b'"witness":{'


def due(
    local: LocalStore, ops: LocalOps, peer_state: LogState | None, peer: str
) -> tuple[str, bytes, dict[str, Any]] | None:
    """The witness entry to log (msg, fields JSON, fields), or None when the peer's newest
    entry that is not itself a witness is witnessed already (witnessing witnesses would have
    the two nodes log each other's for ever)."""
    head = peer_state.heads.get(peer) if peer_state is not None else None
    if head is None:
        return None
    last = _last(ops, peer)
    seq = head[0]
    while seq > last:
        line = local.line_of(peer, seq)
        chain = chain_at_end(line) if line is not None else None
        if line is None or chain is None:
            return None  # not in our log (yet), or unchained: nothing to witness
        if _MARK not in line:
            seen = {"origin": peer, "seq": seq, "chain": chain}
            msg = f"twinlog witnessed {peer}:{seq}"
            fields = {"level": "DEBUG", WITNESS_FIELD: seen}
            fields_json, stored = check_entry(msg, fields, 1 << 16)
            return msg, fields_json, stored
        seq -= 1
    return None


def remember(ops: LocalOps, peer: str, seq: int) -> None:
    ops.replace(WITNESSED_FILE, json.dumps({peer: seq}).encode(), False)


def _last(ops: LocalOps, peer: str) -> int:
    try:
        data = json.loads(ops.read(WITNESSED_FILE, 0, 4096) or b"{}")
        return int(data.get(peer, 0))
    except (ValueError, TypeError, AttributeError):
        return 0
