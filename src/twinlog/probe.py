"""Is the peer reachable? The checks that need no peer I/O, and the list of reasons.

The full probe is three steps, cheapest first:

1. ``peer_dir`` is a mount point, read from ``/proc/self/mounts`` with
   ``psutil.disk_partitions(all=True)`` (that touches no mount, so a hung peer cannot hang it).
   An unmounted ``peer_dir`` is a plain local directory: writing there would silently write to
   our own disk. The table is re-read only when the kernel signals a mount change (poll).
2. No abandoned peer operation of this node is still stuck in the kernel (``twinlog.stuck``):
   starting another would queue behind it, unkillable.
3. In the worker process, within ``probe_timeout``: the directory's identity marker names the
   peer (not us: a bind mount of our own directory; not a stranger), then its lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from pathlib import Path

import psutil

__all__ = ["REASONS", "MountTable", "StuckRegistry"]

#: Why a peer is (not) reachable, as reported by ``TwinLog.status()``.
REASONS = {
    "ok": "peer reachable",
    "not_mounted": "peer_dir is not a mount point",
    "missing": "peer_dir has no twinlog directory (empty mount point or not initialised)",
    "wrong_identity": "peer_dir belongs to another node",
    "self": "peer_dir is this node's own log directory",
    "timeout": "the peer did not answer in time",
    "busy": "the peer's lock was held for longer than io_timeout",
    "io_error": "a peer operation failed",
    "stuck": "an earlier peer operation is still stuck in the kernel",
    "cut": "the link to the peer is cut (twinlog.testing)",
}

STUCK_FILE = "twinlog.stuck"


class MountTable:
    """Mount points of this process's namespace, re-read only after a change."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._mounts: frozenset[str] | None = None
        self._pid = -1
        self._fd = -1
        self._poll: select.poll | None = None
        #: Bumped whenever the table is (re)read because it may have changed: a peer directory
        #: checked under one generation is the same directory while the generation stays.
        self.generation = 0

    def _watch(self) -> None:
        # Kept open: the kernel flags POLLPRI on this descriptor when the mount table changes.
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._pid = os.getpid()
        try:
            self._fd = os.open("/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._poll = None
            return
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLPRI | select.POLLERR)

    def mountpoints(self) -> frozenset[str]:
        with self._guard:
            if self._pid != os.getpid():
                self._watch()
                self._mounts = None
            changed = self._poll is None or bool(self._poll.poll(0))
            if changed or self._mounts is None:
                self._mounts = frozenset(p.mountpoint for p in psutil.disk_partitions(all=True))
                self.generation += 1
            return self._mounts

    def is_mount(self, path: Path) -> bool:
        return os.fspath(path) in self.mountpoints()


class StuckRegistry:
    """Pids of this node's peer workers that were killed but have not died yet."""

    def __init__(self, log_dir: Path) -> None:
        self.path = log_dir / STUCK_FILE
        self._name = os.fspath(self.path)

    def add(self, pid: int) -> None:
        with open(self.path, "a", encoding="ascii") as f:
            f.write(f"{pid}\n")

    def alive(self) -> list[int]:
        try:
            # Asked on every write, and the file almost never exists: a bare stat first.
            os.stat(self._name)
            text = self.path.read_text(encoding="ascii")
        except OSError:  # FileNotFoundError above all
            return []
        pids = []
        for word in text.split():
            if not word.isdigit():
                continue
            pid = int(word)
            try:
                proc = psutil.Process(pid)
                # A recycled pid is not our worker: only a live twinlog worker counts.
                if proc.status() != psutil.STATUS_ZOMBIE and any(
                    "twinlog._worker" in arg for arg in proc.cmdline()
                ):
                    pids.append(pid)
            except psutil.Error:
                continue
        if not pids:
            with contextlib.suppress(OSError):
                self.path.unlink()
        return pids
