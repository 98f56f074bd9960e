"""Bursts (issue 19): entries per second durable on both nodes, rsyslog against twinlog, one run.

rsyslog's rows run two private rsyslogd on 127.0.0.1 (tests/rsysloglib.py: own configuration,
work directory and sockets, started and stopped here): the first takes datagrams on its socket,
as syslog(3) sends them, and forwards them with ``omrelp`` to the second, which writes them with
``omfile`` and ``sync="on"``. Per message: the receiver's queue hands ``omfile`` one message per
batch (an fsync each) and the RELP window is 1; batched: batches of up to 1,024 and a window of
1,024. The sender is told nothing (a datagram); a message counts as durable on both once its line
is in the second instance's file and an ``fsync`` of that file by the benchmark has returned
(the clock stops there).

twinlog's rows write on node a of a connected pair: each entry counted was durable on both nodes
when its call returned. ``write()`` with 1 and 8 processes, ``write_many()`` of 10, 100 and 1,000
from one process and of 100 from 8, each for ``--duration`` seconds. rsyslog -> omprog -> twinlog
runs a private rsyslogd with the shipped contrib/rsyslog/twinlog.conf, then with its burst variant
twinlog-burst.conf, and counts lines in node b's log as rsyslog's rows count theirs (node a's
writer fsyncs each before it answers ``OK``).

Every twinlog row's ratio is against the rate rsyslog's batched mode made durable in this run
(the issue's target: >= 1 for batches of 100 or more and for omprog). Latency p50 until durable
on both is measured one message at a time (the next sent once the last is durable).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._env import REPO_ROOT, BenchPair, Row, bench_pair
from benchmarks.latency import MESSAGE
from benchmarks.throughput import _spec, _Writers

__all__ = ["BURST_BATCHES", "run_burst"]

sys.path.insert(0, str(REPO_ROOT / "tests"))
from rsysloglib import BURST_CONF, CONTRIB_CONF, Rsyslogd, find_rsyslogd, render_contrib

#: write_many() batch sizes of one process, and the batch of each of eight processes.
BURST_BATCHES = (10, 100, 1000)
EIGHT_BATCH = 100
WIDE = 1024
#: At most this many messages one at a time for a latency p50.
LATENCY_SAMPLES = 300


class _Tail:
    """Counts the lines of a file that grows, reading only what was added since last time."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1  # a line counts once whole
        self.offset += end
        self.lines += data.count(b"\n", 0, end)
        return self.lines

    def wait_for(self, lines: int, timeout: float, why: Rsyslogd, pause: float = 0.002) -> None:
        """Until the file has ``lines`` lines, then fsync it: they are durable when this returns."""
        deadline = time.monotonic() + timeout
        while self.count() < lines:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.lines} of {lines} lines\n{why.output()}")
            time.sleep(pause)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _send(sock: socket.socket, where: Path, i: int) -> None:
    data = f"<174>bench[4242]: {MESSAGE} #{i}".encode()
    while True:
        try:
            sock.sendto(data, os.fspath(where))
            return
        except BlockingIOError:
            time.sleep(0.001)


def _measure(rsyslogd: Rsyslogd, landed: Path, messages: int, samples: int) -> tuple[float, float]:
    """(entries/s, p50 seconds) of ``messages`` sent at once and ``samples`` one at a time, each
    until durable in ``landed``; one message first, outside the clock (omprog starts twinlog)."""
    tail = _Tail(landed)
    done = tail.count()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        _send(sock, rsyslogd.socket, -1)
        done += 1
        tail.wait_for(done, 120, rsyslogd)
        latencies = []
        for i in range(samples):
            t0 = time.perf_counter()
            _send(sock, rsyslogd.socket, i)
            done += 1
            tail.wait_for(done, 120, rsyslogd, pause=0.0002)
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(messages):
            _send(sock, rsyslogd.socket, i)
        tail.wait_for(done + messages, 600, rsyslogd)
        seconds = time.perf_counter() - t0
    return messages / seconds, statistics.median(latencies)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _relp_pair(work: Path, batched: bool) -> Iterator[tuple[Rsyslogd, Path]]:
    """The sender (its socket takes the messages) and the file the receiver syncs them to."""
    port, out = _free_port(), work / "receiver" / "messages.log"
    batch, window = (WIDE, WIDE) if batched else (1, 1)
    receiver_conf = (
        'module(load="imrelp")\n'
        f'input(type="imrelp" address="127.0.0.1" port="{port}" ruleset="relp")\n'
        f'ruleset(name="relp" queue.type="LinkedList" queue.dequeueBatchSize="{batch}") {{\n'
        f'    action(type="omfile" file="{out}" sync="on" template="RSYSLOG_FileFormat")\n'
        "}\n"
    )
    sender_conf = (
        'module(load="omrelp")\n'
        'if prifilt("local5.*") then {\n'
        f'    action(type="omrelp" target="127.0.0.1" port="{port}" windowSize="{window}"\n'
        f'           queue.type="LinkedList" queue.dequeueBatchSize="{batch}"\n'
        '           action.resumeRetryCount="-1")\n'
        "}\n"
    )
    with (
        Rsyslogd(work / "receiver", receiver_conf) as receiver,
        Rsyslogd(work / "sender", sender_conf) as sender,
    ):
        receiver.start()
        sender.start()
        yield sender, out


