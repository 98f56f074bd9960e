"""Locks are POSIX record locks that exclude other processes and threads, never flock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pairlib import Pair
from twinlog import LockTimeoutError
from twinlog._locks import OfdLock, PosixLock

_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("GOT")
except OSError:
    print("BLOCKED")
"""


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(30)
"""


def try_lock_elsewhere(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, os.fspath(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def locks_on(path: Path) -> list[str]:
    ino = os.stat(path).st_ino
    with open("/proc/locks", encoding="ascii") as f:
        return [line for line in f if f":{ino} " in line]


def dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_lock_is_posix_not_flock_and_excludes_other_processes(tmp_path: Path) -> None:
    lock = PosixLock(dir_fd(tmp_path), create=True)
    lock.acquire(1.0)
    try:
        held = locks_on(tmp_path / "twinlog.lock")
        assert len(held) == 1
        assert "POSIX" in held[0] and "FLOCK" not in held[0], held
        assert try_lock_elsewhere(tmp_path / "twinlog.lock") == "BLOCKED"
    finally:
        lock.release()
    assert try_lock_elsewhere(tmp_path / "twinlog.lock") == "GOT"


def test_lock_taken_through_a_mount_excludes_the_local_one(pair: Pair) -> None:
    """a's worker locks b's directory through a's peer mount; b's own lock must wait."""
    a = pair.twin("a")
    a._sides.reach.ops.connect("b", a._local_ops.dev_ino())
    try:
        held = locks_on(pair.log_dir("b") / "twinlog.lock")
        assert len(held) == 1 and "POSIX" in held[0]
        b_lock = PosixLock(dir_fd(pair.log_dir("b")), create=False)
        with pytest.raises(LockTimeoutError):
            b_lock.acquire(0.2)
    finally:
        a._sides.reach.ops.release()
    b_lock.acquire(0.5)
    b_lock.release()


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    fd = dir_fd(tmp_path)
    inside = 0
    overlap = False

    def worker() -> None:
        nonlocal inside, overlap
        lock = PosixLock(fd, create=True)
        for _ in range(50):
            lock.acquire(5.0)
            inside += 1
            if inside > 1:
                overlap = True
            time.sleep(0.0005)
            inside -= 1
            lock.release()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap


def test_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "twinlog.lock"
    path.touch()
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, os.fspath(path)],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            lock = PosixLock(dir_fd(tmp_path), create=False)
            start = time.monotonic()
            with pytest.raises(LockTimeoutError) as info:
                lock.acquire(0.3)
            assert 0.25 < time.monotonic() - start < 2
            assert isinstance(info.value, TimeoutError)
        finally:
            holder.kill()
    lock.acquire(1.0)
    lock.release()


def test_twinlog_holds_ofd_lock_locally_and_posix_through_the_mount(pair: Pair) -> None:
    """While a write holds both locks: an OFD lock on a's file, a POSIX lock (the worker's,
    taken through the mount) on b's: both record-lock kinds that NFS servers honour.
    (Observed in a first write, which looks at the peer under both locks before appending;
    later writes may take and drop the peer's lock in one worker call, through the same
    DirOps.lock.)"""
    a = pair.twin("a")
    seen: dict[str, list[str]] = {}
    real_refresh = a._sides.peer.refresh_with

    def spy(*args: object, **kw: object) -> object:
        seen["a"] = locks_on(pair.log_dir("a") / "twinlog.lock")
        seen["b"] = locks_on(pair.log_dir("b") / "twinlog.lock")
        return real_refresh(*args, **kw)  # type: ignore[arg-type]

    a._sides.peer.refresh_with = spy  # type: ignore[method-assign]
    a.write("observed")
    assert len(seen["a"]) == 1 and "OFDLCK" in seen["a"][0]
    assert len(seen["b"]) == 1 and "POSIX" in seen["b"][0]
    assert not any("FLOCK" in line for lines in seen.values() for line in lines)


def test_ofd_lock_reuses_its_description_but_still_excludes(tmp_path: Path) -> None:
    """A released OfdLock keeps its description for the next acquire (unlocked, not closed):
    it must still exclude another instance and another process, and be free after release."""
    fd = dir_fd(tmp_path)
    first = OfdLock(fd, create=True)
    second = OfdLock(fd, create=False)
    for _ in range(3):
        first.acquire(1.0)
        assert try_lock_elsewhere(tmp_path / "twinlog.lock") == "BLOCKED"
        with pytest.raises(LockTimeoutError):
            second.acquire(0.1)
        first.release()
        assert not locks_on(tmp_path / "twinlog.lock")
        second.acquire(1.0)
        with pytest.raises(LockTimeoutError):
            first.acquire(0.1)
        second.release()
    first.close()
    second.close()


def test_ofd_lock_kept_description_is_not_shared_with_a_forked_child(tmp_path: Path) -> None:
    """After a fork the child must not lock through the parent's kept description: the two
    would count as one holder and both get the lock."""
    lock = OfdLock(dir_fd(tmp_path), create=True)
    lock.acquire(1.0)
    lock.release()  # the description is now kept as the spare
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            lock.acquire(1.0)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
            lock.release()
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        with pytest.raises(LockTimeoutError):
            lock.acquire(0.2)
    finally:
        os.write(done_w, b"1")
        os.waitpid(pid, 0)
    lock.acquire(1.0)
    lock.release()
    lock.close()


def test_a_forked_child_letting_go_does_not_drop_the_parents_lock(tmp_path: Path) -> None:
    """Forked while the parent holds the lock, the child shares its description: the child's
    release or close must leave the parent's lock in place."""
    fd = dir_fd(tmp_path)
    lock = OfdLock(fd, create=True)
    lock.acquire(1.0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            lock.release()
            lock.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    other = OfdLock(fd, create=False)
    with pytest.raises(LockTimeoutError):
        other.acquire(0.2)
    assert try_lock_elsewhere(tmp_path / "twinlog.lock") == "BLOCKED"
    lock.release()
    other.acquire(1.0)
    other.close()
    lock.close()
