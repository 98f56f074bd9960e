"""Tests of the FaultFS test filesystem itself (tests/faultfs.py): real mounts, real files.

Anything that can hang runs in a subprocess, never in the test process's main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from faultfs import (
    FaultFS,
    FaultFSError,
    faultfs_fixture,  # noqa: F401 (the faultfs fixture)
    fuse_skip_reason,
    is_mounted,
)

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason())),
]

PROC_TIMEOUT = 10.0


# -- helpers ---------------------------------------------------------------------------------


class Procs:
    """Subprocesses of one test; all killed and reaped at teardown."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def spawn(self, code: str, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *[os.fspath(a) for a in args]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    """Every test must leave no mount and no server process behind."""
    yield
    here = os.fspath(tmp_path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line for line in f if here in line]
    assert mounts == [], f"mounts left behind: {mounts}"
    servers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(here in arg for arg in p.info["cmdline"] or ())
        and "--control-fd" in p.info["cmdline"]
    ]
    assert servers == [], f"FaultFS servers left behind: {servers}"


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def ready(proc: subprocess.Popen[str], expected: str = "ready") -> None:
    """Wait for the subprocess to print ``expected`` on its first line."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        _, err = proc.communicate(timeout=PROC_TIMEOUT)
        raise AssertionError(f"subprocess said {line!r}, expected {expected!r}; stderr:\n{err}")


def finish(proc: subprocess.Popen[str]) -> str:
    """Let the subprocess go on (newline on stdin) and return the rest of its stdout."""
    out, err = proc.communicate("\n", timeout=PROC_TIMEOUT)
    assert proc.returncode == 0, err
    return out.strip()


def proc_locks(source_file: Path) -> list[tuple[str, str, int]]:
    """(class, type, pid) of the locks /proc/locks lists for ``source_file`` (not on the mount)."""
    st = os.stat(source_file)
    dev_ino = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found = []
    with open("/proc/locks", encoding="ascii") as f:
        for line in f:
            fields = [x for x in line.split() if x != "->"]
            if fields[5] == dev_ino:
                found.append((fields[1], fields[3], int(fields[4])))
    return found


def try_lockf(path: Path) -> bool:
    """Try an exclusive non-blocking lockf on ``path`` from another process."""
    out = subprocess.run(
        [sys.executable, "-c", TRY_LOCKF, os.fspath(path)],
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        check=True,
    ).stdout.strip()
    assert out in ("locked", "busy"), out
    return out == "locked"


TRY_LOCKF = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked")
except BlockingIOError:
    print("busy")
"""

# Takes a lock on argv[1] (lockf or flock per argv[2]), says "ready", holds it until stdin says so.
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[2] == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
else:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("ready", flush=True)
sys.stdin.readline()
"""

READ_FILE = """
import sys
print(open(sys.argv[1]).read(), flush=True)
"""


@pytest.fixture
def lock_file(faultfs: FaultFS) -> tuple[Path, Path]:
    """twinlog.lock in the source and the same file through the mount."""
    source = faultfs.source / "twinlog.lock"
    source.write_bytes(b"")
    return source, faultfs.mountpoint / "twinlog.lock"


# -- passthrough -----------------------------------------------------------------------------


def test_passthrough_basics(faultfs: FaultFS) -> None:
    src, mnt = faultfs.source, faultfs.mountpoint
    assert is_mounted(mnt)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "a.log").write_text("one\n")
    assert (src / "dir" / "a.log").read_text() == "one\n"
    (src / "b.log").write_text("from source\n")
    assert sorted(os.listdir(mnt)) == ["b.log", "dir"]
    assert (mnt / "b.log").read_text() == "from source\n"
    assert (mnt / "b.log").stat().st_ino == (src / "b.log").stat().st_ino
    os.rename(mnt / "b.log", mnt / "dir" / "c.log")
    assert sorted(os.listdir(src / "dir")) == ["a.log", "c.log"]
    os.symlink("a.log", mnt / "dir" / "link")
    assert os.readlink(src / "dir" / "link") == "a.log"
    os.link(mnt / "dir" / "a.log", mnt / "dir" / "hard")
    assert (src / "dir" / "a.log").stat().st_nlink == 2
    os.chmod(mnt / "dir" / "a.log", 0o600)
    assert (src / "dir" / "a.log").stat().st_mode & 0o777 == 0o600
    os.truncate(mnt / "dir" / "a.log", 2)
    assert (src / "dir" / "a.log").read_text() == "on"
    for name in ("a.log", "c.log", "link", "hard"):
        os.unlink(mnt / "dir" / name)
    os.rmdir(mnt / "dir")
    assert os.listdir(src) == []
    # The mount does not show the source's free space as its own, but it does pass statfs on.
    assert os.statvfs(mnt).f_blocks == os.statvfs(src).f_blocks


