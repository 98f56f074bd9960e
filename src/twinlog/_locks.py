"""Cross-host exclusive locks: POSIX record locks on a dedicated lock file.

Why not ``flock`` (and so not ``filelock.FileLock``): an NFS client emulates flock with a POSIX
lock on the server, but the server's own local flock never conflicts with POSIX locks, so a node
flock()ing its own log does not exclude the peer appending to it through NFS. POSIX record locks
(``fcntl`` F_SETLK) are what the NFS server holds for its clients, so taking one locally and one
through the mount exclude each other. See docs/design.md.

POSIX locks belong to a process and vanish when the process closes *any* descriptor of the file,
so each process opens each lock file once and keeps it open, and an in-process mutex makes the
threads of one process take turns (POSIX locks do not exclude threads of one process).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from twinlog.exceptions import LockTimeoutError

__all__ = ["LOCK_FILE", "PosixLock"]

LOCK_FILE = "twinlog.lock"

_registry_guard = threading.Lock()
_thread_mutexes: dict[tuple[int, int], threading.Lock] = {}
_open_fds: dict[tuple[int, int], int] = {}


def _reset_after_fork() -> None:
    # A forked child inherits no POSIX locks and maybe a mutex held by a thread that did not
    # fork with it: start clean. Descriptors stay open (closing them is what drops locks).
    global _registry_guard
    _registry_guard = threading.Lock()
    _thread_mutexes.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


class PosixLock:
    """Exclusive lock on ``<dir>/twinlog.lock`` that excludes other hosts, processes and threads.

    ``dir_fd`` is an open descriptor of the directory: the lock file is opened relative to it, so a
    mount that disappears under a path can never redirect the lock to another file.
    """

    def __init__(self, dir_fd: int, *, create: bool) -> None:
        # Keyed by the directory, so a second PosixLock in this process never opens (and later
        # closes) another descriptor of a lock file that a first one may be holding.
        dir_st = os.fstat(dir_fd)
        key = (dir_st.st_dev, dir_st.st_ino)
        with _registry_guard:
            fd = _open_fds.get(key)
            if fd is None:
                flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
                fd = os.open(LOCK_FILE, flags, 0o640, dir_fd=dir_fd)
                _open_fds[key] = fd
            self._mutex = _thread_mutexes.setdefault(key, threading.Lock())
        self._fd = fd
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self, timeout: float) -> None:
        """Take the lock, polling with backoff; raise LockTimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if not self._mutex.acquire(timeout=max(timeout, 0.0)):
            raise LockTimeoutError(f"lock busy in this process for more than {timeout:.3g}s")
        try:
            delay = 0.0002
            while True:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._held = True
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeoutError(
                        f"lock {LOCK_FILE} held by another process or host for more than "
                        f"{timeout:.3g}s"
                    )
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.01)
        except BaseException:
            self._mutex.release()
            raise

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()
