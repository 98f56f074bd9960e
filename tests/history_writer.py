"""A writer process for the history checker: ``python history_writer.py CONFIG_JSON PREFIX [PACE]``.

Writes entries ``PREFIX-0``, ``PREFIX-1``, ... until killed, and records each operation on stdout,
one line each, written before the next write starts:

``ack <id> <i> <start> <end> <lock_wait_threads> <one_trip>``
    ``write()`` returned ``<id>`` for message ``PREFIX-<i>``; ``start``/``end`` are
    ``time.monotonic()`` around the call (CLOCK_MONOTONIC: comparable across processes),
    ``lock_wait_threads`` counts this process's threads named ``twinlog-lock-wait`` afterwards,
    and ``one_trip`` is 1 if the write's own commit reached the peer in one round trip.
``err <i> <start> <end> <exception type>: <text>``
    ``write()`` raised; the entry is not acknowledged (it may or may not be in the log).

``PACE`` (seconds, default 0) is slept between writes to keep CPU use modest. The line is one
``write(2)`` of a few dozen bytes, so a SIGKILL never leaves half a record: a line without its
newline simply never happens, and the parent ignores one if it ever does.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from twinlog import Config, TwinLog


def lock_wait_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "twinlog-lock-wait")


def main() -> None:
    config = Config.from_mapping(json.loads(sys.argv[1]))
    prefix = sys.argv[2]
    pace = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    out = sys.stdout.fileno()
    with TwinLog(config) as log:
        i = 0
        while True:
            trips = log.peer_worker_stats()["one_trip"]
            start = time.monotonic()
            try:
                entry = log.write(f"{prefix}-{i}", writer=prefix, i=i)
            except Exception as exc:
                end = time.monotonic()
                text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                os.write(out, f"err {i} {start:.6f} {end:.6f} {text}\n".encode())
                time.sleep(0.05)
            else:
                end = time.monotonic()
                one = int(log.peer_worker_stats()["one_trip"] > trips)
                line = f"ack {entry.id} {i} {start:.6f} {end:.6f} {lock_wait_threads()} {one}\n"
                os.write(out, line.encode())
            i += 1
            if pace > 0:
                time.sleep(pace)


if __name__ == "__main__":
    main()
