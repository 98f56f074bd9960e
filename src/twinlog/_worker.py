"""Peer I/O in a separate, killable process.

A call blocked in the kernel on a dead NFS mount cannot be interrupted from a thread, and only
SIGKILL ends it (TASK_KILLABLE). So every operation on the peer's directory runs in a small worker
process that serves :class:`~twinlog._fileops.DirOps` calls over a pipe. The caller waits at most
its deadline for each answer; when the deadline passes it SIGKILLs the worker and reports the peer
as unreachable. The kernel releases a dead worker's locks (through NFS: at once if the server is
reachable, otherwise when the server's lease on them expires).

At most one worker per :class:`RemoteDir` exists, and a new one is not started while a killed one
is still alive (stuck in the kernel behind another caller): stuck processes cannot pile up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from twinlog._fileops import DirOps, IdentityError
from twinlog.exceptions import LockTimeoutError, PeerError

__all__ = ["RemoteDir", "serve"]

_HEADER = struct.Struct("!I")
_STARTUP_TIMEOUT = 30.0
_MAX_FRAME = 1 << 30
_SMALL_READ = 1 << 16  # below glibc's mmap threshold: a cheap buffer for the usual reply
_instances: weakref.WeakSet[RemoteDir] = weakref.WeakSet()


def _forget_workers_in_child() -> None:
    # A forked child must not talk to (or kill) its parent's workers: it starts its own.
    for remote in list(_instances):
        remote._disown()


os.register_at_fork(after_in_child=_forget_workers_in_child)


class RemoteDir:
    """The :class:`DirOps` of a directory, run in a worker process with a deadline per call."""

    def __init__(self, path: str, *, on_stuck: Callable[[int], None] | None = None) -> None:
        self.path = path
        self._on_stuck = on_stuck
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: _Channel | None = None
        self._outstanding: Callable[[], list[list[Any]]] | None = None
        self._stuck: list[subprocess.Popen[bytes]] = []
        # Whatever owns this RemoteDir may forget to close it: stop the worker when it is
        # garbage collected, without holding a reference to self.
        self._live: list[subprocess.Popen[bytes]] = []
        weakref.finalize(self, _stop_all, self._live)
        self.spawned = 0
        self.killed = 0
        _instances.add(self)

    # -- lifecycle ----------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        self._reap()
        if self._stuck:
            pids = ", ".join(str(p.pid) for p in self._stuck)
            raise PeerError("stuck", f"an abandoned peer operation is still blocked (pid {pids})")
        # A bare interpreter (-S: no site-packages scan) that loads only this module and the two
        # it needs, not the package's __init__ (psutil and the rest): start-up in ~0.05 s, and
        # start-up is what a write after a killed worker waits for.
        pkg_dir = os.path.dirname(os.path.abspath(__file__))
        code = (
            "import sys, types; pkg = types.ModuleType('twinlog'); "
            f"pkg.__path__ = [{pkg_dir!r}]; sys.modules['twinlog'] = pkg; "
            "import twinlog._worker as w; w.serve()"
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            raise PeerError("io_error", f"cannot start the peer worker: {exc}") from None
        self.spawned += 1
        for stream in (proc.stdin, proc.stdout):
            # Bigger pipes: a drain moves megabytes per call, 64 KiB at a time otherwise.
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[union-attr]
        self._live[:] = [p for p in self._live if p.poll() is None]
        self._live.append(proc)
        # Start-up (a Python interpreter) touches no peer file, so it is not charged to the
        # caller's peer deadline; only a wildly overloaded machine takes longer than this.
        assert proc.stdout is not None
        assert proc.stdin is not None
        channel = _Channel(proc.stdin.fileno(), proc.stdout.fileno())
        try:
            channel.recv(time.monotonic() + _STARTUP_TIMEOUT)
        except (TimeoutError, OSError, EOFError) as exc:
            self._proc = proc
            self._abandon()
            raise PeerError("io_error", f"peer worker did not start: {exc!r}") from None
        self._channel = channel
        return proc

    @property
    def alive(self) -> bool:
        """Whether a worker is running (so it may hold the peer's lock)."""
        return self._proc is not None and self._proc.poll() is None

    def _reap(self) -> None:
        self._stuck = [p for p in self._stuck if p.poll() is None]

    @property
    def stuck_pids(self) -> list[int]:
        self._reap()
        return [p.pid for p in self._stuck]

    def _disown(self) -> None:
        self._outstanding = None
        self._proc = None
        self._stuck = []

    def _abandon(self) -> None:
        """SIGKILL the worker; remember it if the kernel does not let it die at once."""
        proc, self._proc = self._proc, None
        self._outstanding = None
        if proc is None:
            return
        self.killed += 1
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        deadline = time.monotonic() + 0.05
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            self._stuck.append(proc)
            if self._on_stuck is not None:
                self._on_stuck(proc.pid)

    def close(self) -> None:
        """Stop the worker (politely: EOF; it may be stuck, then it is killed)."""
        self._outstanding = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=0.5)
        except (OSError, subprocess.TimeoutExpired):
            self._proc = proc
            self._abandon()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    # -- calls --------------------------------------------------------------------------
    def call(self, op: str, *args: Any, timeout: float) -> Any:
        return self.batch([(op, args)], timeout=timeout)[0]

    def batch(self, ops: list[tuple[str, tuple[Any, ...]]], *, timeout: float) -> list[Any]:
        """Run ``ops`` in order in the worker; all must answer within ``timeout`` seconds."""
        return self.stages([(ops, timeout)])[0]

    def stages(
        self,
        stages: list[tuple[list[tuple[str, tuple[Any, ...]]], float]],
        *,
        patience: float = 0.0,
    ) -> list[list[Any]]:
        """Send every stage's operations at once (one round trip); the worker answers each stage
        as it completes, and each answer must come within that stage's timeout of the previous.

        While the worker is waiting for a lock it sends a heartbeat after each attempt that the
        server answered (busy, not dead); each one restarts the stage's timeout, for at most
        ``patience`` seconds in all. Raises PeerError("timeout") after killing the worker,
        PeerError("busy") when the patience ran out, PeerError with the failure's reason when an
        operation failed (the worker stays).
        """
        return self.submit(stages, patience=patience)()

    def submit(
        self,
        stages: list[tuple[list[tuple[str, tuple[Any, ...]]], float]],
        *,
        patience: float = 0.0,
    ) -> Callable[[], list[list[Any]]]:
        """:meth:`stages` in two halves: send now, and return the function that waits for the
        answers (the first stage's deadline counts from now). The caller may work meanwhile;
        any other call first collects (and discards) the answers of a request still out."""
        self.settle()
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._spawn()
        channel = self._channel
        assert channel is not None
        addressed = [[(op, (self.path, *args)) for op, args in ops] for ops, _ in stages]
        payload = pickle.dumps(addressed, protocol=pickle.HIGHEST_PROTOCOL)
        started = time.monotonic()
        with self._failing():
            channel.send(payload, started + stages[0][1])

        def receive() -> list[list[Any]]:
            if self._outstanding is not receive:
                raise PeerError("io_error", "the worker that had this request is gone")
            self._outstanding = None
            results: list[list[Any]] = []
            deadline = started + stages[0][1]
            with self._failing():
                for _ops, timeout in stages:
                    while True:
                        status, value = pickle.loads(channel.recv(deadline))
                        if status != "beat":
                            break
                        if time.monotonic() - started > patience:
                            self._abandon()
                            raise PeerError("busy", f"peer lock held for more than {patience:.3g}s")
                        deadline = time.monotonic() + timeout
                    if status != "ok":
                        kind, errno_, text = value
                        reason = "io_error"
                        if kind == "identity":
                            reason = text.split(":", 1)[0]
                        elif kind == "lock":
                            reason = "busy"
                        raise PeerError(reason, text + (f" [errno {errno_}]" if errno_ else ""))
                    results.append(list(value))
                    deadline = time.monotonic() + timeout
            return results

        self._outstanding = receive
        return receive

    def settle(self) -> None:
        """Collect the answers of a :meth:`submit` nobody waited for (a failure is dropped:
        it was reported to nobody, and a worker that did not answer is killed)."""
        if self._outstanding is not None:
            with contextlib.suppress(PeerError):
                self._outstanding()

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """Turn a silent or dead worker into PeerError (after killing it)."""
        try:
            yield
        except TimeoutError:
            self._abandon()
            raise PeerError("timeout", "no answer in time") from None
        except (OSError, EOFError) as exc:
            if isinstance(exc, PeerError):
                raise
            self._abandon()
            raise PeerError("io_error", f"peer worker died: {exc}") from None


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc.poll() is None:
            proc.kill()
        # A worker stuck in the kernel dies when its call returns; don't wait for it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)


