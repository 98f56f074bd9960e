"""FaultFS: a fault-injecting FUSE passthrough that stands in for the peer's NFS mount in tests.

``FaultFS(source, mountpoint)`` mounts a passthrough of ``source`` on ``mountpoint``, served by a
separate process (this file run as a script), so a filesystem that hangs never hangs the test
process by itself. The test switches the fault mode at run time over a private socket::

    with FaultFS(node_a_log_dir, node_b_peer_dir) as fs:
        fs.set_mode("hang")     # every call blocks, like a dead hard NFS mount
        fs.wait_blocked(1)      # a caller (in a subprocess) is now stuck in the kernel
        fs.release()            # back to "normal": blocked calls carry on as if nothing happened
        fs.stats()              # FaultStats: calls, blocked callers, injected errors

Modes (what each FUSE request sees while the mode is in force):

``normal``     plain passthrough.
``hang``       every request blocks until the mode changes. Like a hard NFS mount, other signals
               do not end the wait; SIGKILL does (the server notices the caller is dying and
               answers EINTR, as NFS's TASK_KILLABLE sleep). When the mode changes, blocked
               requests carry on under the new mode. Unlocks are never held back (see Locks).
``eio``        every request fails with EIO (soft mount), ``etimedout`` with ETIMEDOUT (softerr).
``slow``       every request is delayed by ``delay`` seconds.
``enospc``     requests that need space (write, create, mkdir, mknod, symlink, link, fallocate,
               growing truncate) fail with ENOSPC; statfs reports no free blocks; the rest works.

``set_mode(mode, ops={...})`` limits a mode to some FUSE requests (``FAULTABLE_OPS``), e.g.
``set_mode("eio", ops={"fsync", "flush"})``: writes succeed, fsync and close report EIO, as an NFS
write-back error does; ``set_mode("hang", ops={"write"})``: hang in the middle of an append.
Only the mount's own requests are faulted: the source directory stays a plain local directory.

Caching: ``direct_io`` and zero attribute/entry timeouts, so every write(2) reaches the source file
before the call returns and every stat asks the server (a stricter form of NFS close-to-open).
Like an NFS client, O_APPEND through the mount writes at the size the kernel last saw (revalidated
at open), not atomically at the source's end: appends to a file the other side also appends to
must be under the shared lock, exactly as on NFS.

Locks: POSIX record locks (``fcntl.lockf``, F_SETLK/F_SETLKW/F_GETLK) taken through the mount are
forwarded to the source file as OFD locks, one open file description per FUSE lock owner (the
kernel's lock owner is the calling process's file table), so a lock through the mount and a lock
taken directly on the source by another process exclude each other both ways, and locks of two
processes through the mount exclude each other. ``flock`` through the mount is forwarded as a
whole-file OFD lock too, which is what an NFS client does (``nfs_flock``): it excludes ``lockf`` on
the source but NOT ``flock`` on the source, the NFS trap in /work/shared/NFS-NOTES.md.
What the tests must not rely on:

* /proc/locks shows a lock taken through the mount as ``OFDLCK`` held by the server (pid -1) on the
  source inode, not as ``POSIX`` of the caller; nothing is listed for the FUSE inode.
* F_GETLK through the mount reports the holder's pid (libfuse's own record for a holder through
  the mount, the kernel's for a holder on the source).
* F_SETLKW through the mount is emulated by polling F_SETLK (2-20 ms): no FIFO fairness, no EDEADLK
  deadlock detection, up to ~20 ms extra latency. It is interruptible (EINTR), and a waiter that
  is killed stops trying (checked between tries), so it does not get the lock after its death.
* Unlocks (explicit, and the implicit unlock when the owner closes any descriptor of the file or
  dies) are applied at once in every mode; a real NFS server would keep a dead client's lock until
  its lease expires. Simulate a stuck peer lock by holding a lock on the source from a stopped
  process instead.
* Lock requests, apart from unlocks, are faulted like any other request (hang, EIO, ...).

The server process exits, detaching the mount, when the test process that owns it dies (it sees
EOF on the control socket). ``FaultFS.stop`` (also ``__exit__``) always releases hung callers (and
gives them up to a second to finish), detaches the mount lazily and ends the server, even if the
test body failed; a caller still using the mount after that gets ENOTCONN or ECONNABORTED.

Needs libfuse 3 (Debian: ``fuse3``, or just ``libfuse3-3`` as root) and mfusepy from PyPI.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, cast, get_args

__all__ = [
    "FAULTABLE_OPS",
    "MODES",
    "FaultFS",
    "FaultFSError",
    "FaultStats",
    "Mode",
    "faultfs_fixture",
    "fuse_skip_reason",
    "is_mounted",
]

Mode = Literal["normal", "hang", "eio", "etimedout", "slow", "enospc"]
MODES: Final[tuple[str, ...]] = get_args(Mode)
# FUSE requests a mode can be limited to. Never faulted: release, and unlocks.
FAULTABLE_OPS: Final = frozenset(
    {
        "getattr", "access", "readlink", "readdir", "statfs", "chmod", "chown", "utimens",
        "truncate", "mknod", "mkdir", "unlink", "rmdir", "symlink", "link", "rename", "open",
        "create", "read", "write", "fallocate", "flush", "fsync", "getlk", "setlk", "setlkw",
        "flock",
    }
)  # fmt: skip

FSTYPE: Final = "fuse.faultfs"
_MNT_DETACH: Final = 2
_SIGKILL_BIT: Final = 1 << (signal.SIGKILL - 1)
_PF_EXITING: Final = 0x4
_HANG_POLL_S: Final = 0.05
_ERRORS: Final[dict[str, int]] = {"eio": errno.EIO, "etimedout": errno.ETIMEDOUT}


class FaultFSError(RuntimeError):
    """The fault filesystem could not be started, controlled or stopped."""


@dataclass(frozen=True)
class FaultStats:
    """Counters of the server since it started (or since the last ``stats(reset=True)``)."""

    mode: str
    delay: float
    ops: list[str] | None  # the requests the mode applies to; None: all
    calls: int  # FUSE requests received (before any fault)
    calls_by_op: dict[str, int]
    blocked: int  # requests blocked right now by "hang"
    max_blocked: int
    released: int  # blocked requests that went on after the mode changed
    killed: int  # blocked requests answered EINTR because their caller was being killed
    errors: int  # injected errors (eio, etimedout, enospc)
    errors_by_errno: dict[str, int]
    lock_owners: int  # open file descriptions the server holds for lock owners right now


def fuse_skip_reason() -> str | None:
    """Why FaultFS cannot run here, or None. Only a missing /dev/fuse is a reason to skip."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: the FUSE tests need FUSE in the kernel and /dev/fuse here"
    return None


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts_at(mountpoint: str) -> list[str]:
    """Filesystem types mounted at ``mountpoint``, from mountinfo (never touching the mount)."""
    types = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == mountpoint:
                types.append(right.split()[0])
    return types