def test_rename_noreplace_is_passed_on(faultfs: FaultFS) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rename_noreplace, at_fdcwd = 1, -100
    (faultfs.source / "old").write_text("old")
    (faultfs.source / "new").write_text("new")
    old, new = (os.fsencode(faultfs.mountpoint / n) for n in ("old", "new"))
    assert libc.renameat2(at_fdcwd, old, at_fdcwd, new, rename_noreplace) == -1
    assert ctypes.get_errno() == errno.EEXIST
    assert (faultfs.source / "new").read_text() == "new"


def test_each_write_reaches_the_source_before_close(faultfs: FaultFS) -> None:
    fd = os.open(faultfs.mountpoint / "peer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"entry 1\n")
        assert (faultfs.source / "peer.log").read_bytes() == b"entry 1\n"
        os.write(fd, b"entry 2\n")
        assert (faultfs.source / "peer.log").read_bytes() == b"entry 1\nentry 2\n"
        os.fsync(fd)
    finally:
        os.close(fd)
    # And the other way: no stale cache on the mount side.
    with open(faultfs.source / "peer.log", "ab") as f:
        f.write(b"local 3\n")
    assert (faultfs.mountpoint / "peer.log").read_bytes() == b"entry 1\nentry 2\nlocal 3\n"


def test_o_append_through_the_mount_is_not_atomic_like_nfs(faultfs: FaultFS) -> None:
    # The kernel picks the offset from the size it saw at open, as an NFS client does: an append
    # that is not under the shared lock can overwrite what the other side appended meanwhile.
    (faultfs.source / "peer.log").write_bytes(b"AAAA")
    fd = os.open(faultfs.mountpoint / "peer.log", os.O_WRONLY | os.O_APPEND)
    try:
        with open(faultfs.source / "peer.log", "ab") as f:
            f.write(b"BBBB")
        os.write(fd, b"CC")
    finally:
        os.close(fd)
    assert (faultfs.source / "peer.log").read_bytes() == b"AAAACCBB"


# -- hang ------------------------------------------------------------------------------------


def test_hang_blocks_every_caller_until_release(faultfs: FaultFS, procs: Procs) -> None:
    (faultfs.source / "peer.log").write_text("data")
    faultfs.set_mode("hang")
    reader = procs.spawn(READ_FILE, faultfs.mountpoint / "peer.log")
    stats = faultfs.wait_blocked(1)
    assert stats.mode == "hang"
    time.sleep(0.2)
    assert reader.poll() is None
    stats = faultfs.release()
    out, err = reader.communicate(timeout=PROC_TIMEOUT)
    assert (reader.returncode, out) == (0, "data\n"), err
    stats = faultfs.stats()
    assert (stats.mode, stats.blocked, stats.released, stats.killed) == ("normal", 0, 1, 0)


def test_hang_ignores_signals_other_than_sigkill(faultfs: FaultFS, procs: Procs) -> None:
    # A hard NFS mount sleeps TASK_KILLABLE: a caught signal does not end the wait.
    (faultfs.source / "peer.log").write_text("data")
    faultfs.set_mode("hang")
    reader = procs.spawn(
        """
        import signal, sys
        signal.signal(signal.SIGUSR1, lambda *_: print("signalled", flush=True))
        print("ready", flush=True)
        print(open(sys.argv[1]).read(), flush=True)
        """,
        faultfs.mountpoint / "peer.log",
    )
    ready(reader)
    faultfs.wait_blocked(1)
    reader.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert reader.poll() is None
    assert faultfs.stats().blocked == 1
    faultfs.release()
    out, err = reader.communicate(timeout=PROC_TIMEOUT)
    assert reader.returncode == 0, err
    assert "data" in out
    assert "signalled" in out


@pytest.mark.parametrize("call", ["read", "write", "fsync", "lockf", "listdir"])
def test_hung_caller_can_be_sigkilled(faultfs: FaultFS, procs: Procs, call: str) -> None:
    (faultfs.source / "peer.log").write_text("data")
    caller = procs.spawn(
        """
        import fcntl, os, sys
        path, call = sys.argv[1], sys.argv[2]
        fd = os.open(path, os.O_RDWR)
        print("ready", flush=True)
        sys.stdin.readline()
        if call == "read":
            os.pread(fd, 10, 0)
        elif call == "write":
            os.write(fd, b"x")
        elif call == "fsync":
            os.fsync(fd)
        elif call == "lockf":
            fcntl.lockf(fd, fcntl.LOCK_EX)
        else:
            os.listdir(os.path.dirname(path))
        """,
        faultfs.mountpoint / "peer.log",
        call,
    )
    ready(caller)
    faultfs.set_mode("hang")
    assert caller.stdin is not None
    caller.stdin.write("\n")
    caller.stdin.flush()
    faultfs.wait_blocked(1)
    started = time.monotonic()
    caller.kill()
    caller.wait(timeout=PROC_TIMEOUT)
    assert time.monotonic() - started < 2.0
    wait_until(lambda: faultfs.stats().blocked == 0, what="the killed caller's request to end")
    stats = faultfs.stats()
    assert stats.killed >= 1
    assert stats.mode == "hang"  # the kill released the caller, not the mount
    faultfs.release()
    assert (faultfs.mountpoint / "peer.log").read_text() == "data"
    assert faultfs.stats().lock_owners == 0


def test_many_hung_callers_and_the_control_channel_still_answers(
    faultfs: FaultFS, procs: Procs
) -> None:
    # More hung requests than libfuse's default of 10 worker threads.
    (faultfs.source / "peer.log").write_text("data")
    faultfs.set_mode("hang")
    readers = [procs.spawn(READ_FILE, faultfs.mountpoint / "peer.log") for _ in range(16)]
    stats = faultfs.wait_blocked(16, timeout=10.0)
    assert stats.max_blocked >= 16
    started = time.monotonic()
    faultfs.release()
    for reader in readers:
        out, err = reader.communicate(timeout=PROC_TIMEOUT)
        assert (reader.returncode, out) == (0, "data\n"), err
    assert time.monotonic() - started < 2.0


def test_release_frees_a_thread_of_the_test_process(faultfs: FaultFS) -> None:
    (faultfs.source / "peer.log").write_text("data")
    faultfs.set_mode("hang")
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append((faultfs.mountpoint / "peer.log").read_text())
    )
    reader.start()
    faultfs.wait_blocked(1)
    faultfs.release()
    reader.join(timeout=PROC_TIMEOUT)
    assert result == ["data"]


