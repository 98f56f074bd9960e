"""A writer process for the history checker:
``python history_writer.py CONFIG_JSON PREFIX [PACE [KIND [SEED]]]``.

Writes entries ``PREFIX-0``, ``PREFIX-1``, ... until killed, and records each acknowledged entry on
stdout, one line each, written before the next call starts (``stdin``: as its id arrives):

``ack <id> <i> <start> <end> <lock_wait_threads> <one_trip> [<batch>]``
    the entry of message ``PREFIX-<i>`` was acknowledged under ``<id>``; ``start``/``end`` are
    ``time.monotonic()`` around the call (CLOCK_MONOTONIC: comparable across processes),
    ``lock_wait_threads`` counts this process's threads named ``twinlog-lock-wait`` afterwards,
    and ``one_trip`` is 1 if the call's own commit reached the peer in one round trip. ``batch``
    (``write_many`` only) numbers the call within the writer: entries with the same one were
    acknowledged together by one commit.
``err <i> <start> <end> <exception type>: <text>``
    the call for the entries from ``PREFIX-<i>`` raised; none of them is acknowledged (each may or
    may not be in the log).

``KIND`` says how the writer writes:

``write`` (the default)
    ``TwinLog.write()``, one entry per call.
``write_many``
    ``TwinLog.write_many()`` with batches of 1 to 50 ``(msg, fields)`` items; every entry of a
    returned batch is acknowledged with the batch's start and end.
``stdin``
    ``twinlog write -``, the command line reading one message per line: this process becomes the
    command (``exec``, so a kill or a failpoint from ``TWINLOG_FAILPOINTS`` hits the command
    itself), and a forked child feeds it bursts of 1 to 50 lines while earlier ones are still in
    flight (at most ``WINDOW``), and acknowledges each line when the command prints its id: the
    command prints one id per logged line, in order, and every line fed is a valid message, so
    the n-th id is the n-th line's. ``start`` is when the line was fed, ``end`` when its id was
    read; ``lock_wait_threads`` and ``one_trip`` are 0 (the command's process is not this one).

``PACE`` (seconds, default 0) is slept per entry written, after each call (``stdin``: after each
burst), to keep CPU use modest. ``SEED`` draws the batch sizes. A record is one ``write(2)`` (a
batch's records one), so a SIGKILL never leaves half a record: a line without its newline simply
never happens, and the parent ignores one if it ever does.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pairlib import write_toml
from twinlog import Config, TwinLog

KINDS = ("write", "write_many", "stdin")
MAX_BATCH = 50
WINDOW = 200  # stdin: lines fed whose ids have not come back yet, at most
ENTRY_ID = re.compile(rb"[^:\s]+:[0-9]+")


def lock_wait_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "twinlog-lock-wait")


def error_record(i: int, start: float, end: float, exc: Exception) -> bytes:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return f"err {i} {start:.6f} {end:.6f} {text}\n".encode()


def write_in_calls(
    config: Config, prefix: str, pace: float, sizes: Callable[[], int] | None
) -> None:
    """``write()`` when ``sizes`` is None (one entry per call), else ``write_many()`` with
    batches of ``sizes()`` entries."""
    out = sys.stdout.fileno()
    with TwinLog(config) as log:
        i, call = 0, 0
        while True:
            size = sizes() if sizes is not None else 1
            trips = log.peer_worker_stats()["one_trip"]
            start = time.monotonic()
            try:
                if sizes is None:
                    entries = [log.write(f"{prefix}-{i}", writer=prefix, i=i)]
                else:
                    items = [
                        (f"{prefix}-{k}", {"writer": prefix, "i": k}) for k in range(i, i + size)
                    ]
                    entries = log.write_many(items)
            except Exception as exc:
                os.write(out, error_record(i, start, time.monotonic(), exc))
                time.sleep(0.05)
            else:
                end = time.monotonic()
                one = int(log.peer_worker_stats()["one_trip"] > trips)
                head = f"{start:.6f} {end:.6f} {lock_wait_threads()} {one}"
                tail = "" if sizes is None else f" {call}"
                records = "".join(
                    f"ack {e.id} {k} {head}{tail}\n"
                    for k, e in zip(range(i, i + size), entries, strict=True)
                )
                os.write(out, records.encode())
            i += size
            call += 1
            if pace > 0:
                time.sleep(pace * size)


def write_through_stdin(config: Config, prefix: str, pace: float, rng: random.Random) -> None:
    """Become ``twinlog write -``; a forked child feeds it and records its acknowledgements."""
    fd, config_path = tempfile.mkstemp(prefix=f"{prefix}-", suffix=".toml")
    os.close(fd)
    write_toml(Path(config_path), config.to_dict())
    to_cli, feed = os.pipe2(os.O_CLOEXEC)
    ids, from_cli = os.pipe2(os.O_CLOEXEC)
    if os.fork() == 0:
        status = 0
        try:
            os.close(to_cli)
            os.close(from_cli)
            feed_and_record(feed, ids, prefix, pace, rng)
        except BaseException:
            traceback.print_exc()
            status = 1
        os.unlink(config_path)  # the command has read it: it is gone
        os._exit(status)
    os.dup2(to_cli, 0)
    os.dup2(from_cli, 1)
    command = [sys.executable, "-m", "twinlog", "write", "--config", config_path]
    os.execv(sys.executable, [*command, "--field", f"writer={prefix}", "-"])


def feed_and_record(feed: int, ids: int, prefix: str, pace: float, rng: random.Random) -> None:
    """Feed bursts of lines to the command on ``feed``; acknowledge each line as its id comes
    back on ``ids``. Returns when the command is gone."""
    out = sys.stdout.fileno()
    fed: collections.deque[tuple[int, float]] = collections.deque()  # (i, start) not yet acked
    room = threading.Condition()
    gone = threading.Event()

    def acknowledge(lines: list[bytes], end: float) -> tuple[bytes, bool]:
        """The records for ids read at ``end``; False once a line is not an id for a line fed
        (which line an id is for is lost then: stop acknowledging)."""
        records = []
        with room:
            for line in lines:
                if not ENTRY_ID.fullmatch(line) or not fed:
                    i, start = fed[0] if fed else (-1, 0.0)
                    text = f"unexpected output {line[:80]!r}"
                    records.append(f"err {i} {start:.6f} {end:.6f} {text}\n".encode())
                    return b"".join(records), False
                i, start = fed.popleft()
                records.append(f"ack {line.decode()} {i} {start:.6f} {end:.6f} 0 0\n".encode())
            room.notify()
        return b"".join(records), True

    def record() -> None:
        with os.fdopen(ids, "rb", buffering=0) as stream:
            pending, going = b"", True
            while going and (data := stream.read(1 << 16)):
                end = time.monotonic()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                records, going = acknowledge(lines, end)
                os.write(out, records)
        gone.set()
        with room:
            room.notify()

    reader = threading.Thread(target=record, name="history-stdin-acks", daemon=True)
    reader.start()
    i = 0
    try:
        while not gone.is_set():
            size = rng.randint(1, MAX_BATCH)
            with room:
                while len(fed) + size > WINDOW and not gone.is_set():
                    room.wait()
                start = time.monotonic()
                fed.extend((k, start) for k in range(i, i + size))
            burst = memoryview("".join(f"{prefix}-{k}\n" for k in range(i, i + size)).encode())
            while burst:
                burst = burst[os.write(feed, burst) :]
            i += size
            if pace > 0:
                time.sleep(pace * size)
    except BrokenPipeError:
        pass  # the command died (killed, or at a failpoint): what it printed is in
    os.close(feed)
    reader.join()


def main() -> None:
    config = Config.from_mapping(json.loads(sys.argv[1]))
    prefix = sys.argv[2]
    pace = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    kind = sys.argv[4] if len(sys.argv) > 4 else "write"
    rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    if kind == "write":
        write_in_calls(config, prefix, pace, None)
    elif kind == "write_many":
        write_in_calls(config, prefix, pace, lambda: rng.randint(1, MAX_BATCH))
    elif kind == "stdin":
        write_through_stdin(config, prefix, pace, rng)
    else:
        raise SystemExit(f"history_writer: unknown kind {kind!r}; known: {', '.join(KINDS)}")


if __name__ == "__main__":
    main()
