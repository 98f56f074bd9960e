"""rsyslog into twinlog: entries per second from a private rsyslogd through ``omprog`` into
``twinlog write --json --confirm -`` (the shipped contrib/rsyslog/twinlog.conf), durable on
both nodes, against the same rsyslogd writing the same messages to a local file with its fsync
on (``omfile`` with ``sync="on"``).

Messages are sent as fast as a datagram socket takes them (as syslog(3) does) and counted as
they land: in node b's log (each there is durable on both nodes), or in the file. The clock
runs from the first send to the last line.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._env import REPO_ROOT, Row, bench_pair

__all__ = ["run_rsyslog"]

sys.path.insert(0, str(REPO_ROOT / "tests"))
from rsysloglib import Rsyslogd, find_rsyslogd, render_contrib

MESSAGE = "vip 10.0.0.10 moved to node b after the health check of node a failed"


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _pump(rsyslogd: Rsyslogd, messages: int, landed: Path, timeout: float) -> float:
    """Seconds from the first send until ``landed`` has ``messages`` lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        started = time.perf_counter()
        for i in range(messages):
            data = f"<174>bench[4242]: {MESSAGE} #{i}".encode()
            while True:
                try:
                    sock.sendto(data, str(rsyslogd.socket))
                    break
                except BlockingIOError:
                    time.sleep(0.001)
        deadline = time.monotonic() + timeout
        while _lines(landed) < messages:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {_lines(landed)} of {messages} landed\n{rsyslogd.output()}"
                )
            time.sleep(0.01)
        return time.perf_counter() - started


def run_rsyslog(base: Path, messages: int) -> list[Row]:
    key = "rsyslog.omprog"
    label = "rsyslog -> omprog -> twinlog write --json --confirm, durable on both nodes"
    if find_rsyslogd() is None:
        return [Row(key=key, label=label, twinlog="skipped: rsyslogd is not installed")]
    with bench_pair(base, "rsyslog") as pair:
        work = Path(tempfile.mkdtemp(prefix="rsyslogd-", dir=pair.root))
        conf = work / "twinlog-a.toml"
        conf.write_text(
            "".join(
                f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {str(v).lower()}\n"
                for k, v in pair.config_dict("a").items()
            )
        )
        with Rsyslogd(work / "twinlog", render_contrib(conf)) as rsyslogd:
            rsyslogd.start()
            twinlog_s = _pump(rsyslogd, messages, pair.log_dir("b") / "twinlog.log", 600)
        out = work / "file" / "messages.log"
        baseline_conf = (
            'if prifilt("local5.*") then {\n'
            f'    action(type="omfile" file="{out}" sync="on" template="RSYSLOG_FileFormat")\n'
            "}\n"
        )
        with Rsyslogd(work / "file", baseline_conf) as rsyslogd:
            rsyslogd.start()
            file_s = _pump(rsyslogd, messages, out, 600)
        # Where the time goes: the same file action behind the shipped file's disk queue.
        queued = work / "queued" / "messages.log"
        queued_conf = (
            'if prifilt("local5.*") then {\n'
            f'    action(type="omfile" file="{queued}" sync="on" template="RSYSLOG_FileFormat"\n'
            '           queue.type="Disk" queue.filename="file" queue.syncQueueFiles="on"\n'
            '           queue.checkpointInterval="1")\n'
            "}\n"
        )
        with Rsyslogd(work / "queued", queued_conf) as rsyslogd:
            rsyslogd.start()
            queued_s = _pump(rsyslogd, messages, queued, 600)
    rate, baseline = messages / twinlog_s, messages / file_s
    return [
        Row(
            key=key,
            label=label,
            twinlog=f"{rate:.0f} entries/s",
            baseline=f"{baseline:.0f} entries/s (omfile sync=on, same rsyslogd setup)",
            ratio=rate / baseline if baseline else None,
            note=(
                f"{messages} messages each; omprog sends the next message after the OK, so "
                "each is one commit; the file behind the same disk queue synced per message: "
                f"{messages / queued_s:.0f} entries/s"
            ),
        )
    ]