def is_mounted(mountpoint: str | os.PathLike[str], fstype: str = FSTYPE) -> bool:
    """True if a filesystem of ``fstype`` is mounted at ``mountpoint``; safe on a hung mount.

    ``mountpoint`` must be given as an absolute path without symlinks in it (it is not resolved,
    since resolving would stat the mount).
    """
    return fstype in _mounts_at(os.fspath(mountpoint))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _detach(mountpoint: str) -> None:
    """Lazily unmount everything mounted at ``mountpoint`` (umount -l), as root or by fusermount."""
    while _mounts_at(mountpoint):
        if _libc().umount2(os.fsencode(mountpoint), _MNT_DETACH) == 0:
            continue
        err = ctypes.get_errno()
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
        if err == errno.EPERM and fusermount:
            subprocess.run([fusermount, "-u", "-z", mountpoint], check=False, capture_output=True)
            if not _mounts_at(mountpoint):
                return
        raise FaultFSError(f"cannot detach {mountpoint}: {os.strerror(err)}")


def _absolute_no_resolve_last(path: str | os.PathLike[str]) -> str:
    # Resolve the parent only: resolving the mount point itself would stat the mounted root.
    p = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


# --------------------------------------------------------------------------------------------
# Client side: runs in the test process.
# --------------------------------------------------------------------------------------------


