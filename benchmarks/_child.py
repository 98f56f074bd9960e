"""Child processes of the benchmarks: ``python -m benchmarks._child TASK ARGS_JSON``.

Each task prints one JSON object as its last line. Peak memory is the child's own
``ru_maxrss`` and, after the TwinLog is closed (its peer worker waited for), that of its children:
the peer worker is where peer reads and appends happen.

``writer`` serves timed runs: it opens its TwinLog, writes one entry, prints ``ready``, then for
each line ``START END [BATCH]`` (``time.monotonic()`` values, system-wide on Linux) read from stdin
writes from START until END, with ``write()`` or, given BATCH, ``write_many()`` of BATCH entries,
and prints how many entries it wrote in calls completed in that window; an empty line or EOF
ends it.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from typing import Any

from twinlog import Config, TwinLog

__all__ = ["main"]


def _rss_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rss_mb": own, "worker_rss_mb": children}


def _writer(args: dict[str, Any]) -> dict[str, Any]:
    config = Config.from_mapping(args["config"])
    msg: str = args["msg"]
    threads: int = args.get("threads", 1)
    with TwinLog(config) as log:
        if args.get("plain"):
            from benchmarks.fastpaths import make_plain  # noqa: PLC0415 - fast-path rows only

            make_plain(log, args["plain"])
        log.write(msg, warmup=True)  # starts the peer worker outside the timed window
        print("ready", flush=True)
        for command in sys.stdin:
            if not command.strip():
                break
            start, end, *batch = command.split()
            timed = _timed_writes(
                log, msg, threads, float(start), float(end), batch=int(batch[0]) if batch else 1
            )
            print(json.dumps(timed), flush=True)
    return {"done": True}


def _timed_writes(
    log: TwinLog, msg: str, threads: int, start: float, end: float, *, batch: int = 1
) -> dict[str, Any]:
    counts = [0] * threads
    items = [msg] * batch
    latencies: list[list[float]] = [[] for _ in range(threads)]
    group_before = dict(log.group_stats)
    trips_before = log.peer_worker_stats()["one_trip"]

    def loop(index: int) -> None:
        time.sleep(max(0.0, start - time.monotonic()))
        lat = latencies[index]
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            if batch == 1:
                log.write(msg, writer=index)
            else:
                log.write_many(items)
            t1 = time.monotonic()
            if t1 <= end:
                counts[index] += batch
                lat.append(t1 - t0)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    all_lat = sorted(x for lat in latencies for x in lat)
    p50 = all_lat[len(all_lat) // 2] if all_lat else float("nan")
    stats = log.peer_worker_stats()
    return {
        "count": sum(counts),
        "p50": p50,
        "reason": log.last_reason,
        "spawned": stats["spawned"],
        "killed": stats["killed"],
        # How this window's commits went: alone, as leader, as follower (see _group.py).
        "group": {k: v - group_before.get(k, 0) for k, v in log.group_stats.items()},
        # Of those (alone or led), how many reached the peer in one round trip (node a only).
        "one_trip": stats["one_trip"] - trips_before,
    }


def _batches(args: dict[str, Any]) -> dict[str, Any]:
    """For each of ``sizes``, ``duration`` seconds of write_many() in batches of that size
    (``write()`` for 1): entries written, calls, seconds."""
    config = Config.from_mapping(args["config"])
    msg: str = args["msg"]
    windows = []
    with TwinLog(config) as log:
        log.write(msg, warmup=True)  # starts the peer worker outside the timed windows
        for size in args["sizes"]:
            items = [msg] * size
            entries = calls = 0
            t0 = time.monotonic()
            end = t0 + args["duration"]
            while time.monotonic() < end:
                if size == 1:
                    log.write(msg)
                else:
                    log.write_many(items)
                entries += size
                calls += 1
            windows.append(
                {
                    "size": size,
                    "entries": entries,
                    "calls": calls,
                    "seconds": time.monotonic() - t0,
                    "reason": log.last_reason,
                }
            )
    return {"windows": [(w["size"], w) for w in windows]}


def _drain(args: dict[str, Any]) -> dict[str, Any]:
    config = Config.from_mapping(args["config"])
    if args.get("plain_drain") == "plain":
        # The fast-path rows' plain drain: the counted one moves nothing (see fastpaths.py).
        from twinlog import _drain as drain  # noqa: PLC0415

        drain._counted_runs = lambda *a: (0, a[3], 0)
    start_rss = _rss_mb()["rss_mb"]
    t0 = time.perf_counter()
    with TwinLog(config) as log:
        # Start the peer worker first, as a running writer would have it: not part of the drain.
        log._sides.reach.remote.call("stat", "twinlog.node", timeout=30)
        t1 = time.perf_counter()
        result = log.reconcile()
        t2 = time.perf_counter()
    return {
        "open_s": t1 - t0,
        "reconcile_s": t2 - t1,
        "pushed": result.pushed,
        "reason": result.reason,
        "start_rss_mb": start_rss,
        **_rss_mb(),
    }


def _read(args: dict[str, Any]) -> dict[str, Any]:
    config = Config.from_mapping(args["config"])
    start_rss = _rss_mb()["rss_mb"]
    # A window (since/until) or the last entries (last), as benchmarks/seek.py asks.
    query = {key: args[key] for key in ("since", "until", "last") if key in args}
    with TwinLog(config) as log:
        t0 = time.perf_counter()
        count = sum(1 for _ in log.read(**query))
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "entries": count, "start_rss_mb": start_rss, **_rss_mb()}


def _verify(args: dict[str, Any]) -> dict[str, Any]:
    config = Config.from_mapping(args["config"])
    start_rss = _rss_mb()["rss_mb"]
    with TwinLog(config) as log:
        t0 = time.perf_counter()
        result = log.verify()
        elapsed = time.perf_counter() - t0
    return {
        "seconds": elapsed,
        "in_sync": result.in_sync,
        "entries": result.local_entries,
        "reason": result.reason,
        "start_rss_mb": start_rss,
        **_rss_mb(),
    }


_TASKS = {
    "writer": _writer,
    "batches": _batches,
    "drain": _drain,
    "read": _read,
    "verify": _verify,
}


def main() -> None:
    task, raw = sys.argv[1], sys.argv[2]
    result = _TASKS[task](json.loads(raw))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