def test_blocked_calls_continue_under_the_new_mode(faultfs: FaultFS, procs: Procs) -> None:
    (faultfs.source / "peer.log").write_text("data")
    faultfs.set_mode("hang")
    reader = procs.spawn(
        """
        import sys
        try:
            open(sys.argv[1]).read()
        except OSError as e:
            print(e.errno)
        """,
        faultfs.mountpoint / "peer.log",
    )
    faultfs.wait_blocked(1)
    faultfs.set_mode("eio")
    out, err = reader.communicate(timeout=PROC_TIMEOUT)
    assert out.strip() == str(errno.EIO), err


# -- failing and slow modes --------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "code"), [("eio", errno.EIO), ("etimedout", errno.ETIMEDOUT)])
def test_error_modes_fail_every_call(faultfs: FaultFS, mode: str, code: int) -> None:
    peer_log = faultfs.mountpoint / "peer.log"
    peer_log.write_text("data")
    fd = os.open(peer_log, os.O_RDWR)
    faultfs.set_mode(mode)  # type: ignore[arg-type]
    calls: dict[str, Callable[[], object]] = {
        "stat": lambda: os.stat(peer_log),
        "open": lambda: os.open(peer_log, os.O_RDONLY),
        "create": lambda: os.open(faultfs.mountpoint / "new", os.O_CREAT | os.O_WRONLY),
        "listdir": lambda: os.listdir(faultfs.mountpoint),
        "pread": lambda: os.pread(fd, 4, 0),
        "write": lambda: os.write(fd, b"x"),
        "fsync": lambda: os.fsync(fd),
        "lockf": lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
        "statvfs": lambda: os.statvfs(faultfs.mountpoint),
        "close": lambda: os.close(fd),  # the error of the flush, as NFS reports it at close
    }
    for name, call in calls.items():
        with pytest.raises(OSError) as raised:
            call()
        assert raised.value.errno == code, name
    stats = faultfs.stats()
    assert stats.errors >= len(calls)
    assert set(stats.errors_by_errno) == {errno.errorcode[code]}
    faultfs.release()
    assert peer_log.read_text() == "data"
    assert not (faultfs.source / "new").exists()


