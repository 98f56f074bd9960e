"""``twinlog demo``: a two-node pair in a temporary directory, cut apart, healed, compared.

Node ``alpha``'s ``peer_dir`` is a bind mount of ``beta``'s ``log_dir`` and the other way round,
as NFS mounts would be between two machines; cutting the link is a lazy unmount. Without root
(or without ``mount --bind``) each node reaches the other's ``log_dir`` through the switched
link of ``twinlog.testing`` (``require_mount=False``); the demo says so. Everything is unmounted
and removed at the end, also after an error, Ctrl-C or SIGTERM.
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
from twinlog.entry import Entry
from twinlog.testing import TwoNodes, mount_points

__all__ = ["NODES", "run_demo"]

NODES = ("alpha", "beta")
_COLUMN = 44
_TIMEOUTS = {"probe_timeout": 1.0, "io_timeout": 2.0, "lock_timeout": 5.0}


def _other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def _try_mounts(root: Path) -> str | None:
    """None when bind mounts work here, else why not."""
    if os.geteuid() != 0:
        return "bind mounts need root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    probe = TwoNodes(root / "probe", mounts=True, nodes=NODES)
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
            pair = TwoNodes(root, mounts=why_not is None, nodes=NODES, **_TIMEOUTS)
            return _story(out, pair, logs, why_not)
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


class _Story:
    """What the demo says, and the two nodes it says it about."""

    def __init__(self, out: TextIO, pair: TwoNodes, logs: dict[str, TwinLog]) -> None:
        self.out, self.pair, self.logs = out, pair, logs

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def write(self, node: str, msg: str, **fields: str) -> None:
        log = self.logs[node]
        entry = log.write(msg, level=fields.pop("level", "INFO"), **fields)
        where = (
            f"delivered to {_other(node)}"
            if log.last_reason == "ok"
            else f"cached: {_other(node)} unreachable ({log.last_reason})"
        )
        self.say(f"  {node:<5} wrote {entry.id:<8} {msg!r:<23} {where}")

    def status_line(self, node: str) -> None:
        summary = status_summary(self.logs[node].status()).split(" | ")[0]
        self.say(f"  status on {node}: {summary}")


def _story(out: TextIO, pair: TwoNodes, logs: dict[str, TwinLog], why_not: str | None) -> int:
    story = _Story(out, pair, logs)
    story.say(f"twinlog demo: two nodes, {NODES[0]} and {NODES[1]}, under {pair.root}")
    if why_not is None:
        story.say("  each node's peer_dir is a bind mount of the other's log_dir (as NFS would be)")
    else:
        story.say(f"  FALLBACK: {why_not}; each node reaches the other's log_dir through a")
        story.say("  switched link, with require_mount=False. Same algorithm, no real mount point.")
    for node in NODES:
        logs[node] = pair.open(node)  # creates log_dir's identity marker
    pair.connect()
    _connected(story)
    _cut(story)
    _healed(story)
    views = _views(story)
    return _verified(story, views)


def _connected(story: _Story) -> None:
    alpha, beta = NODES
    story.say()
    story.say("1. Connected: both nodes write; every entry goes to both logs at once.")
    story.write(alpha, "cluster formed")
    story.write(beta, "beta joined", level="NOTICE")
    story.write(alpha, "vip up on alpha", resource="vip")


def _cut(story: _Story) -> None:
    alpha, beta = NODES
    story.say()
    how = "lazy unmount of both peer_dirs" if story.pair.mounts else "both directions"
    story.say(f"2. The link is cut ({how}); both nodes keep writing.")
    story.pair.cut()
    story.write(beta, "alpha not answering", level="WARNING")
    story.write(alpha, "beta not answering", level="WARNING")
    story.write(beta, "taking over the vip", resource="vip")
    story.write(alpha, "set maxconn=500")
    story.status_line(alpha)


def _healed(story: _Story) -> None:
    alpha, beta = NODES
    story.say()
    story.say("3. The link heals; one reconcile on alpha delivers both caches.")
    story.pair.connect()
    story.status_line(alpha)
    result = story.logs[alpha].reconcile()
    story.say(
        f"  reconcile on {alpha}: pushed {result.pushed} to {beta}, pulled {result.pulled} "
        f"from {beta} (peer reachable: {result.peer_reachable})"
    )
    story.write(beta, "vip stays on beta", level="NOTICE")


def _views(story: _Story) -> dict[str, list[Entry]]:
    alpha, beta = NODES
    story.say()
    story.say("4. Each node reads its own log (TwinLog.read(): merged, ordered by time):")
    views = {node: list(story.logs[node].read()) for node in NODES}
    left_title, right_title = f"{alpha}'s view", f"{beta}'s view"
    story.say(f"  {left_title:<{_COLUMN}}   {right_title}")
    story.say(f"  {'-' * _COLUMN}   {'-' * _COLUMN}")
    for left, right in zip(views[alpha], views[beta], strict=False):
        mark = " " if left == right else "!"
        story.say(f"  {_cell(left):<{_COLUMN}} {mark} {_cell(right)}")
    for extra in views[alpha][len(views[beta]) :]:
        story.say(f"  {_cell(extra):<{_COLUMN}} !")
    for extra in views[beta][len(views[alpha]) :]:
        story.say(f"  {'':<{_COLUMN}} ! {_cell(extra)}")
    return views


def _verified(story: _Story, views: dict[str, list[Entry]]) -> int:
    alpha, beta = NODES
    story.say()
    story.say("5. verify (entry by entry, by id):")
    in_sync = True
    for node in NODES:
        check = story.logs[node].verify()
        in_sync = in_sync and check.in_sync
        verdict = "IN SYNC" if check.in_sync else "NOT IN SYNC"
        story.say(
            f"  on {node:<5}: {verdict} - {check.local_entries} entries here, "
            f"{check.peer_entries} on {check.peer}; missing here {check.missing_on_local or 'none'}"
            f", missing there {check.missing_on_peer or 'none'}"
        )
    same = [e.to_dict() for e in views[alpha]] == [e.to_dict() for e in views[beta]]
    story.say("  identical views on both nodes: " + ("yes" if same else "NO"))
    story.say()
    return 0 if in_sync else 1
