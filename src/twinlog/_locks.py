"""Cross-host exclusive locks: POSIX record locks on a dedicated lock file.

Why not ``flock`` (and so not ``filelock.FileLock``): an NFS client emulates flock with a POSIX
lock on the server, but the server's own local flock never conflicts with POSIX locks, so a node
flock()ing its own log does not exclude the peer appending to it through NFS. POSIX record locks
(``fcntl`` F_SETLK) are what the NFS server holds for its clients, so taking one locally and one
through the mount exclude each other. See docs/design.md.

Two kinds of the same family, which all conflict with each other in the kernel's lock table:

* :class:`OfdLock` (open-file-description lock, F_OFD_SETLKW) for our own directory: owned by
  the descriptor, so threads exclude each other and closing another descriptor drops nothing;
  waiting happens in the kernel (first come, first served with the peer's waiters), bounded by a
  timeout.
* :class:`PosixLock` (F_SETLK/F_SETLKW, ``lockf``) in the peer worker, through the mount: the
  kind every NFS client and server supports. POSIX locks belong to a process and vanish when it
  closes *any* descriptor of the file, so the process opens the lock file once and keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import struct
import threading
import time
from collections.abc import Callable

from twinlog.exceptions import LockTimeoutError

__all__ = ["LOCK_FILE", "OfdLock", "PosixLock"]

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


def _same_file(fd: int, dir_fd: int) -> bool:
    """Whether ``fd`` still is ``<dir>/twinlog.lock`` (and still usable)."""
    try:
        a, b = os.fstat(fd), os.stat(LOCK_FILE, dir_fd=dir_fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _try_lockf(fd: int) -> bool:
    """Take the exclusive POSIX lock on ``fd`` if it is free; False if it is held."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


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
            if fd is None or not _same_file(fd, dir_fd):
                # (A descriptor left from a mount that went away is forgotten, not closed.)
                flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
                fd = os.open(LOCK_FILE, flags, 0o640, dir_fd=dir_fd)
                _open_fds[key] = fd
            self._mutex = _thread_mutexes.setdefault(key, threading.Lock())
        self._fd = fd
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self, timeout: float | None, *, on_wait: Callable[[], None] | None = None) -> None:
        """Take the lock, polling with backoff; raise LockTimeoutError after ``timeout`` seconds
        (``None``: no limit, for the peer worker, whose parent kills it when it takes too long).

        Polling, not F_SETLKW: each attempt that returns proves the file system (an NFS server)
        is alive, and ``on_wait`` is called after such attempts (at most every 0.2 s) so the
        worker can tell its parent "busy, not dead". A blocking wait would look the same
        whether the lock is busy or the server is gone.
        """
        if self._held:
            return  # already ours: POSIX locks belong to the process, taking it again is a no-op
        if timeout is None and on_wait is not None:
            self._acquire_watched(on_wait)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = -1 if timeout is None else max(timeout, 0.0)
        if not self._mutex.acquire(timeout=wait):
            raise LockTimeoutError(f"lock busy in this process for more than {timeout:.3g}s")
        try:
            delay = 0.0002
            last_beat = time.monotonic()
            while True:
                if _try_lockf(self._fd):
                    self._held = True
                    return
                now = time.monotonic()
                if on_wait is not None and now - last_beat >= 0.2:
                    on_wait()
                    last_beat = now
                remaining = 1.0 if deadline is None else deadline - now
                if remaining <= 0:
                    raise LockTimeoutError(
                        f"lock {LOCK_FILE} held by another process or host for more than "
                        f"{timeout:.3g}s"
                    )
                # Jitter so that waiters polling in step do not all lose to the releaser.
                time.sleep(min(delay * (0.5 + random.random()), remaining))
                delay = min(delay * 2, 0.001)
        except BaseException:
            self._mutex.release()
            raise

    def _acquire_watched(self, on_wait: Callable[[], None]) -> None:
        """Wait in the kernel (F_SETLKW: first come, first served, like every other waiter) in a
        helper thread, and meanwhile test the lock (F_GETLK, an RPC to an NFS server) every
        0.2 s: each test that returns proves the server alive, and ``on_wait`` says so. On a
        dead server the test hangs too, the heartbeats stop, and the parent kills us."""
        self._mutex.acquire()
        try:
            if _try_lockf(self._fd):
                self._held = True
                return
            outcome: list[BaseException | None] = []

            def wait() -> None:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX)
                    outcome.append(None)
                except BaseException as exc:  # handed to the waiting thread
                    outcome.append(exc)

            waiter = threading.Thread(target=wait, name="twinlog-peer-lock", daemon=True)
            waiter.start()
            while True:
                waiter.join(0.2)
                if not waiter.is_alive():
                    break
                fcntl.fcntl(self._fd, fcntl.F_GETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, 0, 0, 0))
                on_wait()
            if outcome and outcome[0] is not None:
                raise outcome[0]
            self._held = True
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


