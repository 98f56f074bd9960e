"""A private rsyslogd for tests and benchmarks: its own configuration, work directory, pid file
and socket, running the shipped contrib/rsyslog/twinlog.conf rendered with a pair's paths.
Never the system's service, never /dev/log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["BURST_CONF", "CONTRIB_CONF", "Rsyslogd", "find_rsyslogd", "render_contrib"]

REPO = Path(__file__).resolve().parent.parent
CONTRIB_CONF = REPO / "contrib" / "rsyslog" / "twinlog.conf"
#: The shipped variant for bursts: a memory queue and omprog transactions (docs/ingest.md).
BURST_CONF = REPO / "contrib" / "rsyslog" / "twinlog-burst.conf"
#: What the shipped file names that a test replaces: the service user, the command, its config.
SHIPPED_USER = "--reuid=twinlog --regid=twinlog"
SHIPPED_TWINLOG = "/opt/twinlog/venv/bin/twinlog"
SHIPPED_CONFIG = "/etc/twinlog/twinlog.toml"


def find_rsyslogd() -> str | None:
    return shutil.which("rsyslogd") or next(
        (p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(p, os.X_OK)), None
    )


def twinlog_command() -> str:
    """The twinlog of this checkout's virtualenv (the console script beside the interpreter)."""
    script = Path(sys.executable).with_name("twinlog")
    if not script.exists():
        raise FileNotFoundError(f"no twinlog console script beside {sys.executable}")
    return os.fspath(script)


def render_contrib(config: Path, *, text: str | None = None) -> str:
    """The shipped file with this checkout's twinlog, ``config`` and the current user."""
    shipped = CONTRIB_CONF.read_text(encoding="utf-8") if text is None else text
    for old in (SHIPPED_USER, SHIPPED_TWINLOG, SHIPPED_CONFIG):
        assert shipped.count(old) == 1, f"{old!r} not once in {CONTRIB_CONF}"
    user = f"--reuid={os.geteuid()} --regid={os.getegid()}"
    return (
        shipped.replace(SHIPPED_USER, user)
        .replace(SHIPPED_TWINLOG, twinlog_command())
        .replace(SHIPPED_CONFIG, os.fspath(config))
    )


class Rsyslogd:
    """``rsyslogd -n`` with a configuration of its own in ``work``; ``extra`` is appended (the
    twinlog part, and for benchmarks a baseline action)."""

    def __init__(self, work: Path, extra: str) -> None:
        self.work = work
        self.spool = work / "spool"  # rsyslog's work directory: the disk queue lives here
        # A unix socket's path has at most 107 bytes: not under a deep temporary directory.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="twinlog-rsyslogd-"))
        self.socket = self._socket_dir / "log.sock"
        self.pidfile = work / "rsyslogd.pid"
        self.conf = work / "rsyslog.conf"
        self.own_log = work / "rsyslogd.log"
        self.spool.mkdir(parents=True, exist_ok=True)
        binary = find_rsyslogd()
        if binary is None:
            raise FileNotFoundError("rsyslogd is not installed (apt-get install rsyslog)")
        self.binary = binary
        self.conf.write_text(
            f'global(workDirectory="{self.spool}")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            # The sender's pid from the socket's credentials, as docs/ingest.md advises for
            # the system socket (imuxsock's SysSock.UsePIDFromSystem).
            f'input(type="imuxsock" Socket="{self.socket}" UsePIDFromSystem="on")\n'
            # One main worker: messages reach the actions in the order they arrived.
            'main_queue(queue.workerThreads="1")\n'
            'if $syslogfacility-text == "syslog" then {\n'
            f'    action(type="omfile" file="{self.own_log}")\n'
            "    stop\n"
            "}\n" + extra,
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """rsyslogd -N1: the configuration is valid (raises with rsyslogd's words)."""
        proc = subprocess.run(
            [self.binary, "-N1", "-f", os.fspath(self.conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rsyslogd -N1 failed:\n{proc.stdout}{proc.stderr}")

    def start(self, timeout: float = 20.0) -> None:
        self.pidfile.unlink(missing_ok=True)
        with open(self.work / "rsyslogd.out", "ab") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [self.binary, "-n", "-f", os.fspath(self.conf), "-i", os.fspath(self.pidfile)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not (self.socket.exists() and self.pidfile.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd did not start: {self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        texts = []
        for path in (self.work / "rsyslogd.out", self.own_log):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(texts)

    def kill(self) -> None:
        """SIGKILL rsyslogd and everything it started (omprog's twinlog too, as a crash would
        leave it: it sees EOF on stdin and ends)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: rsyslogd saves its queues and ends."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Rsyslogd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(timeout=10)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
