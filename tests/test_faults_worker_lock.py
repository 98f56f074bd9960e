"""A peer worker that holds the peer's lock after a failed batch must not deadlock on the next
lock request.

Found while diagnosing the 10-minute soak (seed 1093589873, and seed 11 of a short run): an
orphaned ``twinlog._worker`` (its writer SIGKILLed) sleeping in ``futex_do_wait`` forever, with
the peer's lock file open. When an operation after ``lock`` in the same batch fails (EIO on the
log read, for instance), the worker keeps the lock (and ``PosixLock``'s per-directory mutex), but
the caller never learnt it was taken, so it never unlocks. The next ``lock`` request then blocks
in ``self._mutex.acquire(timeout=-1)`` (``src/twinlog/_locks.py``, ``PosixLock.acquire``): no
heartbeat, so a live caller kills it after io_timeout (one lost round trip); but if the caller
dies meanwhile, the orphan never reads EOF and holds the peer's lock for good.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from twinlog._worker import RemoteDir
from twinlog.exceptions import PeerError


def test_lock_after_a_batch_that_failed_behind_its_lock(tmp_path: Path) -> None:
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "twinlog.node").write_text("b\n")
    (peer / "twinlog.lock").write_bytes(b"")
    remote = RemoteDir(os.fspath(peer))
    try:
        remote.call("check_dir", "b", (0, 0), timeout=5.0)
        # The lock is taken, then an operation behind it fails: the caller sees only the error.
        with contextlib.suppress(PeerError):
            remote.batch([("lock", (None,)), ("rename", ("missing", "x"))], timeout=5.0)
        remote.call("lock", None, timeout=2.0)  # PeerError("timeout") when the worker deadlocks
        remote.call("unlock", timeout=2.0)
    finally:
        remote.close()