_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux: type, whence, start, len, pid


_WHOLE_FILE = {
    kind: _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0) for kind in (fcntl.F_WRLCK, fcntl.F_UNLCK)
}


def _ofd(fd: int, command: int, kind: int) -> None:
    fcntl.fcntl(fd, command, _WHOLE_FILE[kind])


class OfdLock:
    """Exclusive OFD lock on ``<dir>/twinlog.lock``, waited for in the kernel with a timeout.

    Each holder has its own open file description, so two instances (or two threads with one
    instance each) in one process exclude each other like two processes do. The description of
    the last release is kept for the next acquisition (an unlock instead of a close, and no
    open), but never across a fork: a child sharing it would count as its holder. A wait longer
    than the timeout is abandoned: the waiting thread keeps waiting in the kernel and, if it
    ever gets the lock, drops it at once.
    """

    def __init__(self, dir_fd: int, *, create: bool) -> None:
        self._dir_fd = dir_fd
        self._fd: int | None = None
        self._spare: int | None = None  # unlocked, ours: the next acquire() tries it first
        self._pid = os.getpid()
        if create:
            # A reader without write access never locks (acquire() would say so).
            with contextlib.suppress(PermissionError):
                flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                os.close(os.open(LOCK_FILE, flags, 0o640, dir_fd=dir_fd))

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free now (never waits); False if it is held."""
        fd = self._take_description()
        try:
            _ofd(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            self._spare = fd
            return False
        self._fd = fd
        return True

    def _take_description(self) -> int:
        fd, self._spare = self._spare, None
        if fd is not None and self._pid != os.getpid():
            os.close(fd)  # the parent's description: the parent may lock through it
            fd = None
        self._pid = os.getpid()
        if fd is None:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CLOEXEC, dir_fd=self._dir_fd)
        return fd

    def acquire(self, timeout: float | None) -> None:
        if not self.try_acquire():
            self._fd = _wait_in_thread(self._take_description(), timeout)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._pid != os.getpid():
            # A forked child holds the parent's description: unlocking it would drop the
            # parent's lock. Closing our copy leaves it to the parent.
            os.close(fd)
            return
        try:
            _ofd(fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK)
        except OSError:
            os.close(fd)  # closing the description drops its OFD lock
            return
        if self._spare is None:
            self._spare = fd
        else:
            os.close(fd)

    def close(self) -> None:
        """Release, and close the kept description."""
        self.release()
        fd, self._spare = self._spare, None
        if fd is not None:
            os.close(fd)


def _wait_in_thread(fd: int, timeout: float | None) -> int:
    """Block in F_OFD_SETLKW on ``fd`` in a helper thread; give up after ``timeout``."""
    done = threading.Event()
    guard = threading.Lock()
    state: dict[str, object] = {"abandoned": False, "error": None}

    def wait() -> None:
        try:
            _ofd(fd, fcntl.F_OFD_SETLKW, fcntl.F_WRLCK)
        except OSError as exc:
            state["error"] = exc
        with guard:
            if state["abandoned"]:
                os.close(fd)  # too late: whoever waited has gone; let the next one in
                return
            done.set()

    threading.Thread(target=wait, name="twinlog-lock-wait", daemon=True).start()
    if not done.wait(timeout):
        with guard:
            if not done.is_set():
                state["abandoned"] = True
                raise LockTimeoutError(
                    f"lock {LOCK_FILE} held by another process or host for more than {timeout:.3g}s"
                )
    error = state["error"]
    if isinstance(error, OSError):
        os.close(fd)
        raise error
    return fd
