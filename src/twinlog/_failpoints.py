"""Named points in the write, drain and reconcile paths where a test can make the process die.

Enabled only by the environment variable ``TWINLOG_FAILPOINTS``, read once at import:
``name`` (die at the first hit) or ``name@N`` (die at the N-th hit), comma-separated. Dying is
``SIGKILL`` of the process itself, the harshest crash there is. Without the variable,
:data:`ACTIVE` is False and call sites skip even the function call.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ACTIVE", "POINTS", "hit"]

#: Every failpoint, in the order a write or reconcile passes them.
POINTS = (
    "after_lock",
    "after_push_append",
    "after_local_cache_remove",
    "after_pull_append",
    "after_peer_cache_remove",
    "after_assign",
    "after_local_append",
    "after_peer_append",
    "after_cache_append",
    "mid_transfer",
    "after_rotate_rename",
    "after_rotate_index",
    "after_conflict_record",
    "after_recover",
    "repair_after_journal",
    "repair_after_log_archived",
    "repair_after_switch",
    "repair_after_peer_record",
)

_armed: dict[str, int] = {}
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition("@")
        if name not in POINTS:
            raise ValueError(f"TWINLOG_FAILPOINTS: unknown failpoint {name!r}; known: {POINTS}")
        armed[name] = int(nth) if nth else 1
    return armed


_armed = _parse(os.environ.get("TWINLOG_FAILPOINTS", ""))
ACTIVE = bool(_armed)


def hit(name: str) -> None:
    """Die here if ``name`` is armed and this is its N-th hit."""
    nth = _armed.get(name)
    if nth is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)