class FaultFS:
    """A FaultFS mount of ``source`` on ``mountpoint``, served by its own process.

    Use as a context manager; ``start``/``stop`` are there for fixtures. ``stop`` is idempotent.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        *,
        start_timeout: float = 10.0,
        control_timeout: float = 10.0,
    ) -> None:
        self.source = Path(os.path.realpath(source))
        self.mountpoint = Path(_absolute_no_resolve_last(mountpoint))
        self._start_timeout = start_timeout
        self._control_timeout = control_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._sock_file: Any = None
        self._log: Any = None
        self._control_mutex = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FaultFS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(raise_errors=exc_type is None)

    @property
    def pid(self) -> int:
        """The server process's pid."""
        if self._proc is None:
            raise FaultFSError("FaultFS is not started")
        return self._proc.pid

    def is_mounted(self) -> bool:
        return is_mounted(self.mountpoint)

    def start(self) -> None:
        if self._proc is not None:
            raise FaultFSError("FaultFS is already started")
        if not self.source.is_dir():
            raise FaultFSError(f"source {self.source} is not a directory")
        if _mounts_at(os.fspath(self.mountpoint)):
            raise FaultFSError(f"something is already mounted on {self.mountpoint}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Lives as long as the server: closed in stop().
        self._log = tempfile.TemporaryFile(prefix="faultfs-", suffix=".log")  # noqa: SIM115
        env = dict(os.environ)
        # mfusepy prefers libfuse 2 when both are installed; the server needs libfuse 3.
        libfuse3 = ctypes.util.find_library("fuse3")
        if libfuse3 and "FUSE_LIBRARY_PATH" not in env:
            env["FUSE_LIBRARY_PATH"] = libfuse3
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--source",
                    os.fspath(self.source),
                    "--mountpoint",
                    os.fspath(self.mountpoint),
                    "--control-fd",
                    str(theirs.fileno()),
                ],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._sock.settimeout(self._control_timeout)
        self._sock_file = ours.makefile("rwb")
        try:
            self._wait_live()
        except BaseException:
            self.stop(raise_errors=False)
            raise

    def _wait_live(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise FaultFSError(
                    f"FaultFS server exited with {self._proc.returncode}:\n{self.server_log()}"
                )
            if self.is_mounted() and self._request({"cmd": "ping"}).get("initialized"):
                return
            if time.monotonic() > deadline:
                raise FaultFSError(
                    f"FaultFS did not mount {self.mountpoint} within {self._start_timeout} s:\n"
                    f"{self.server_log()}"
                )
            time.sleep(0.01)

    def stop(self, *, raise_errors: bool = True) -> None:
        """Release hung callers, detach the mount, end the server. Safe to call twice."""
        problems: list[str] = []
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError, FaultFSError, ValueError):
                released = self._request({"cmd": "set_mode", "mode": "normal", "delay": 0.0})
                if released["stats"]["blocked"]:
                    self._drain()
        try:
            _detach(os.fspath(self.mountpoint))
        except FaultFSError as e:
            problems.append(str(e))
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(OSError, FaultFSError, ValueError):
                    self._request({"cmd": "shutdown"})
                try:
                    self._proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._sock_file is not None:
            with contextlib.suppress(OSError):
                self._sock_file.close()
            self._sock_file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # A server killed before the detach leaves a dead mount ("transport endpoint is not
        # connected"): detach that too.
        try:
            _detach(os.fspath(self.mountpoint))
        except FaultFSError as e:
            problems.append(str(e))
        if self._log is not None:
            self._log.close()
            self._log = None
        if problems and raise_errors:
            raise FaultFSError("; ".join(problems))

    def _drain(self, quiet: float = 0.05, timeout: float = 1.0) -> None:
        # Let released callers finish their next requests before the server goes: wait until no
        # request arrived for ``quiet`` seconds (at most ``timeout``).
        deadline = time.monotonic() + timeout
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            stats = self.stats()
            now = time.monotonic()
            if stats.calls != last:
                last, quiet_since = stats.calls, now
            elif stats.blocked == 0 and now - quiet_since >= quiet:
                return
            time.sleep(0.01)

    def server_log(self) -> str:
        """What the server wrote to stdout/stderr so far (for failure messages)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return cast(bytes, self._log.read()).decode(errors="replace")

    # -- control ------------------------------------------------------------------------------

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._sock_file is None:
            raise FaultFSError("FaultFS is not started")
        with self._control_mutex:
            try:
                self._sock_file.write(json.dumps(request).encode() + b"\n")
                self._sock_file.flush()
                line = self._sock_file.readline()
            except OSError as e:
                raise FaultFSError(f"FaultFS control request {request} failed: {e}") from e
        if not line:
            raise FaultFSError(f"FaultFS server closed the control channel:\n{self.server_log()}")
        reply = cast(dict[str, Any], json.loads(line))
        if not reply.get("ok"):
            raise FaultFSError(f"FaultFS refused {request}: {reply.get('error')}")
        return reply

    def set_mode(
        self, mode: Mode, delay: float = 0.05, *, ops: Collection[str] | None = None
    ) -> FaultStats:
        """Switch every following (and every blocked) request to ``mode``.

        ``ops`` limits the fault to those FUSE requests (names in ``FAULTABLE_OPS``; others are
        served normally), e.g. ``set_mode("eio", ops={"fsync", "flush"})`` for NFS write-back
        errors that surface only at fsync and close.
        """
        if mode not in MODES:
            raise ValueError(f"unknown FaultFS mode {mode!r}, expected one of {MODES}")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if ops is not None and not set(ops) <= FAULTABLE_OPS:
            raise ValueError(f"not faultable: {sorted(set(ops) - FAULTABLE_OPS)}")
        request: dict[str, Any] = {"cmd": "set_mode", "mode": mode, "delay": delay}
        request["ops"] = None if ops is None else sorted(ops)
        return self._stats_of(self._request(request))

    def release(self) -> FaultStats:
        """Back to "normal": every blocked request continues as in normal mode."""
        return self.set_mode("normal")

    def stats(self, *, reset: bool = False) -> FaultStats:
        """Current counters; ``reset`` zeroes them after reading (blocked/lock_owners stay)."""
        return self._stats_of(self._request({"cmd": "stats", "reset": reset}))

    def wait_blocked(self, count: int = 1, timeout: float = 5.0) -> FaultStats:
        """Wait until at least ``count`` requests are blocked by "hang"."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats.blocked >= count:
                return stats
            if time.monotonic() > deadline:
                raise FaultFSError(
                    f"only {stats.blocked} of {count} callers blocked after {timeout} s"
                )
            time.sleep(0.01)

    @staticmethod
    def _stats_of(reply: dict[str, Any]) -> FaultStats:
        return FaultStats(**reply["stats"])


