"""Group commit across the processes of one node: one leader commits for everyone waiting.

A process about to commit tries to *bind* an abstract unix socket named after its log directory.
The kernel lets one process bind a name at a time and frees it when that process dies, so the
bind is the election: the winner leads; every other process connects to it as a follower, sends
its entries and waits. The leader, holding the node's lock, gives each follower its sequence
numbers and timestamps in an ``A`` (assigned) message *before* appending, appends everyone's
entries with one write per line and one fsync per file, then answers ``D`` (done) or ``E``
(error) and hangs up. It goes on leading while followers keep arriving, then unbinds. A follower
sleeps until the hang-up, not until each message: one wake-up per write instead of two.

Why this is exactly-once whatever dies:

* A leader appends only entries whose ``A`` it has sent; a follower that gave up first (see
  below) makes that send fail, and its entries are left out.
* A follower that got ``A`` but then no answer (the leader died, or hangs) knows its seqs: it
  takes the node's lock itself and counts each entry with ``seq <= hwm`` of its own log as
  written (answered, and cached if the peer is unreachable), and commits the others afresh.
* A follower that got no ``A`` in ``lock_timeout`` shuts its socket for reading first, which
  makes any later ``A`` fail on the leader's side, then reads what had already arrived: an ``A``
  there means "assigned", handled as above; none means nothing of it will ever be appended, and
  it reports :class:`~twinlog.exceptions.LockTimeoutError` like a writer that never got the lock.

Only processes of the same user group together (checked with ``SO_PEERCRED`` both ways), so a
stranger can neither inject entries nor pose as a leader. Abstract sockets live in the network
namespace: processes in different namespaces simply commit alone (correct, only slower).
"""

from __future__ import annotations

import _socket
import contextlib
import os
import pickle
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Follower", "Leadership", "Outcome", "follow", "socket_name"]

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_MESSAGE = 1 << 24

#: A request: ``(msg, fields_json)`` per entry. An assignment: ``(seq, ts)`` per entry, or
#: ``(seq, ts, line)`` of the entry already logged with the item's idempotency key.
Items = list[tuple[str, bytes]]
Assigned = list[tuple[Any, ...]]


def socket_name(dev_ino: tuple[int, int]) -> bytes:
    """The abstract socket name of the node whose log directory has this (st_dev, st_ino)."""
    dev, ino = dev_ino
    return f"\0twinlog-gc-{os.geteuid()}-{dev:x}-{ino:x}".encode()


def _same_user(sock: _socket.socket) -> bool:
    _pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return bool(uid == os.geteuid())


def _new_socket(flags: int = 0) -> _socket.socket:
    # The bare _socket type throughout: one of these per write and per follower, and the
    # Python-level wrapper (socket.socket) costs more than the system calls it makes.
    return _socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | flags)


