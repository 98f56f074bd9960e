"""A hung, stuck, full or failing peer never blocks or fails a writer; a full local disk fails
the write cleanly. (The FUSE fault filesystem in test_faults_fuse.py adds kernel-level hangs.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_ids, run
from twinlog import StorageError


def worker_pid(log: object) -> int:
    proc = log._sides.reach.remote._proc  # type: ignore[attr-defined]
    assert proc is not None and proc.poll() is None
    return int(proc.pid)


def test_hung_peer_worker_is_abandoned_within_the_timeout(pair: Pair) -> None:
    a = pair.twin("a", probe_timeout=0.3, io_timeout=0.5)
    a.write("first")
    pid = worker_pid(a)
    os.kill(pid, signal.SIGSTOP)  # the worker stops answering, as if stuck on a dead mount
    start = time.monotonic()
    e = a.write("while hung")
    elapsed = time.monotonic() - start
    assert elapsed < 0.3 + 0.5, elapsed
    assert a.last_reason == "timeout"
    assert a.peer_worker_stats()["killed"] == 1
    assert log_ids(pair.log_dir("a"))[-1] == e.id
    assert (pair.log_dir("a") / "twinlog.cache").exists()
    # the abandoned worker is dead, a fresh one delivers the cache on the next write
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.01)
    a.write("backing off")  # for probe_timeout + io_timeout, writes do not knock again
    assert a.last_reason == "timeout"
    assert a.peer_worker_stats()["spawned"] == 1
    assert a.reconcile().peer_reachable  # an explicit reconcile does; so does a later write
    a.write("recovered")
    assert a.last_reason == "ok"
    assert a.peer_worker_stats()["spawned"] == 2
    assert_converged(pair, ["a:1", "a:2", "a:3", "a:4"])


@pytest.mark.parametrize("trips", ["one", "two"])
def test_worker_hung_mid_append_is_bounded_and_exactly_once(pair: Pair, trips: str) -> None:
    """The worker stops after the peer append was sent: the entry may or may not be on the peer;
    it is cached, and the next drain skips it if it did arrive. In the one-round-trip write
    (lock, check, append, unlock in one request) and in the one that looked first."""
    a = pair.twin("a", probe_timeout=0.5, io_timeout=0.5)
    a.write("first")
    name = "append_if_settled" if trips == "one" else "append_and_release"
    if trips == "two":
        a._sides.reach._one_trip_paused_until = float("inf")
    real_append = getattr(a._sides.reach.ops, name)

    def append_then_hang(*args: object, **kwargs: object) -> object:
        result = real_append(*args, **kwargs)  # lands on the peer...
        os.kill(worker_pid(a), signal.SIGSTOP)  # ...but the answer never comes back
        a._sides.reach.ops._call("stat", "twinlog.log")
        return result

    setattr(a._sides.reach.ops, name, append_then_hang)
    start = time.monotonic()
    a.write("lands but unacknowledged by the peer")
    assert time.monotonic() - start < 0.5 + 0.5 + 0.5
    delattr(a._sides.reach.ops, name)
    assert a.last_reason != "ok"
    assert b"a:2" in (pair.log_dir("a") / "twinlog.cache").read_bytes()
    assert "a:2" in log_ids(pair.log_dir("b"))
    a.write("next")
    pair.twin("b").reconcile()
    assert_converged(pair, ["a:1", "a:2", "a:3"])


def test_stuck_worker_of_this_node_blocks_new_peer_io(pair: Pair) -> None:
    stuck = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "twinlog._worker"]
    )
    try:
        (pair.log_dir("a") / "twinlog.stuck").write_text(f"{stuck.pid}\n")
        a = pair.twin("a")
        a.write("x")
        assert a.last_reason == "stuck"
        assert a.peer_worker_stats()["spawned"] == 0
        assert a.status()["peer_reason"] == "stuck"
    finally:
        stuck.kill()
        stuck.wait()
    a.write("y")
    assert a.last_reason == "ok"
    assert not (pair.log_dir("a") / "twinlog.stuck").exists()
    assert_converged(pair, ["a:1", "a:2"])


def test_recycled_pid_in_stuck_file_is_ignored(pair: Pair) -> None:
    (pair.log_dir("a") / "twinlog.stuck").write_text(f"{os.getpid()}\n999999999\n")
    a = pair.twin("a")
    a.write("x")
    assert a.last_reason == "ok"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", os.fspath(mnt))
    except subprocess.CalledProcessError:
        pytest.skip("cannot mount tmpfs")
    try:
        yield mnt
    finally:
        run("umount", "-l", os.fspath(mnt))


def fill(path: Path) -> None:
    """Take every free byte of the file system ``path`` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)


def test_full_local_disk_fails_the_write_and_loses_nothing(tmp_path: Path, tiny_fs: Path) -> None:
    from twinlog import Config, TwinLog

    log_dir = tiny_fs / "log"
    with TwinLog.init(Config("a", "b", log_dir, tmp_path / "peer", require_mount=False)) as a:
        acked = [a.write(f"entry {i}").id for i in range(5)]
        fill(tiny_fs / "filler")
        error: StorageError | None = None
        for i in range(1000):
            try:
                acked.append(a.write(f"more {i} " + "x" * 200).id)
            except StorageError as exc:
                error = exc
                break
        assert isinstance(error, OSError), "the disk never filled up"
        data = (log_dir / "twinlog.log").read_bytes()
        assert data.endswith(b"\n"), "no partial line left behind"
        assert [x.id for x in a.read()] == acked
        (tiny_fs / "filler").unlink()
        assert a.write("space again").seq == len(acked) + 1


def test_full_peer_disk_caches_and_delivers_later(tmp_path: Path, tiny_fs: Path) -> None:
    pair = Pair(tmp_path / "pair")
    pair.log_dir("b").rmdir()
    (tiny_fs / "log").mkdir()
    pair.log_dir("b").symlink_to(tiny_fs / "log")
    try:
        pair.twin("a").close()
        pair.twin("b").close()
        pair.heal()
        a = pair.twin("a")
        acked = [a.write("before").id]
        fill(tiny_fs / "filler")
        for i in range(20):
            acked.append(a.write(f"peer full {i} " + "y" * 300).id)
        assert a.last_reason == "io_error"
        assert (pair.log_dir("a") / "twinlog.cache").exists()
        assert (pair.log_dir("b").resolve() / "twinlog.log").read_bytes().endswith(b"\n")
        (tiny_fs / "filler").unlink()
        a.reconcile()
        assert_converged(pair, acked)
    finally:
        pair.close()
