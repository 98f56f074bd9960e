"""Primitive file operations on one node directory, the same whether run here or in the worker.

The local node's directory is driven in-process; the peer's (the mount) only from the killable
worker process (see ``_worker.py``), which runs this very class on its side of a pipe. Every
operation is addressed relative to a directory descriptor, so once the directory has been checked
(identity marker, not ourselves), a vanishing mount cannot redirect writes to a local directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from twinlog._locks import LOCK_FILE, OfdLock, PosixLock

__all__ = [
    "CACHE_FILE",
    "CHUNK",
    "LOG_FILE",
    "MARKER_FILE",
    "READ_ONLY_ERRNOS",
    "TORN_FILE",
    "DirOps",
    "IdentityError",
]

LOG_FILE = "twinlog.log"
CACHE_FILE = "twinlog.cache"
MARKER_FILE = "twinlog.node"
TORN_FILE = "twinlog.torn"

#: The most one read of a log returns: a store's reads and the tail a lock stage looks at.
CHUNK = 1 << 20
_READ_BACK = 64 * 1024
_COPY_BUFFER = 256 * 1024  # a drain's copy and count, in pieces that stay in the CPU's cache
_SETTLED = 256 * 1024  # at most this much new in the peer's log, for the one-round-trip write
#: What opening a file for writing fails with where we may only read: no write permission, or
#: a read-only filesystem (a forensic copy, a mounted backup).
READ_ONLY_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class Allowed(NamedTuple):
    """What a one-round-trip append (:meth:`DirOps.append_if_settled`) lets others have added to
    the log since the writer read it: ids starting ``own`` (``{"id":"<writer's node>:``) with
    exactly seqs ``first`` to ``last`` in order (the writer's other processes delivered them),
    ids starting ``others`` (the directory's node) with seqs of at most ``most`` (entries the
    writer holds), and nothing else."""

    own: bytes
    first: int
    last: int
    others: bytes
    most: int


class Look(NamedTuple):
    """What the peer's lock stage saw: its log's new bytes (``(size, ino, data)`` from our
    read offset; None if not asked) and whether it has a cache."""

    tail: tuple[int, int, bytes] | None
    has_cache: bool


NO_LOOK = Look(None, False)


class IdentityError(Exception):
    """The directory is not the expected node's; ``str(exc)`` starts with the probe reason."""


class DirOps:
    """Operations on one twinlog directory. Methods are called by name through :meth:`call`."""

    def __init__(
        self, path: str, *, lock_kind: str = "posix", keep_open: frozenset[str] = frozenset()
    ) -> None:
        self.path = path
        self._lock_kind = lock_kind
        self._dir_fd: int | None = None
        # (dev, ino, node) of the open directory whose identity marker check_dir last read.
        self._marker_read: tuple[int, int, str] | None = None
        self._lock: PosixLock | OfdLock | None = None
        self._create_lock_file = False
        # Files in ``keep_open`` stay open between appends (our own directory: one stat per
        # append instead of open, fstat and close). Never for a directory on NFS, whose
        # client checks a file's cached attributes at open (close-to-open consistency).
        self._keep_open = keep_open
        self._open_files: dict[str, tuple[int, int, int]] = {}  # name: (fd, st_dev, st_ino)
        self._pid = os.getpid()

    # -- directory identity -------------------------------------------------------------
    def open_dir(
        self, expected_node: str, not_dev_ino: tuple[int, int] | None, create: bool
    ) -> str:
        """(Re)open the directory and check its identity marker.

        Returns ``"ok"`` or a probe reason: ``"missing"`` (no directory or marker: an unmounted
        mount point looks like this), ``"wrong_identity"``, ``"self"``.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "missing"
        if self._dir_fd is not None:
            try:
                cur = os.fstat(self._dir_fd)
                same = (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino)
            except OSError:  # ENOTCONN, ESTALE, EIO: the mount it was on is gone
                same = False
            if not same:
                self.close()
        if self._dir_fd is None:
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self._dir_fd)
        if not_dev_ino is not None and (st.st_dev, st.st_ino) == tuple(not_dev_ino):
            return "self"
        try:
            marker = self.read_all(MARKER_FILE).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return "missing"
        if marker != expected_node:
            return "wrong_identity:" + marker[:64]
        self._create_lock_file = create
        if create:
            # The peer locks this file through its mount without ever creating it, so it must
            # exist before the peer's first write. A reader simply cannot make it.
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            try:
                os.close(os.open(LOCK_FILE, flags, 0o640, dir_fd=self._dir_fd))
            except OSError as exc:
                if exc.errno not in READ_ONLY_ERRNOS:
                    raise
        return "ok"

    def check_dir(self, expected_node: str, not_dev_ino: tuple[int, int] | None) -> None:
        """:meth:`open_dir`, raising IdentityError unless the directory is the expected node's.

        Run on every contact with the peer. While the path still names the very directory
        whose marker was read last (a stat of the path: a remount or a replaced directory
        changes it), the marker is not read again: three more calls through the mount each
        time, and over NFS as many round trips to the server."""
        st: os.stat_result | None = None
        if self._dir_fd is not None and self._marker_read is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
        if st is not None and (st.st_dev, st.st_ino, expected_node) == self._marker_read:
            return  # the directory checked last time (never our own: its marker names the peer)
        self._marker_read = None
        reason = self.open_dir(expected_node, not_dev_ino, False)
        if reason != "ok":
            raise IdentityError(f"{reason}: {self.path}")
        assert self._dir_fd is not None
        opened = os.fstat(self._dir_fd)
        self._marker_read = (opened.st_dev, opened.st_ino, expected_node)

    def tail(self, name: str, offset: int, limit: int) -> tuple[int, int, bytes] | None:
        """``(size, inode, bytes from offset)`` of a file in one call; None when missing.

        A file not kept open is opened first and its size taken from the descriptor: on NFS,
        opening revalidates the attributes (close-to-open) where a ``stat()`` may answer from
        a cache seconds old. Our own (kept-open, local) files need only the stat."""
        if name in self._keep_open:
            st = self.stat(name)
            if st is None:
                return None
            size, ino = st
            data = self.read(name, offset, min(limit, size - offset)) if size > offset else b""
            return (size, ino, data)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        try:
            fst = os.fstat(fd)
            size = fst.st_size
            data = _pread_all(fd, offset, min(limit, size - offset)) if size > offset else b""
        finally:
            os.close(fd)
        return (size, fst.st_ino, data)

    def close(self) -> None:
        """Forget the directory (after its mount went away, closing may fail: never mind)."""
        if isinstance(self._lock, OfdLock):
            with contextlib.suppress(OSError):
                self._lock.close()
        elif self._lock is not None and self._lock.held:
            with contextlib.suppress(OSError):
                self._lock.release()
        self._lock = None
        for name in list(self._open_files):
            self.forget(name)
        self._marker_read = None
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = None

    @property
    def dir_fd(self) -> int:
        if self._dir_fd is None:
            raise FileNotFoundError(errno.ENOENT, "directory not opened", self.path)
        return self._dir_fd

    def local_path(self, name: str) -> str:
        """The absolute path of ``name`` in this directory (for another process to open)."""
        return os.path.join(os.path.abspath(self.path), name)

    def dev_ino(self) -> tuple[int, int]:
        st = os.fstat(self.dir_fd)
        return (st.st_dev, st.st_ino)

    # -- lock ---------------------------------------------------------------------------
    def lock(self, timeout: float | None, on_wait: Callable[[], None] | None = None) -> None:
        """Take the directory's lock. ``on_wait`` (POSIX kind only) is called now and then while
        the lock is busy, after an attempt the file system answered."""
        lock = self._the_lock()
        if isinstance(lock, PosixLock):
            lock.acquire(timeout, on_wait=on_wait)
        else:
            lock.acquire(timeout)

    def _the_lock(self) -> PosixLock | OfdLock:
        if self._lock is None:
            # Made on first use: a reader that never locks needs no write access.
            kind = OfdLock if self._lock_kind == "ofd" else PosixLock
            self._lock = kind(self.dir_fd, create=self._create_lock_file)
        return self._lock

    def try_lock(self) -> bool:
        """Take the directory's lock if it is free now (OFD kind: our own directory); False
        when it is busy or cannot be taken at all (``lock()`` then says why)."""
        if self._lock_kind != "ofd":
            return False
        try:
            lock = self._the_lock()
            assert isinstance(lock, OfdLock)
            return lock.try_acquire()
        except OSError:
            return False

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    # -- files --------------------------------------------------------------------------
    def stat(self, name: str) -> tuple[int, int] | None:
        """``(size, inode)`` of a file, or None when it does not exist."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_ino)

    def read(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the end); b"" for a missing file."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return b""
        try:
            return _pread_all(fd, offset, length)
        finally:
            os.close(fd)

    def read_all(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def append(self, name: str, chunks: list[bytes], fsync: bool) -> int:
        """Append each chunk with one ``write()`` and fsync; return the new size.

        A chunk is one line or a run of complete lines. On any failure the file is cut back to
        its size before the call (best effort), so a failed append leaves no partial line, and
        the error is raised: errors at write, fsync or close all mean "not durable".
        """
        fd, start, _ = self._open_append(name)
        try:
            size = _write_chunks(fd, start, chunks, fsync)
        except BaseException:
            self._abort_append(name, fd, start)
            raise
        self._end_append(name, fd)
        return size

    def append_if_settled(  # noqa: PLR0917 - one flat call over the worker's pipe
        self,
        name: str,
        cache_name: str,
        known: tuple[int, int, bytes],
        allowed: Allowed,
        chunks: list[bytes],
        fsync: bool,
    ) -> tuple[bool, bytes, int] | tuple[bool, tuple[int, int, bytes] | None, bool]:
        """Under the directory's lock: append ``chunks`` and unlock, if nothing has to be drained
        first, else look and keep the lock (the write path's one round trip to the peer).

        Nothing has to be drained when there is no ``cache_name``, ``name`` is still the file
        ``known = (offset, inode, the bytes just before offset)`` was read from (its inode, and
        those bytes still there: a new file may get a freed inode's number), and what was added
        after ``offset`` is whole entry lines that ``allowed`` allows (its plain tuple, as it
        crosses the worker's pipe).

        Returns ``(True, the bytes after offset, new size)`` when appended (and unlocked), or
        ``(False, tail(name, offset - len(those bytes), ...), cache exists)`` with the lock
        still held (what ``LogStore.refresh_with`` expects from its ``read_offset``).
        """
        offset, ino, before = known
        lead = offset - len(before)
        has_cache = self.stat(cache_name) is not None
        # The size from the descriptor, not from stat(): on NFS, opening revalidates the file's
        # attributes (close-to-open), a stat() may answer from a cache seconds old and miss
        # what the peer's own writers appended since.
        fd, start, now_ino = self._open_append(name)
        size = -1
        seen: bytes | None = None  # from lead
        try:
            if not has_cache and now_ino == ino and offset <= start <= offset + _SETTLED:
                seen = _pread_all(fd, lead, start - lead)
                new = seen[len(before) :]
                if (
                    len(seen) == start - lead
                    and seen.startswith(before)
                    and _as_expected(new, allowed)
                ):
                    size = _write_chunks(fd, start, chunks, fsync)
            if size < 0 and seen is None:
                # What tail(name, lead, ...) would answer, from the descriptor just opened.
                seen = _pread_all(fd, lead, max(0, min(CHUNK, start - lead)))
        except BaseException:
            self._abort_append(name, fd, start)
            raise
        self._end_append(name, fd)
        assert seen is not None
        if size >= 0:
            self.unlock()
            return (True, seen[len(before) :], size)
        return (False, (start, now_ino, seen[:CHUNK]), has_cache)

    def append_from(self, name: str, src_path: str, offset: int, length: int, fsync: bool) -> int:
        """Append ``length`` bytes of the file ``src_path`` from ``offset``; return the new size,
        or -1 (nothing appended) if they do not end a line.

        The worker's half of a drain: the caller checked the run (its first and last seqs, and
        :meth:`count_lines` between them) under the lock that keeps the source as it is, so the
        bytes cross no pipe. They go through one reused buffer. Without ``fsync`` (the caller
        syncs once at the end), their writeback starts at once. Failures as :meth:`append`.
        """
        src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if length <= 0 or os.pread(src, 1, offset + length - 1) != b"\n":
                return -1
            with self._appending(name) as (fd, start):
                for buffer, got in _pieces(src, offset, offset + length, src_path):
                    _write_all(fd, memoryview(buffer)[:got])
                if fsync:
                    os.fsync(fd)
                else:
                    # A drain's blocks are synced once at its end: have the kernel start
                    # writing this one back now, so that fsync finds little left to wait for
                    # (DONTNEED starts writeback of dirty pages and drops them once clean, as
                    # PostgreSQL's pg_flush_data does where sync_file_range is missing).
                    # Only a hint: the fsync at the end reports what went wrong.
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
                return start + length
        finally:
            os.close(src)

    def count_lines(self, name: str, start: int, end: int) -> int:
        """The newlines in bytes ``start`` to ``end`` of ``name`` (an ``OSError`` if it is
        shorter). Read through one reused buffer, which stays in the CPU's cache to be counted:
        a fresh buffer per read counts at half the speed."""
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            return sum(buffer.count(b"\n", 0, got) for buffer, got in _pieces(fd, start, end, name))
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _appending(self, name: str) -> Iterator[tuple[int, int]]:
        """:meth:`_open_append` for the block, then :meth:`_abort_append` if it fails, else
        :meth:`_end_append`. (:meth:`append`, on every write's path, spells this out.)"""
        fd, start, _ = self._open_append(name)
        try:
            yield fd, start
        except BaseException:
            self._abort_append(name, fd, start)
            raise
        self._end_append(name, fd)

    def _open_append(self, name: str) -> tuple[int, int, int]:
        """A readable ``O_APPEND`` descriptor of ``name``, the file's size now and its inode:
        the one kept open if the name still leads to its file (a rotation renames the log, a
        drain unlinks the cache), else a new one."""
        if self._pid != os.getpid():  # a forked child opens its own
            self._open_files.clear()
            self._pid = os.getpid()
        kept = self._open_files.get(name)
        if kept is not None:
            fd, dev, ino = kept
            try:
                st = os.stat(name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino == ino and st.st_dev == dev:
                return fd, st.st_size, ino
            self.forget(name)
        # Readable too: the one-round-trip write reads what was added before it appends.
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            # Without O_CREAT when the file exists: creating takes the directory's lock
            # exclusively, and a process queued on that lock behind a call stuck on a dead NFS
            # server cannot even be killed.
            fd = os.open(name, flags, dir_fd=self.dir_fd)
        except FileNotFoundError:
            fd = os.open(name, flags | os.O_CREAT, 0o640, dir_fd=self.dir_fd)
        st = os.fstat(fd)
        if name in self._keep_open:
            self._open_files[name] = (fd, st.st_dev, st.st_ino)
        return fd, st.st_size, st.st_ino

    def _abort_append(self, name: str, fd: int, start: int) -> None:
        """Cut the file back to ``start`` (best effort) and close the descriptor."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        kept = self._open_files.get(name)
        if kept is not None and kept[0] == fd:
            del self._open_files[name]
        with contextlib.suppress(OSError):
            os.close(fd)

    def _end_append(self, name: str, fd: int) -> None:
        """Close the descriptor unless it is kept open. A failing close raises (NFS reports
        delayed write errors there, and the caller retries)."""
        kept = self._open_files.get(name)
        if kept is None or kept[0] != fd:
            os.close(fd)

    def forget(self, name: str) -> None:
        """Close the descriptor kept open for ``name``, if any (its file may have been
        unlinked by the peer: its space is freed once nobody holds it open)."""
        kept = self._open_files.pop(name, None)
        if kept is not None:
            with contextlib.suppress(OSError):
                os.close(kept[0])

    def repair_tail(self, name: str) -> int:
        """Cut a torn last line (no newline: a writer died mid-append) off ``name``.

        The torn bytes are kept in ``twinlog.torn`` for inspection. Returns how many bytes were
        cut. Call only under the directory lock.
        """
        st = self.stat(name)
        if st is None or st[0] == 0:
            return 0
        size = st[0]
        if self.read(name, size - 1, 1) == b"\n":
            return 0
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - _READ_BACK)
            block = self.read(name, start, pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        torn = self.read(name, keep, size - keep)
        self.append(TORN_FILE, [torn + b"\n"], fsync=True)
        fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        return size - keep

    def fsync_file(self, name: str) -> None:
        """Make everything written to ``name`` so far durable (through a fresh descriptor:
        fsync covers the file's data whoever wrote it)."""
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, name: str) -> bool:
        self.forget(name)
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        return True

    def replace(self, name: str, data: bytes, fsync: bool) -> None:
        """Atomically replace ``name`` with ``data`` (temp file + rename)."""
        tmp = f".{name}.{os.getpid()}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640, dir_fd=self.dir_fd
        )
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def rename(self, src: str, dst: str) -> None:
        self.forget(src)
        os.rename(src, dst, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def listdir(self) -> list[str]:
        return os.listdir(self.dir_fd)

    def fsync_dir(self) -> None:
        os.fsync(self.dir_fd)

    # -- dispatch -----------------------------------------------------------------------
    def call(self, op: str, args: tuple[Any, ...]) -> Any:
        if op.startswith("_") or op not in _OPS:
            raise ValueError(f"unknown operation {op!r}")
        return getattr(self, op)(*args)


_OPS = frozenset(
    {
        "open_dir",
        "check_dir",
        "tail",
        "close",
        "dev_ino",
        "lock",
        "unlock",
        "stat",
        "append_from",
        "append_if_settled",
        "read",
        "read_all",
        "append",
        "repair_tail",
        "unlink",
        "fsync_file",
        "replace",
        "rename",
        "listdir",
        "fsync_dir",
    }
)


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer at the end of the file)."""
    chunks = []
    while length > 0:
        data = os.pread(fd, length, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
        length -= len(data)
    return b"".join(chunks)


def _pieces(fd: int, start: int, end: int, name: str) -> Iterator[tuple[bytearray, int]]:
    """Bytes ``start`` to ``end`` of ``fd``, read one piece at a time into one reused buffer of
    at most ``_COPY_BUFFER`` bytes: ``(buffer, bytes in it)`` per piece, valid until the next.
    An ``OSError`` if the file ends first."""
    buffer = bytearray(min(_COPY_BUFFER, max(end - start, 0)))
    view = memoryview(buffer)
    pos = start
    while pos < end:
        got = os.preadv(fd, [view[: end - pos]], pos)
        if got <= 0:
            raise OSError(errno.EIO, f"{name}: short of {end}")
        yield buffer, got
        pos += got


def _write_chunks(fd: int, start: int, chunks: list[bytes], fsync: bool) -> int:
    """Write each chunk with one ``write()`` to an ``O_APPEND`` descriptor of a file of
    ``start`` bytes (under its lock: they land at the end), then fsync; the new size."""
    size = start
    for chunk in chunks:
        _write_all(fd, chunk)
        size += len(chunk)
    if fsync:
        os.fsync(fd)
    return size


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - write() returns >0 or raises
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def _as_expected(data: bytes, allowed: Allowed) -> bool:
    """Whether ``data`` is whole lines that ``allowed`` allows (both prefixes are
    ``{"id":"<node>:``, how every entry line starts)."""
    own, first, last, others, most = allowed
    if data and not data.endswith(b"\n"):
        return False
    expect = first
    start = 0
    size = len(data)
    while start < size:
        if data.startswith(own, start):
            width, mine = len(own), True
        elif data.startswith(others, start):
            width, mine = len(others), False
        else:
            return False
        quote = data.find(b'"', start + width)
        digits = data[start + width : quote]
        if quote < 0 or not digits.isdigit():
            return False
        seq = int(digits)
        if mine:
            if seq != expect:
                return False
            expect += 1
        elif seq > most:
            return False
        start = data.index(b"\n", quote) + 1
    return expect == last + 1