def _rsyslog_row(
    work: Path, batched: bool, messages: int, samples: int
) -> tuple[Row, float, float]:
    """The row, its rate and its latency p50."""
    with _relp_pair(work, batched) as (sender, out):
        rate, p50 = _measure(sender, out, messages, samples)
    mode = (
        "fsync per batch (up to 1,024), RELP window 1,024"
        if batched
        else ("fsync per message, RELP window 1")
    )
    row = Row(
        key=f"burst.rsyslog.{'batched' if batched else 'per_message'}",
        label=f"rsyslog alone: {mode}, to a second rsyslogd on 127.0.0.1",
        twinlog="-",
        baseline=f"{rate:.0f} entries/s; p50 {p50 * 1e3:.2f} ms",
        note=(
            f"{messages} messages, then {samples} one at a time; the sender is told nothing "
            "(a datagram); durable once in the second instance's file and synced"
        ),
    )
    return row, rate, p50


def _against(key: str, label: str, rate: float, rsyslog: float, *, target: bool, note: str) -> Row:
    ratio = rate / rsyslog if rsyslog else None
    return Row(
        key=key,
        label=label,
        twinlog=f"{rate:.0f} entries/s",
        baseline=f"{rsyslog:.0f} entries/s (rsyslog batched, this run)",
        ratio=ratio,
        target=">= 1" if target else "",
        met=(ratio is not None and ratio >= 1) if target else None,
        note=note,
    )


def _twinlog_rows(pair: BenchPair, duration: float, rsyslog: float, latency: float) -> list[Row]:
    writers = _Writers([_spec(pair, "a") for _ in range(8)])
    runs: list[tuple[str, str, list[int], int]] = [
        ("burst.write.1", "write(), 1 process", [0], 1),
        ("burst.write.8", "write(), 8 processes", list(range(8)), 1),
        *(
            (f"burst.write_many.{n}", f"write_many() of {n:,}, 1 process", [0], n)
            for n in BURST_BATCHES
        ),
        (
            f"burst.write_many.8x{EIGHT_BATCH}",
            f"write_many() of {EIGHT_BATCH}, 8 processes",
            list(range(8)),
            EIGHT_BATCH,
        ),
    ]
    rows = []
    try:
        for key, what, indices, batch in runs:
            if len(indices) > 1:
                # Idle writers first catch up with what writer 0 wrote alone (up to a few
                # hundred thousand entries): once, outside the clock.
                writers.run(indices, min(duration, 1.0), batch)
            total, results = writers.run(indices, duration, batch)
            p50 = statistics.median(r["p50"] for r in results if r["count"])
            note = f"a call returns once its entries are durable on both; p50 {p50 * 1e3:.2f} ms"
            if key == "burst.write.1":
                note += f" (rsyslog per message: {latency * 1e3:.2f} ms until durable on both)"
            label = f"twinlog {what} on node a, durable on both"
            rows.append(
                _against(key, label, total / duration, rsyslog, target=batch >= 100, note=note)
            )
    finally:
        writers.close()
    return rows


def _omprog_row(pair: BenchPair, burst: bool, messages: int, samples: int, rsyslog: float) -> Row:
    work = Path(tempfile.mkdtemp(prefix="omprog-", dir=pair.root))
    conf = work / "twinlog-a.toml"
    conf.write_text(
        "".join(
            f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {str(v).lower()}\n"
            for k, v in pair.config_dict("a").items()
        )
    )
    shipped = (BURST_CONF if burst else CONTRIB_CONF).read_text(encoding="utf-8")
    with Rsyslogd(work / "rsyslog", render_contrib(conf, text=shipped)) as rsyslogd:
        rsyslogd.start()
        rate, p50 = _measure(rsyslogd, pair.log_dir("b") / "twinlog.log", messages, samples)
    name = "twinlog-burst.conf" if burst else "twinlog.conf (shipped default)"
    told = (
        "memory queue, transactions: OK per transaction, one commit each"
        if burst
        else "disk queue synced per message, OK per message"
    )
    return _against(
        f"burst.omprog.{'burst' if burst else 'durable'}",
        f"rsyslog -> omprog -> twinlog, contrib/rsyslog/{name}",
        rate,
        rsyslog,
        target=True,
        note=f"{messages} messages, then {samples} one at a time: p50 {p50 * 1e3:.2f} ms until "
        f"durable on both; {told}; the sender is told nothing (a datagram)",
    )


def run_burst(base: Path, samples: int, duration: float) -> list[Row]:
    """``samples`` messages through each slow path, ten times that through each fast one."""
    keys = ["burst.rsyslog.per_message", "burst.rsyslog.batched", "burst.omprog.durable"]
    if find_rsyslogd() is None:
        return [Row(key=k, label=k, twinlog="skipped: rsyslogd is not installed") for k in keys]
    one_at_a_time = min(samples, LATENCY_SAMPLES)
    work = Path(tempfile.mkdtemp(prefix="burst-rsyslog-", dir=base))
    try:
        per_message, _, latency = _rsyslog_row(work / "one", False, samples, one_at_a_time)
        batched, rsyslog, _ = _rsyslog_row(work / "batched", True, 10 * samples, one_at_a_time)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [per_message, batched]
    with bench_pair(base, "burst") as pair:
        rows += _twinlog_rows(pair, duration, rsyslog, latency)
        rows.append(_omprog_row(pair, False, samples, one_at_a_time, rsyslog))
        rows.append(_omprog_row(pair, True, 10 * samples, one_at_a_time, rsyslog))
    return rows
