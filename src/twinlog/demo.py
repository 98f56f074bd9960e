"""``twinlog demo``: a two-node pair in a temporary directory, cut apart, healed, compared.

Node ``alpha``'s ``peer_dir`` is a bind mount of ``beta``'s ``log_dir`` and the other way round,
as NFS mounts would be between two machines; cutting the link is a lazy unmount. Without root
(or without ``mount --bind``) the peer directories are symlinks and the nodes run with
``require_mount=False``; the demo says so. Everything is unmounted and removed at the end, also
after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TextIO

from twinlog._api import TwinLog
from twinlog._status_text import status_summary
from twinlog.config import Config
from twinlog.entry import Entry

__all__ = ["NODES", "Links", "run_demo"]

NODES = ("alpha", "beta")
_COLUMN = 44


def _other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def mount_points() -> set[str]:
    """Mount points of this process's namespace (``/proc/self/mounts``, octal escapes decoded)."""
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return {
            line.split()[1].encode("latin-1", "surrogateescape").decode("unicode_escape")
            for line in f
            if len(line.split()) > 1
        }


class Links:
    """The "network" between the two nodes: bind mounts, or symlinks as the fallback."""

    def __init__(self, root: Path, *, mounts: bool) -> None:
        self.root = root
        self.mounts = mounts

    def log_dir(self, node: str) -> Path:
        return self.root / node / "log"

    def peer_dir(self, node: str) -> Path:
        return self.root / node / "peer"

    def is_connected(self, node: str) -> bool:
        if self.mounts:
            return os.fspath(self.peer_dir(node)) in mount_points()
        return self.peer_dir(node).is_symlink()

    def connect(self, node: str) -> None:
        """``node`` reaches its peer: mount (or link) the peer's log_dir at its peer_dir."""
        if self.is_connected(node):
            return
        source, target = self.log_dir(_other(node)), self.peer_dir(node)
        if self.mounts:
            subprocess.run(
                ["mount", "--bind", os.fspath(source), os.fspath(target)],
                check=True,
                capture_output=True,
            )
        else:
            target.rmdir()
            target.symlink_to(source, target_is_directory=True)

    def cut(self, node: str) -> None:
        """``node`` loses its peer. Lazy unmount: a worker may still hold files open."""
        target = self.peer_dir(node)
        if self.mounts:
            while self.is_connected(node):
                subprocess.run(["umount", "-l", os.fspath(target)], check=True, capture_output=True)
        elif target.is_symlink():
            target.unlink()
            target.mkdir()

    def close(self) -> None:
        for node in NODES:
            self.cut(node)


def _try_mounts(root: Path) -> str | None:
    """None when bind mounts work here, else why not."""
    if os.geteuid() != 0:
        return "bind mounts need root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    probe = Links(root / "probe", mounts=True)
    for node in NODES:
        probe.log_dir(node).mkdir(parents=True)
        probe.peer_dir(node).mkdir(parents=True)
    try:
        probe.connect(NODES[0])
        probe.close()
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()
        return "mount --bind failed" + (f": {detail[-1]}" if detail else "")
    finally:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            probe.close()
    shutil.rmtree(probe.root)
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the mounts are removed on ``kill`` too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cell(entry: Entry) -> str:
    text = f"{entry.ts[11:23]} {entry.id:<8} {entry.msg}"
    text = text.translate({c: " " for c in range(0x20)})
    return text if len(text) <= _COLUMN else text[: _COLUMN - 3] + "..."


def run_demo(out: TextIO, *, use_mounts: bool = True) -> int:
    """Run the demo, writing its story to ``out``; 0 when both nodes end in sync."""
    root = Path(tempfile.mkdtemp(prefix="twinlog-demo-"))
    logs: dict[str, TwinLog] = {}
    with _sigterm_as_interrupt():
        try:
            why_not = _try_mounts(root) if use_mounts else "--no-mount was given"
            links = Links(root, mounts=why_not is None)
            return _story(out, root, links, logs, why_not)
        finally:
            with _signals_blocked():  # a second Ctrl-C must not leave mounts behind
                _clean_up(out, root, logs)