class _Channel:
    """The parent's ends of a worker's pipes, non-blocking: a frame is sent or received with
    ``select()`` only when the pipe is not ready yet, and a reply read in one piece is one
    ``read()`` (whatever arrived after a frame waits in the buffer for the next call)."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd = write_fd
        self.read_fd = read_fd
        self._buf = bytearray()
        for fd in (write_fd, read_fd):
            os.set_blocking(fd, False)

    def send(self, payload: bytes, deadline: float) -> None:
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        while data:
            try:
                data = data[os.write(self.write_fd, data[: 1 << 20]) :]
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [self.write_fd], [], remaining)[1]:
                raise TimeoutError

    def recv(self, deadline: float) -> bytes:
        buf = self._buf
        want = _SMALL_READ
        while True:
            if len(buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buf)
                if size > _MAX_FRAME:
                    raise EOFError(f"frame of {size} bytes")
                end = _HEADER.size + size
                if len(buf) >= end:
                    frame = bytes(buf[_HEADER.size : end])
                    del buf[:end]
                    return frame
                # A big frame (a drain's block) is read in big pieces; a reply of a few
                # bytes must not cost a megabyte's allocation (an mmap and munmap per read).
                want = min(max(end - len(buf), _SMALL_READ), 1 << 20)
            if not buf:
                # Nothing arrived yet: the worker is still working, so wait before reading.
                self._wait_readable(deadline)
            try:
                data = os.read(self.read_fd, want)
            except BlockingIOError:
                self._wait_readable(deadline)
                continue
            if not data:
                raise EOFError("worker closed its pipe")
            buf += data

    def _wait_readable(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
            raise TimeoutError


def _read_blocking(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size > 0:
        data = os.read(fd, min(size, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def _run_stage(
    stage: list[tuple[str, tuple[Any, ...]]],
    dirs: dict[str, DirOps],
    locked: list[DirOps],
    heartbeat: Callable[[], None],
) -> tuple[str, Any]:
    """One stage of a request: its calls in order, ``("ok", results)`` or the first error."""
    results: list[Any] = []
    op = "?"
    try:
        for op, args in stage:
            path, rest = args[0], args[1:]
            target = dirs.get(path)
            if target is None:
                target = dirs[path] = DirOps(path)
            if op == "lock":
                target.lock(rest[0], on_wait=heartbeat)
                locked.append(target)
                results.append(None)
            else:
                results.append(target.call(op, rest))
                if op == "unlock" and target in locked:
                    locked.remove(target)
    except IdentityError as exc:
        return ("err", ("identity", None, str(exc)))
    except LockTimeoutError as exc:
        return ("err", ("lock", None, f"{op}: {exc}"))
    except OSError as exc:
        return ("err", ("os", exc.errno, f"{op}: {exc.strerror or exc}"))
    except Exception as exc:
        return ("err", ("other", None, f"{op}: {type(exc).__name__}: {exc}"))
    return ("ok", results)


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """The worker's loop: run batches of DirOps calls until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    dirs: dict[str, DirOps] = {}
    ready = pickle.dumps(("ready", os.getpid()))
    os.write(stdout_fd, _HEADER.pack(len(ready)) + ready)

    def send(reply: tuple[str, Any]) -> None:
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out = memoryview(_HEADER.pack(len(data)) + data)
        while out:
            out = out[os.write(stdout_fd, out) :]

    def heartbeat() -> None:
        send(("beat", None))

    while True:
        header = _read_blocking(stdin_fd, _HEADER.size)
        if header is None:
            return
        payload = _read_blocking(stdin_fd, _HEADER.unpack(header)[0])
        if payload is None:
            return
        locked: list[DirOps] = []  # locks taken by this request
        for stage in pickle.loads(payload):
            reply = _run_stage(stage, dirs, locked, heartbeat)
            if reply[0] != "ok":
                # The caller sees only the failure, so it will not unlock what this request
                # locked: let go here, or the lock stays held (by us, on the peer) for good.
                for target in locked:
                    with contextlib.suppress(OSError):
                        target.unlock()
                send(reply)
                break  # the later stages depended on this one
            send(reply)
