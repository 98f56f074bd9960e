"""The hybrid logical clock behind every entry's ``ts``.

``ts`` is wall-clock time in microseconds, except that it never goes backwards on a node and
always moves past every timestamp the node has already seen in its log (its own entries and the
peer's). Sorting by ``(ts, node, seq)`` therefore keeps each node's write order and puts an entry
after everything its writer could have seen, even if the wall clock steps back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twinlog.entry import format_ts, parse_ts

__all__ = ["HybridClock"]


class HybridClock:
    """Allocates strictly increasing timestamps above a floor (the newest ``ts`` seen)."""

    def __init__(self, wall_micros: Callable[[], int] | None = None) -> None:
        self._wall = wall_micros or (lambda: time.time_ns() // 1000)

    def next_after(self, floor_ts: str | None, count: int = 1) -> list[str]:
        """``count`` increasing timestamps, each later than ``floor_ts`` and not before now."""
        start = self._wall()
        if floor_ts:
            start = max(start, parse_ts(floor_ts) + 1)
        return [format_ts(start + i) for i in range(count)]