def test_slow_mode_delays_every_request(faultfs: FaultFS) -> None:
    peer_log = faultfs.mountpoint / "peer.log"
    peer_log.write_text("data")
    started = time.monotonic()
    os.stat(peer_log)
    fast = time.monotonic() - started
    faultfs.set_mode("slow", delay=0.1)
    started = time.monotonic()
    assert peer_log.read_text() == "data"
    slow = time.monotonic() - started
    assert fast < 0.05
    assert slow >= 0.1 * 3  # lookup, open, read (and more): each request waits
    assert faultfs.stats().delay == 0.1


def test_enospc_fails_writes_but_not_reads(faultfs: FaultFS) -> None:
    peer_log = faultfs.mountpoint / "peer.log"
    peer_log.write_text("data")
    (faultfs.source / "old.log").write_text("old")
    fd = os.open(peer_log, os.O_WRONLY | os.O_APPEND)
    faultfs.set_mode("enospc")
    try:
        for call in (
            lambda: os.write(fd, b"more"),
            lambda: os.open(faultfs.mountpoint / "new", os.O_CREAT | os.O_WRONLY),
            lambda: os.mkdir(faultfs.mountpoint / "dir"),
            lambda: os.truncate(peer_log, 100),
        ):
            with pytest.raises(OSError) as raised:
                call()
            assert raised.value.errno == errno.ENOSPC
        assert peer_log.read_text() == "data"
        assert sorted(os.listdir(faultfs.mountpoint)) == ["old.log", "peer.log"]
        assert os.statvfs(faultfs.mountpoint).f_bavail == 0
        os.unlink(faultfs.mountpoint / "old.log")  # freeing space works
        faultfs.release()
        os.write(fd, b"more")
    finally:
        os.close(fd)
    assert (faultfs.source / "peer.log").read_text() == "datamore"
    assert faultfs.stats().errors_by_errno == {"ENOSPC": 4}


def test_a_mode_can_be_limited_to_some_requests(faultfs: FaultFS, procs: Procs) -> None:
    # NFS write-back errors: write(2) succeeds, fsync and close report the failure.
    peer_log = faultfs.mountpoint / "peer.log"
    fd = os.open(peer_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stats = faultfs.set_mode("eio", ops={"fsync", "flush"})
    assert (stats.mode, stats.ops) == ("eio", ["flush", "fsync"])
    os.write(fd, b"entry\n")
    with pytest.raises(OSError) as raised:
        os.fsync(fd)
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError) as raised:
        os.close(fd)
    assert raised.value.errno == errno.EIO
    assert (faultfs.source / "peer.log").read_text() == "entry\n"  # it did arrive
    # Hang only writes: the open goes through, the write blocks.
    faultfs.set_mode("hang", ops={"write"})
    writer = procs.spawn(
        """
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
        print("ready", flush=True)
        os.write(fd, b"more\\n")
        """,
        peer_log,
    )
    ready(writer)
    assert faultfs.wait_blocked(1).calls_by_op.get("write") == 2
    faultfs.release()
    assert finish(writer) == ""
    assert peer_log.read_text() == "entry\nmore\n"
    assert faultfs.stats().ops is None


def test_unknown_mode_is_refused(faultfs: FaultFS) -> None:
    with pytest.raises(ValueError, match="unknown FaultFS mode"):
        faultfs.set_mode("broken")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        faultfs.set_mode("slow", delay=-1)
    with pytest.raises(ValueError, match="not faultable"):
        faultfs.set_mode("eio", ops={"release"})
    assert faultfs.stats().mode == "normal"


# -- locks -----------------------------------------------------------------------------------


