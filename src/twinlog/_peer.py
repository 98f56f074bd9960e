"""The peer's directory, reached only through the killable worker, every call on a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twinlog._fileops import CACHE_FILE, CHUNK, LOG_FILE, NO_LOOK, Allowed, Look
from twinlog._worker import RemoteDir

__all__ = ["RemoteOps"]


class RemoteOps:
    """:class:`twinlog._store.PeerOps` for the peer directory, through the killable worker.

    Each call answers within one of the deadlines ``_reach.Deadlines`` decides (``io`` unless
    it says otherwise); any failure raises :class:`~twinlog.exceptions.PeerError`, and a call
    that does not answer in time has its worker killed first.
    """

    def __init__(self, remote: RemoteDir, *, probe: float, io: float, lock_patience: float) -> None:
        self.remote = remote
        self.probe = probe
        self.io = io
        self.lock_patience = lock_patience

    def _call(self, op: str, *args: Any) -> Any:
        return self.remote.call(op, *args, timeout=self.io)

    def check_identity(self, expected_node: str, not_dev_ino: tuple[int, int]) -> None:
        """Check, without locking, that the directory is the peer's (its identity marker, and
        not ourselves), within the ``probe`` deadline."""
        self.remote.call("check_dir", expected_node, not_dev_ino, timeout=self.probe)

    def connect(self, expected_node: str, not_dev_ino: tuple[int, int]) -> None:
        """Check the directory is the peer's (identity marker, not ourselves) and take its lock."""
        self.connect_and_look(expected_node, not_dev_ino, None)

    def connect_and_look(
        self, expected_node: str, not_dev_ino: tuple[int, int], log_offset: int | None
    ) -> Look:
        """:meth:`connect`, then the log's new bytes from ``log_offset`` and whether the peer has
        a cache (skipped when ``log_offset`` is None), all in one round trip.

        Deadline: the answer comes within ``probe`` (this is the first contact); while the lock
        is busy, every attempt of the worker must answer within it (a dead server stops
        answering, a busy one does not), for at most ``lock_patience`` in all. The identity
        check is in the same stage as the lock: a stage of its own is one more reply, and a
        wake-up, on every commit's path.
        """
        stage = [*self._identity(expected_node, not_dev_ino), ("lock", (None,))]
        if log_offset is not None:
            stage += [("tail", (LOG_FILE, log_offset, CHUNK)), ("stat", (CACHE_FILE,))]
        results = self.remote.stages([(stage, self.probe)], patience=self.lock_patience)[0]
        if log_offset is None:
            return NO_LOOK
        return Look(results[2], results[3] is not None)

    def append_if_settled(
        self,
        expected_node: str,
        not_dev_ino: tuple[int, int],
        *,
        known: tuple[int, int, bytes],
        allowed: Allowed,
        chunks: list[bytes],
        fsync: bool,
    ) -> tuple[bool, Any, Any]:
        """Check the identity, lock, then :meth:`~twinlog._fileops.DirOps.append_if_settled` on
        the log, in one round trip: ``(True, new bytes, size)`` appended and unlocked, or
        ``(False, tail, has_cache)`` locked. The answer must come within ``probe`` (this is the
        write's first contact), fsync included; while the lock is busy, as
        :meth:`connect_and_look`."""
        stage = [
            *self._identity(expected_node, not_dev_ino),
            ("lock", (None,)),
            # A plain tuple on the pipe: a NamedTuple pickles by class reference, twice the
            # bytes and an import lookup in the worker on every write.
            ("append_if_settled", (LOG_FILE, CACHE_FILE, known, tuple(allowed), chunks, fsync)),
        ]
        results = self.remote.stages([(stage, self.probe)], patience=self.lock_patience)[0]
        done, first, second = results[2]
        return bool(done), first, second

    @staticmethod
    def _identity(
        expected_node: str, not_dev_ino: tuple[int, int]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        return [("check_dir", (expected_node, not_dev_ino))]

    def append_and_release(self, name: str, chunks: list[bytes], fsync: bool) -> int:
        """Append, then unlock, in one round trip (the write path's last peer call)."""
        size, _ = self.remote.batch(
            [("append", (name, chunks, fsync)), ("unlock", ())], timeout=self.io
        )
        return int(size)

    def release(self) -> None:
        """Unlock the peer; a dead or killed worker held nothing any more."""
        if self.remote.alive:
            self._call("unlock")

    def stat(self, name: str) -> tuple[int, int] | None:
        result: tuple[int, int] | None = self._call("stat", name)
        return result

    def read(self, name: str, offset: int, length: int) -> bytes:
        data: bytes = self._call("read", name, offset, length)
        return data

    def tail(self, name: str, offset: int, limit: int) -> tuple[int, int, bytes] | None:
        result: tuple[int, int, bytes] | None = self._call("tail", name, offset, limit)
        return result

    def append(self, name: str, chunks: list[bytes], fsync: bool) -> int:
        size: int = self._call("append", name, chunks, fsync)
        return size

    def append_from_later(
        self, name: str, src_path: str, offset: int, length: int, fsync: bool
    ) -> Callable[[], int]:
        """Start :meth:`~twinlog._fileops.DirOps.append_from` in the worker; the returned
        function waits for it and returns the new size, or -1 (nothing appended)."""
        receive = self.remote.submit(
            [([("append_from", (name, src_path, offset, length, fsync))], self.io)]
        )
        return lambda: int(receive()[0][0])

    def repair_tail(self, name: str) -> int:
        cut: int = self._call("repair_tail", name)
        return cut

    def fsync_file(self, name: str) -> None:
        self._call("fsync_file", name)

    def unlink(self, name: str) -> bool:
        done: bool = self._call("unlink", name)
        return done

    def replace(self, name: str, data: bytes, fsync: bool) -> None:
        self._call("replace", name, data, fsync)

    def rename(self, src: str, dst: str) -> None:
        self._call("rename", src, dst)

    def listdir(self) -> list[str]:
        names: list[str] = self._call("listdir")
        return names

    def fsync_dir(self) -> None:
        self._call("fsync_dir")