def _clean_up(out: TextIO, root: Path, logs: dict[str, TwinLog]) -> None:
    for log in logs.values():
        log.close()
    prefix = os.fspath(root) + os.sep
    try:
        # Whatever is mounted under root (the probe's mount too), deepest first.
        while mounted := sorted((m for m in mount_points() if m.startswith(prefix)), reverse=True):
            for target in mounted:
                subprocess.run(["umount", "-l", target], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        out.write(f"could not unmount the demo's peer directories: {exc}\n")
        out.write(f"left {root} in place: unmount its */peer directories, then remove it\n")
    else:
        shutil.rmtree(root, ignore_errors=True)
        out.write(f"cleaned up {root}\n")
    out.flush()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _story(
    out: TextIO, root: Path, links: Links, logs: dict[str, TwinLog], why_not: str | None
) -> int:
    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    def write(node: str, msg: str, **fields: str) -> None:
        entry = logs[node].write(msg, level=fields.pop("level", "INFO"), **fields)
        where = (
            f"delivered to {_other(node)}"
            if logs[node].last_reason == "ok"
            else f"cached: {_other(node)} unreachable ({logs[node].last_reason})"
        )
        say(f"  {node:<5} wrote {entry.id:<8} {msg!r:<23} {where}")

    say(f"twinlog demo: two nodes, {NODES[0]} and {NODES[1]}, under {root}")
    if why_not is None:
        say("  each node's peer_dir is a bind mount of the other's log_dir (as NFS would be)")
    else:
        say(f"  FALLBACK: {why_not}; peer_dir is a symlink to the other node's log_dir and the")
        say("  nodes run with require_mount=False. Same algorithm, but no real mount point.")
    for node in NODES:
        links.log_dir(node).mkdir(parents=True)
        links.peer_dir(node).mkdir(parents=True)
        config = Config(
            node=node,
            peer=_other(node),
            log_dir=links.log_dir(node),
            peer_dir=links.peer_dir(node),
            probe_timeout=1.0,
            io_timeout=2.0,
            lock_timeout=5.0,
            require_mount=why_not is None,
        )
        logs[node] = TwinLog(config)  # creates log_dir's identity marker
    for node in NODES:
        links.connect(node)
    alpha, beta = NODES

    say()
    say("1. Connected: both nodes write; every entry goes to both logs at once.")
    write(alpha, "cluster formed")
    write(beta, "beta joined", level="NOTICE")
    write(alpha, "vip up on alpha", resource="vip")

    say()
    say("2. The link is cut (lazy unmount of both peer_dirs); both nodes keep writing.")
    links.cut(alpha)
    links.cut(beta)
    write(beta, "alpha not answering", level="WARNING")
    write(alpha, "beta not answering", level="WARNING")
    write(beta, "taking over the vip", resource="vip")
    write(alpha, "set maxconn=500")
    summary = status_summary(logs[alpha].status()).split(" | ")[0]
    say(f"  status on {alpha}: {summary}")

    say()
    say("3. The link heals; one reconcile on alpha delivers both caches.")
    links.connect(alpha)
    links.connect(beta)
    summary = status_summary(logs[alpha].status()).split(" | ")[0]
    say(f"  status on {alpha}: {summary}")
    result = logs[alpha].reconcile()
    say(
        f"  reconcile on {alpha}: pushed {result.pushed} to {beta}, pulled {result.pulled} "
        f"from {beta} (peer reachable: {result.peer_reachable})"
    )
    write(beta, "vip stays on beta", level="NOTICE")

    say()
    say("4. Each node reads its own log (TwinLog.read(): merged, ordered by time):")
    views = {node: list(logs[node].read()) for node in NODES}
    left_title, right_title = f"{alpha}'s view", f"{beta}'s view"
    say(f"  {left_title:<{_COLUMN}}   {right_title}")
    say(f"  {'-' * _COLUMN}   {'-' * _COLUMN}")
    for left, right in zip(views[alpha], views[beta], strict=False):
        mark = " " if left == right else "!"
        say(f"  {_cell(left):<{_COLUMN}} {mark} {_cell(right)}")
    for extra in views[alpha][len(views[beta]) :]:
        say(f"  {_cell(extra):<{_COLUMN}} !")
    for extra in views[beta][len(views[alpha]) :]:
        say(f"  {'':<{_COLUMN}} ! {_cell(extra)}")

    say()
    say("5. verify (entry by entry, by id):")
    in_sync = True
    for node in NODES:
        check = logs[node].verify()
        in_sync = in_sync and check.in_sync
        verdict = "IN SYNC" if check.in_sync else "NOT IN SYNC"
        say(
            f"  on {node:<5}: {verdict} - {check.local_entries} entries here, "
            f"{check.peer_entries} on {check.peer}; missing here {check.missing_on_local or 'none'}"
            f", missing there {check.missing_on_peer or 'none'}"
        )
    say(
        "  identical views on both nodes: "
        + (
            "yes"
            if [e.to_dict() for e in views[alpha]] == [e.to_dict() for e in views[beta]]
            else "NO"
        )
    )
    say()
    return 0 if in_sync else 1