def test_lockf_through_the_mount_excludes_lockf_on_the_source(
    lock_file: tuple[Path, Path],
) -> None:
    source, through_mount = lock_file
    fd = os.open(through_mount, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The server holds it on the source as an OFD lock: no POSIX lock of ours, no flock.
        assert proc_locks(source) == [("OFDLCK", "WRITE", -1)]
        assert not try_lockf(source)
        assert not try_lockf(through_mount)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert proc_locks(source) == []
        assert try_lockf(source)
    finally:
        os.close(fd)


def test_lockf_on_the_source_excludes_lockf_through_the_mount(
    lock_file: tuple[Path, Path], procs: Procs
) -> None:
    source, through_mount = lock_file
    holder = procs.spawn(HOLD_LOCK, source, "lockf")
    ready(holder)
    assert proc_locks(source) == [("POSIX", "WRITE", holder.pid)]
    fd = os.open(through_mount, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        # F_GETLK through the mount names the holder on the source.
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, l_pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
        assert (l_type, l_pid) == (fcntl.F_WRLCK, holder.pid)
        finish(holder)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert proc_locks(source) == [("OFDLCK", "WRITE", -1)]
    finally:
        os.close(fd)
    # Closing the descriptor drops the lock, as for any POSIX lock.
    assert proc_locks(source) == []


def test_two_processes_locking_through_the_mount_exclude_each_other(
    lock_file: tuple[Path, Path], procs: Procs, faultfs: FaultFS
) -> None:
    source, through_mount = lock_file
    holder = procs.spawn(HOLD_LOCK, through_mount, "lockf")
    ready(holder)
    assert not try_lockf(through_mount)
    assert faultfs.stats().lock_owners == 1
    fd = os.open(through_mount, os.O_RDONLY)
    try:
        query = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, l_pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
        assert (l_type, l_pid) == (fcntl.F_WRLCK, holder.pid)
    finally:
        os.close(fd)
    holder.kill()
    holder.wait(timeout=PROC_TIMEOUT)
    # The dead holder's files were closed: its lock is gone from the source too.
    wait_until(lambda: proc_locks(source) == [], what="the dead holder's lock to go")
    assert try_lockf(through_mount)
    assert faultfs.stats().lock_owners == 0


def test_blocking_lockf_through_the_mount_waits_for_the_source_holder(
    lock_file: tuple[Path, Path], procs: Procs
) -> None:
    source, through_mount = lock_file
    holder = procs.spawn(HOLD_LOCK, source, "lockf")
    ready(holder)
    waiter = procs.spawn(
        """
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR)
        print("ready", flush=True)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
        """,
        through_mount,
    )
    ready(waiter)
    time.sleep(0.2)
    assert waiter.poll() is None
    finish(holder)
    started = time.monotonic()
    ready(waiter, "locked")
    assert time.monotonic() - started < 1.0
    assert proc_locks(source) == [("OFDLCK", "WRITE", -1)]
    finish(waiter)
    assert proc_locks(source) == []


def test_a_killed_lock_waiter_never_gets_the_lock(
    lock_file: tuple[Path, Path], procs: Procs, faultfs: FaultFS
) -> None:
    source, through_mount = lock_file
    holder = procs.spawn(HOLD_LOCK, source, "lockf")
    ready(holder)
    waiter = procs.spawn(
        """
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        print("ready", flush=True)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        """,
        through_mount,
    )
    ready(waiter)
    wait_until(lambda: faultfs.stats().calls_by_op.get("setlkw", 0) == 1, what="the lock wait")
    waiter.kill()
    waiter.wait(timeout=PROC_TIMEOUT)
    wait_until(lambda: faultfs.stats().lock_owners == 0, what="the waiter's description to go")
    finish(holder)
    assert proc_locks(source) == []
    assert try_lockf(source)


def test_a_lock_wait_through_the_mount_is_interruptible(
    lock_file: tuple[Path, Path], procs: Procs
) -> None:
    source, through_mount = lock_file
    holder = procs.spawn(HOLD_LOCK, source, "lockf")
    ready(holder)
    waiter = procs.spawn(
        """
        import fcntl, os, signal, sys
        def on_alarm(*_):
            raise TimeoutError
        signal.signal(signal.SIGALRM, on_alarm)
        fd = os.open(sys.argv[1], os.O_RDWR)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            print("locked")
        except TimeoutError:
            print("timed out")
        """,
        through_mount,
    )
    out, err = waiter.communicate(timeout=PROC_TIMEOUT)
    assert out.strip() == "timed out", err
    finish(holder)
    assert proc_locks(source) == []


def test_flock_through_the_mount_behaves_as_on_nfs(
    lock_file: tuple[Path, Path], procs: Procs
) -> None:
    # An NFS client turns flock into a whole-file POSIX lock on the server: it excludes lockf on
    # the source, but not flock on the source (the trap that rules flock out for twinlog).
    source, through_mount = lock_file
    holder = procs.spawn(HOLD_LOCK, through_mount, "flock")
    ready(holder)
    assert proc_locks(source) == [("OFDLCK", "WRITE", -1)]
    assert not try_lockf(source)
    fd = os.open(source, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not excluded!
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    finish(holder)
    # The kernel drops a flock at the last close of the file, sent to the server asynchronously.
    wait_until(lambda: proc_locks(source) == [], what="the flock to go with the holder")


def test_unlocks_are_not_held_back_by_a_hang(
    lock_file: tuple[Path, Path], procs: Procs, faultfs: FaultFS
) -> None:
    source, through_mount = lock_file
    holder = procs.spawn(
        """
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("ready", flush=True)
        sys.stdin.readline()
        fcntl.lockf(fd, fcntl.LOCK_UN)
        print("unlocked", flush=True)
        """,
        through_mount,
    )
    ready(holder)
    faultfs.set_mode("hang")
    assert finish(holder) == "unlocked"
    assert proc_locks(source) == []
    assert try_lockf(source)


def test_lock_requests_hang_with_the_mount(
    lock_file: tuple[Path, Path], procs: Procs, faultfs: FaultFS
) -> None:
    _, through_mount = lock_file
    locker = procs.spawn(
        """
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        print("ready", flush=True)
        sys.stdin.readline()
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        """,
        through_mount,
    )
    ready(locker)
    faultfs.set_mode("hang")
    assert locker.stdin is not None
    locker.stdin.write("\n")
    locker.stdin.flush()
    stats = faultfs.wait_blocked(1)
    assert stats.calls_by_op.get("setlk") == 1
    faultfs.release()
    assert finish(locker) == "locked"


# -- lifecycle -------------------------------------------------------------------------------


def test_mount_and_server_go_even_when_the_test_body_fails(tmp_path: Path, procs: Procs) -> None:
    source, mountpoint = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    (source / "peer.log").write_text("data")
    servers: list[psutil.Process] = []
    readers: list[subprocess.Popen[str]] = []

    def failing_test_body() -> None:
        with FaultFS(source, mountpoint) as fs:
            servers.append(psutil.Process(fs.pid))
            fs.set_mode("hang")
            readers.append(procs.spawn(READ_FILE, mountpoint / "peer.log"))
            fs.wait_blocked(1)
            raise RuntimeError("test failed")

    with pytest.raises(RuntimeError, match="test failed"):
        failing_test_body()
    [server], [reader] = servers, readers
    assert not is_mounted(mountpoint)
    assert not server.is_running()
    out, err = reader.communicate(timeout=PROC_TIMEOUT)  # released, not stuck
    assert out == "data\n", err
    assert os.listdir(mountpoint) == []  # a plain directory again


def test_stop_cleans_up_after_a_crashed_server(tmp_path: Path) -> None:
    source, mountpoint = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    fs = FaultFS(source, mountpoint)
    fs.start()
    try:
        os.kill(fs.pid, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(fs.pid) or _is_zombie(fs.pid), what="the crash")
        with pytest.raises(OSError) as raised:
            os.stat(mountpoint / "x")
        # A dead mount, as after a server crash (ECONNABORTED while the kernel aborts requests).
        assert raised.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        with pytest.raises(FaultFSError):
            fs.stats()
    finally:
        fs.stop()
    assert not is_mounted(mountpoint)
    fs.stop()  # idempotent


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    return True


def test_server_exits_when_its_owner_dies(tmp_path: Path, procs: Procs) -> None:
    source, mountpoint = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    owner = procs.spawn(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from faultfs import FaultFS
        fs = FaultFS(sys.argv[2], sys.argv[3])
        fs.start()
        fs.set_mode("hang")
        print(fs.pid, flush=True)
        sys.stdin.readline()
        """,
        Path(__file__).parent,
        source,
        mountpoint,
    )
    assert owner.stdout is not None
    server = psutil.Process(int(owner.stdout.readline()))
    assert is_mounted(mountpoint)
    owner.kill()
    owner.wait(timeout=PROC_TIMEOUT)
    server.wait(timeout=PROC_TIMEOUT)
    assert not is_mounted(mountpoint)


def test_start_refuses_a_busy_mountpoint(faultfs: FaultFS) -> None:
    with pytest.raises(FaultFSError, match="already mounted"):
        FaultFS(faultfs.source, faultfs.mountpoint).start()
