"""twinlog benchmarks: ``python -m benchmarks`` measures twinlog against raw baselines.

Every row runs twinlog and its baseline in the same run, on the same directories of the same
file system (a pair of temporary directories cross bind-mounted, as in ``tests/pairlib.py``).
See docs/benchmarks.md for the table, the machine and the exact command.
"""

from __future__ import annotations

__all__ = ["ROW_KEYS"]

#: The key of every row one run prints, in order (the smoke test checks them all).
ROW_KEYS = (
    "single.peer_up.p50",
    "single.peer_up.p99",
    "single.peer_up.floor",
    "single.peer_up.floor2",
    "single.peer_down.p50",
    "single.peer_down.p99",
    "overhead.peer_up",
    "overhead.peer_down",
    "concurrent.one_node.1",
    "concurrent.one_node.2",
    "concurrent.one_node.4",
    "concurrent.one_node.8",
    "concurrent.both_nodes.1",
    "concurrent.both_nodes.2",
    "concurrent.both_nodes.4",
    "concurrent.both_nodes.8",
    "concurrent.threads.8",
    "batch.10",
    "batch.100",
    "batch.1000",
    "rsyslog.omprog",
    "burst.rsyslog.per_message",
    "burst.rsyslog.batched",
    "burst.write.1",
    "burst.write.8",
    "burst.write_many.10",
    "burst.write_many.100",
    "burst.write_many.1000",
    "burst.write_many.8x100",
    "burst.omprog.durable",
    "burst.omprog.burst",
    "fast.one_trip.disk",
    "fast.alone.disk",
    "fast.one_trip.tmpfs",
    "fast.alone.tmpfs",
    "fast.alone.eight",
    "fast.regroup.eight",
    "fast.counted_drain",
    "drain.time",
    "drain.rss",
    "read.time",
    "read.rss",
    "verify.time",
    "verify.rss",
    "chain.seal",
    "chain.status",
    "chain.deep",
    "seek.window.time",
    "seek.window.rss",
    "seek.tail.time",
    "probe.cost",
    "probe.identity",
    "probe.hung",
    "probe.recover",
)