@dataclass
class Follower:
    """The leader's side of one waiting process."""

    sock: _socket.socket
    items: Items
    assigned: Assigned = field(default_factory=list)

    def assign(self, assigned: Assigned) -> bool:
        """Send the seqs and timestamps; False if the follower is gone (or gave up)."""
        try:
            self.sock.send(b"A" + pickle.dumps(assigned, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            return False
        self.assigned = assigned
        return True

    def answer(self, error: BaseException | None, peer: tuple[str, float] | None = None) -> None:
        """``D`` (durable as promised, with the leader's view of the peer: its reason and
        back-off deadline on the shared monotonic clock) or ``E`` with the error; hang up."""
        with contextlib.suppress(OSError):
            if error is None:
                self.sock.send(b"D" + pickle.dumps(peer))
            else:
                kind = "lock_timeout" if isinstance(error, TimeoutError) else "storage"
                self.sock.send(b"E" + pickle.dumps((kind, str(error) or type(error).__name__)))
        self.sock.close()


class Leadership:
    """The bound, listening socket: while a process holds it, it commits for the others."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._waiting: list[_socket.socket] = []  # connected, request not read yet

    @classmethod
    def try_take(cls, name: bytes) -> Leadership | None:
        # Non-blocking from its creation: no extra system call on a path every commit takes.
        sock = _new_socket(socket.SOCK_NONBLOCK)
        try:
            sock.bind(name)
        except OSError:
            sock.close()
            return None  # EADDRINUSE: another process leads
        sock.listen(256)
        return cls(sock)

    def collect(self) -> list[Follower]:
        """The followers whose requests have arrived (never waits)."""
        while True:
            try:
                fd, _ = self._sock._accept()  # type: ignore[attr-defined]
            except OSError:  # nobody waiting (EAGAIN), or the socket failed
                break
            conn = _socket.socket(fileno=fd)
            if not _same_user(conn):
                conn.close()
                continue
            conn.setblocking(False)
            self._waiting.append(conn)
        ready: list[Follower] = []
        still: list[_socket.socket] = []
        for conn in self._waiting:
            try:
                data = conn.recv(_MAX_MESSAGE)
            except BlockingIOError:
                still.append(conn)  # connected, not sent yet: next round
                continue
            except OSError:
                conn.close()
                continue
            if not data:
                conn.close()  # gave up before we read it
                continue
            try:
                items: Items = pickle.loads(data)
            except Exception:  # a broken request is dropped, not committed
                conn.close()
                continue
            conn.setblocking(True)
            ready.append(Follower(conn, items))
        self._waiting = still
        return ready

    def pending(self) -> bool:
        """Whether a follower is connected or connecting (never waits)."""
        if self._waiting:
            return True
        readable, _, _ = select.select([self._sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        """Unbind. Followers that connected meanwhile see EOF before any ``A`` and retry."""
        for conn in self._waiting:
            conn.close()
        self._waiting = []
        self._sock.close()


@dataclass
class Outcome:
    """What following got: ``done`` (with the assignment), ``error`` (kind, text), ``orphan``
    (assigned, then no answer: settle under the lock), ``timeout`` (never assigned, never will
    be) or ``retry`` (no leader, or it left before taking us)."""

    kind: str
    assigned: Assigned = field(default_factory=list)
    error: tuple[str, str] | None = None
    peer: tuple[str, float] | None = None  # with ``done``: the leader's view of the peer


def follow(name: bytes, items: Items, patience: float) -> Outcome:
    """Hand ``items`` to the current leader and wait for its answer."""
    sock = _new_socket()
    try:
        try:
            sock.connect(name)
        except OSError:
            return Outcome("retry")  # no leader (ECONNREFUSED, ENOENT) or a full backlog
        if not _same_user(sock):
            return Outcome("retry")
        try:
            sock.send(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            return Outcome("retry")
        deadline = time.monotonic() + patience
        assigned: Assigned | None = None
        while True:
            message = _receive(sock, deadline)
            if message is None:  # timed out
                if assigned is not None:
                    return Outcome("orphan", assigned)
                # From now on the leader cannot send us an A; one already sent is still here.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
                late = _receive(sock, time.monotonic())
                if late and late[:1] == b"A":
                    return Outcome("orphan", pickle.loads(late[1:]))
                return Outcome("timeout")
            if not message:  # EOF: the leader died or left
                return Outcome("retry") if assigned is None else Outcome("orphan", assigned)
            kind, body = message[:1], message[1:]
            if kind == b"A":
                assigned = pickle.loads(body)
                # Patience starts again once assigned (read at the hang-up, or when the first
                # patience ran out with the leader still busy): then no answer means orphan.
                deadline = time.monotonic() + patience
            elif kind == b"D" and assigned is not None:
                return Outcome("done", assigned, peer=pickle.loads(body) if body else None)
            elif kind == b"E":
                error: tuple[str, str] = pickle.loads(body)
                if assigned is not None and error[0] != "lock_timeout":
                    # Appending failed after we were assigned: maybe partly written. Settle
                    # under the lock like an orphan (what is in the log counts as written).
                    return Outcome("orphan", assigned)
                return Outcome("error", error=error)
            else:
                return Outcome("retry") if assigned is None else Outcome("orphan", assigned)
    finally:
        sock.close()


def _receive(sock: _socket.socket, deadline: float) -> bytes | None:
    """The next message; ``b""`` at EOF; None when none had come by ``deadline``.

    Sleeps until the leader hangs up (it always does once it has answered, or when it dies), not
    until each message arrives: the leader's ``A`` comes before its append and ``D`` after its
    fsyncs, and a wake-up for each costs the node's CPUs as much as the rest of the protocol
    (``poll`` with ``POLLRDHUP`` only is not woken by data). After the hang-up, or once the
    deadline has passed, the messages already there are read one per call, without waiting.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
    try:
        return sock.recv(_MAX_MESSAGE, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""