# --------------------------------------------------------------------------------------------
# Server side: runs in the FaultFS process (this file as a script).
# --------------------------------------------------------------------------------------------


def _caller_is_dying(tid: int) -> bool:
    """True if thread ``tid`` has a SIGKILL pending, is exiting, or is gone.

    A caller blocked in a FUSE request that the server has already read sleeps uninterruptibly
    until the server answers, even after SIGKILL; NFS sleeps TASK_KILLABLE instead. Answering the
    request of a dying caller at once gives the NFS behaviour.
    """
    if tid <= 0:
        return False
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as f:
            status = f.read()
        with open(f"/proc/{tid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd") and int(value.strip(), 16) & _SIGKILL_BIT:
            return True
    fields = stat.rpartition(")")[2].split()
    # After "comm)": state is field 3 of stat(5), flags field 9.
    return fields[0] in ("Z", "X") or int(fields[6]) & _PF_EXITING != 0


class _FaultState:
    """The mode and the counters, shared by the FUSE worker threads and the control thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.mode: str = "normal"
        self.delay = 0.05
        self.ops: frozenset[str] | None = None
        self.initialized = False
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._blocked = 0
        self._max_blocked = 0
        self._released = 0
        self._killed = 0

    def set_mode(self, mode: str, delay: float, ops: Collection[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._cond:
            self.mode = mode
            self.delay = float(delay)
            self.ops = None if ops is None else frozenset(ops)
            self._cond.notify_all()

    def _mode_for(self, op: str) -> str:
        return self.mode if self.ops is None or op in self.ops else "normal"

    def count(self, op: str) -> None:
        with self._cond:
            self._calls[op] += 1

    def gate(self, op: str, caller: int, *, needs_space: bool = False) -> None:
        """Apply the current mode to one request: return to serve it, or raise OSError."""
        with self._cond:
            self._calls[op] += 1
            if self._mode_for(op) == "hang":
                self._blocked += 1
                self._max_blocked = max(self._max_blocked, self._blocked)
                try:
                    while self._mode_for(op) == "hang":
                        if _caller_is_dying(caller):
                            self._killed += 1
                            raise OSError(errno.EINTR, "caller killed while the mount hung")
                        self._cond.wait(_HANG_POLL_S)
                    self._released += 1
                finally:
                    self._blocked -= 1
            mode, delay = self._mode_for(op), self.delay
            error = _ERRORS.get(mode)
            if mode == "enospc" and needs_space:
                error = errno.ENOSPC
            if error is not None:
                self._errors[errno.errorcode[error]] += 1
                raise OSError(error, f"{os.strerror(error)} (injected by FaultFS)")
        if mode == "slow" and delay > 0:
            time.sleep(delay)

    def snapshot(self, lock_owners: int, *, reset: bool) -> dict[str, Any]:
        with self._cond:
            snap = {
                "mode": self.mode,
                "delay": self.delay,
                "ops": None if self.ops is None else sorted(self.ops),
                "calls": sum(self._calls.values()),
                "calls_by_op": dict(self._calls),
                "blocked": self._blocked,
                "max_blocked": self._max_blocked,
                "released": self._released,
                "killed": self._killed,
                "errors": sum(self._errors.values()),
                "errors_by_errno": dict(self._errors),
                "lock_owners": lock_owners,
            }
            if reset:
                self._calls.clear()
                self._errors.clear()
                self._max_blocked = self._blocked
                self._released = self._killed = 0
            return snap


# struct flock on Linux x86_64/aarch64: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid, padded to 32 bytes. OFD locks require l_pid == 0.
_FLOCK_FMT: Final = "@hhqqi4x"


_LockInfo = tuple[int, int, int, int]  # l_type, l_start, l_len, l_pid


def _ofd_fcntl(fd: int, cmd: int, l_type: int, start: int, length: int) -> _LockInfo:
    packed = struct.pack(_FLOCK_FMT, l_type, os.SEEK_SET, start, length, 0)
    got = fcntl.fcntl(fd, cmd, packed)
    r_type, _whence, r_start, r_len, r_pid = struct.unpack(_FLOCK_FMT, got)
    return r_type, r_start, r_len, r_pid


@dataclass
class _OwnerFile:
    fd: int
    users: int = 0


class _LockTable:
    """One open file description of the source file per (inode, FUSE lock owner), holding its locks.

    OFD locks conflict between descriptions, not processes, so one server process can stand for
    any number of lock owners; and the server never uses classic POSIX locks, whose "any close drops
    every lock" rule would bite a process that holds many descriptors of one file.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._files: dict[tuple[str, int, int, int], _OwnerFile] = {}

    def __len__(self) -> int:
        with self._mutex:
            return len(self._files)

    @staticmethod
    def _key(kind: str, fh: int, owner: int) -> tuple[str, int, int, int]:
        st = os.fstat(fh)
        return (kind, st.st_dev, st.st_ino, owner)

    @staticmethod
    def _reopen(fh: int) -> int:
        # A new open file description of the very inode behind fh (immune to renames).
        try:
            return os.open(f"/proc/self/fd/{fh}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return os.open(f"/proc/self/fd/{fh}", os.O_RDONLY | os.O_CLOEXEC)

    def _entry(self, key: tuple[str, int, int, int], fh: int) -> _OwnerFile:
        entry = self._files.get(key)
        if entry is None:
            entry = self._files[key] = _OwnerFile(self._reopen(fh))
        return entry

    def setlk(
        self,
        kind: str,
        fh: int,
        owner: int,
        *,
        l_type: int,
        start: int,
        length: int,
        wait: bool,
        should_stop: Callable[[], bool],
    ) -> None:
        key = self._key(kind, fh, owner)
        if l_type == fcntl.F_UNLCK:
            self.unlock(key, start, length)
            return
        with self._mutex:
            entry = self._entry(key, fh)
            entry.users += 1
        try:
            pause = 0.002
            while True:
                try:
                    _ofd_fcntl(entry.fd, fcntl.F_OFD_SETLK, l_type, start, length)
                    return
                except OSError as e:
                    if not wait or e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if should_stop():
                    raise OSError(errno.EINTR, "lock wait interrupted")
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
        finally:
            with self._mutex:
                entry.users -= 1

    def unlock(self, key: tuple[str, int, int, int], start: int, length: int) -> None:
        with self._mutex:
            entry = self._files.get(key)
            if entry is None:
                return
            _ofd_fcntl(entry.fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK, start, length)
            if start == 0 and length == 0 and entry.users == 0:
                # The owner holds nothing on this inode any more (this is also the unlock sent
                # when the owner closes the file): let its description go.
                del self._files[key]
                os.close(entry.fd)

    def getlk(
        self, kind: str, fh: int, owner: int, *, l_type: int, start: int, length: int
    ) -> _LockInfo:
        key = self._key(kind, fh, owner)
        with self._mutex:
            entry = self._files.get(key)
            if entry is not None:
                return _ofd_fcntl(entry.fd, fcntl.F_OFD_GETLK, l_type, start, length)
        probe = self._reopen(fh)
        try:
            return _ofd_fcntl(probe, fcntl.F_OFD_GETLK, l_type, start, length)
        finally:
            os.close(probe)


def _serve(source: str, mountpoint: str, control_fd: int) -> int:
    import mfusepy

    # libfuse's own fuse_interrupted(): true once the kernel forwarded a signal for the request
    # this worker thread is serving.
    libfuse: ctypes.CDLL = mfusepy._libfuse
    fuse_interrupted = libfuse.fuse_interrupted
    fuse_interrupted.restype = ctypes.c_int
    fuse_interrupted.argtypes = []
    renameat2 = _libc().renameat2
    at_fdcwd = -100

    state = _FaultState()
    locks = _LockTable()

    def caller() -> int:
        return int(mfusepy.fuse_get_context()[2])

    def real(path: str | None) -> str:
        if path is None:
            raise OSError(errno.EINVAL, "FaultFS needs paths")
        return source + path

    def gate(op: str, *, needs_space: bool = False) -> None:
        state.gate(op, caller(), needs_space=needs_space)

    def stat_dict(st: os.stat_result) -> dict[str, Any]:
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
        attrs: dict[str, Any] = {key: getattr(st, key) for key in keys}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    class Passthrough(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def init_with_config(self, conn: Any, config: Any) -> None:
            config.direct_io = 1
            config.kernel_cache = 0
            config.auto_cache = 0
            config.entry_timeout = 0.0
            config.attr_timeout = 0.0
            config.negative_timeout = 0.0
            state.initialized = True

        # -- metadata --
        def getattr(self, path: str | None, fi: Any = None) -> dict[str, Any]:
            gate("getattr")
            if fi is not None:
                return stat_dict(os.fstat(fi.fh))
            return stat_dict(os.lstat(real(path)))

        def access(self, path: str, amode: int) -> int:
            gate("access")
            if not os.access(real(path), amode):
                raise OSError(errno.EACCES, "access denied")
            return 0

        def readlink(self, path: str) -> str:
            gate("readlink")
            return os.readlink(real(path))

        def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
            gate("readdir")
            # With use_ino the kernel gets these inode numbers; readdir(3) hides inode 0.
            directory = real(path)
            entries = [(name, os.lstat(os.path.join(directory, name))) for name in (".", "..")]
            with os.scandir(directory) as scan:
                entries += [(e.name, e.stat(follow_symlinks=False)) for e in scan]
            return [(name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0) for name, st in entries]

        def statfs(self, path: str) -> dict[str, int]:
            gate("statfs")
            sv = os.statvfs(real(path))
            full = state.mode == "enospc" and (state.ops is None or "statfs" in state.ops)
            return {
                "f_bsize": sv.f_bsize,
                "f_frsize": sv.f_frsize,
                "f_blocks": sv.f_blocks,
                "f_bfree": 0 if full else sv.f_bfree,
                "f_bavail": 0 if full else sv.f_bavail,
                "f_files": sv.f_files,
                "f_ffree": sv.f_ffree,
                "f_favail": sv.f_favail,
                "f_namemax": sv.f_namemax,
            }

        def chmod(self, path: str, mode: int) -> int:
            gate("chmod")
            os.chmod(real(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            gate("chown")
            os.chown(real(path), uid, gid, follow_symlinks=False)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            gate("utimens")
            if times is None:
                os.utime(real(path), follow_symlinks=False)
            else:
                os.utime(real(path), ns=times, follow_symlinks=False)
            return 0

        def truncate(self, path: str, length: int, fh: Any = None) -> int:
            target = real(path)
            gate("truncate", needs_space=length > os.lstat(target).st_size)
            os.truncate(target, length)
            return 0

        # -- namespace --
        def mknod(self, path: str, mode: int, dev: int) -> int:
            gate("mknod", needs_space=True)
            os.mknod(real(path), mode, dev)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            gate("mkdir", needs_space=True)
            os.mkdir(real(path), mode)
            return 0

        def unlink(self, path: str) -> int:
            gate("unlink")
            os.unlink(real(path))
            return 0

        def rmdir(self, path: str) -> int:
            gate("rmdir")
            os.rmdir(real(path))
            return 0

        def symlink(self, target: str, source_path: str) -> int:
            gate("symlink", needs_space=True)
            os.symlink(source_path, real(target))
            return 0

        def link(self, target: str, source_path: str) -> int:
            gate("link", needs_space=True)
            os.link(real(source_path), real(target))
            return 0

        def rename_with_flags(self, old: str, new: str, flags: int) -> int:
            gate("rename")
            if renameat2(at_fdcwd, os.fsencode(real(old)), at_fdcwd, os.fsencode(real(new)), flags):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return 0

        def rename(self, old: str, new: str) -> int:
            return self.rename_with_flags(old, new, 0)

        # -- files --
        def open(self, path: str, fi: Any) -> int:
            gate("open")
            # O_APPEND is the client's business, as on NFS: the kernel sends the offset to write.
            fi.fh = os.open(real(path), fi.flags & ~os.O_APPEND)
            fi.direct_io = 1
            return 0

        def create(self, path: str, mode: int, fi: Any) -> int:
            gate("create", needs_space=True)
            flags = (fi.flags & ~os.O_APPEND) | os.O_CREAT
            fi.fh = os.open(real(path), flags, mode)
            fi.direct_io = 1
            return 0

        def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
            gate("read")
            return os.pread(fi.fh, size, offset)

        def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
            gate("write", needs_space=True)
            return os.pwrite(fi.fh, data, offset)

        def fallocate(self, path: str | None, mode: int, offset: int, size: int, fi: Any) -> int:
            gate("fallocate", needs_space=True)
            if mode != 0:
                raise OSError(errno.EOPNOTSUPP, "only plain fallocate is supported")
            os.posix_fallocate(fi.fh, offset, size)
            return 0

        def flush(self, path: str | None, fi: Any) -> int:
            gate("flush")
            return 0

        def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
            gate("fsync")
            if datasync:
                os.fdatasync(fi.fh)
            else:
                os.fsync(fi.fh)
            return 0

        def release(self, path: str | None, fi: Any) -> int:
            # Never faulted: the kernel does not wait for it, and the descriptor must not leak.
            state.count("release")
            if fi.flock_release:
                # Last close of a file that was flock()ed: libfuse leaves the unlock to us.
                self._setlk("flock", fi, fcntl.F_UNLCK, 0, 0, wait=False)
            os.close(fi.fh)
            return 0

        # -- locks --
        def lock(self, path: str | None, fi: Any, cmd: int, lock: Any) -> int:
            fl = lock.contents
            l_type, start, length = int(fl.l_type), int(fl.l_start), int(fl.l_len)
            if cmd == fcntl.F_GETLK:
                gate("getlk")
                r_type, r_start, r_len, r_pid = locks.getlk(
                    "posix", fi.fh, fi.lock_owner, l_type=l_type, start=start, length=length
                )
                fl.l_type, fl.l_start, fl.l_len = r_type, r_start, r_len
                fl.l_whence, fl.l_pid = os.SEEK_SET, max(r_pid, 0)
                return 0
            if cmd not in (fcntl.F_SETLK, fcntl.F_SETLKW):
                raise OSError(errno.EINVAL, f"lock command {cmd}")
            if l_type == fcntl.F_UNLCK:
                state.count("unlock")
            else:
                gate("setlkw" if cmd == fcntl.F_SETLKW else "setlk")
            self._setlk("posix", fi, l_type, start, length, wait=cmd == fcntl.F_SETLKW)
            return 0

        def flock(self, path: str, fi: Any, op: int) -> int:
            # As an NFS client does: flock becomes a whole-file POSIX-style lock on the server.
            kind = op & ~fcntl.LOCK_NB
            l_type = {
                fcntl.LOCK_SH: fcntl.F_RDLCK,
                fcntl.LOCK_EX: fcntl.F_WRLCK,
                fcntl.LOCK_UN: fcntl.F_UNLCK,
            }[kind]
            if l_type == fcntl.F_UNLCK:
                state.count("unflock")
            else:
                gate("flock")
            self._setlk("flock", fi, l_type, 0, 0, wait=not op & fcntl.LOCK_NB)
            return 0

        @staticmethod
        def _setlk(kind: str, fi: Any, l_type: int, start: int, length: int, *, wait: bool) -> None:
            tid = caller()
            locks.setlk(
                kind,
                fi.fh,
                fi.lock_owner,
                l_type=l_type,
                start=start,
                length=length,
                wait=wait,
                should_stop=lambda: bool(fuse_interrupted()) or _caller_is_dying(tid),
            )

    class FaultFUSE(mfusepy.FUSE):  # type: ignore[misc]
        # mfusepy drops rename flags (RENAME_NOREPLACE, RENAME_EXCHANGE): pass them on.
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return cast(
                int,
                self.operations.rename_with_flags(
                    old.decode(self.encoding, self.errors),
                    new.decode(self.encoding, self.errors),
                    flags,
                ),
            )

    control = socket.socket(fileno=control_fd)

    def exit_now(code: int) -> None:
        state.set_mode("normal", 0.0, None)
        with contextlib.suppress(FaultFSError, OSError):
            _detach(mountpoint)
        os._exit(code)

    def serve_control() -> None:
        with control, control.makefile("rwb") as stream:
            for line in stream:
                try:
                    request = json.loads(line)
                    cmd = request["cmd"]
                    reply: dict[str, Any] = {"ok": True}
                    if cmd == "ping":
                        reply["initialized"] = state.initialized
                    elif cmd == "set_mode":
                        state.set_mode(request["mode"], request["delay"], request.get("ops"))
                    elif cmd not in ("stats", "shutdown"):
                        raise ValueError(f"unknown command {cmd!r}")
                    reply["stats"] = state.snapshot(len(locks), reset=bool(request.get("reset")))
                except (ValueError, KeyError, TypeError) as e:
                    reply = {"ok": False, "error": str(e)}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()
                if reply["ok"] and request.get("cmd") == "shutdown":
                    exit_now(0)
        # EOF: the test process that owns this mount is gone. Never outlive it.
        exit_now(0)

    threading.Thread(target=serve_control, name="faultfs-control", daemon=True).start()
    FaultFUSE(
        Passthrough(),
        mountpoint,
        raw_fi=True,
        foreground=True,
        allow_other=True,
        default_permissions=True,
        fsname="faultfs",
        subtype="faultfs",
        direct_io=True,
        use_ino=True,
        hard_remove=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        # libfuse's default of 10 workers would let 10 hung requests stall the whole mount.
        max_threads=256,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FaultFS server (started by faultfs.FaultFS)")
    parser.add_argument("--source", required=True)
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    return _serve(args.source.rstrip("/"), args.mountpoint, args.control_fd)


if __name__ == "__main__":
    sys.exit(main())


# The server (this file run as a script) must not pay for importing pytest. Test modules use the
# fixture by importing ``faultfs_fixture`` (unused: silence F401) and taking a ``faultfs`` argument.
if __name__ != "__main__":
    import pytest

    @pytest.fixture(name="faultfs")
    def faultfs_fixture(tmp_path: Path) -> Iterator[FaultFS]:
        """FaultFS of ``tmp_path/"peer-source"`` on ``tmp_path/"peer-mount"``, always unmounted."""
        source = tmp_path / "peer-source"
        source.mkdir()
        with FaultFS(source, tmp_path / "peer-mount") as fs:
            yield fs
