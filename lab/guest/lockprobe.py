#!/usr/bin/python3
"""Lock and I/O probe run INSIDE a lab VM (guest python3, stdlib only).

  lockprobe.py hold PATH KIND        lock, print LOCKED, hold until stdin closes, unlock
  lockprobe.py try PATH KIND         one non-blocking attempt: print GOT or BLOCKED
  lockprobe.py wait PATH KIND SECS   print WAITING, poll until the lock is free: GOT <seconds>
  lockprobe.py append PATH           open(O_APPEND), write, fsync, close: print a JSON timing

KIND is lockf (POSIX record lock, fcntl.lockf) or flock (BSD lock, fcntl.flock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable

POLL_SECONDS = 0.1


def _locker(kind: str) -> Callable[[int, int], None]:
    if kind == "lockf":
        return fcntl.lockf
    if kind == "flock":
        return fcntl.flock
    raise SystemExit(f"unknown lock kind {kind!r}")


def _open(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    return fd


def _try_lock(fd: int, kind: str) -> bool:
    try:
        _locker(kind)(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _say(text: str) -> None:
    print(text, flush=True)


def hold(path: str, kind: str) -> None:
    fd = _open(path)
    _locker(kind)(fd, fcntl.LOCK_EX)
    _say("LOCKED")
    sys.stdin.read()  # until the host closes our stdin (or ssh dies)
    _locker(kind)(fd, fcntl.LOCK_UN)
    os.close(fd)
    _say("RELEASED")


def try_once(path: str, kind: str) -> None:
    fd = _open(path)
    _say("GOT" if _try_lock(fd, kind) else "BLOCKED")
    os.close(fd)


def wait(path: str, kind: str, timeout: float) -> None:
    fd = _open(path)
    start = time.monotonic()
    _say("WAITING")
    while not _try_lock(fd, kind):
        if time.monotonic() - start > timeout:
            _say(f"TIMEOUT {time.monotonic() - start:.2f}")
            raise SystemExit(1)
        time.sleep(POLL_SECONDS)
    _say(f"GOT {time.monotonic() - start:.2f}")
    os.close(fd)


def append(path: str) -> None:
    start = time.monotonic()
    error = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, f"probe {os.uname().nodename} {time.time():.3f}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    _say(json.dumps({"seconds": round(time.monotonic() - start, 2), "error": error}))


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "hold":
        hold(args[0], args[1])
    elif command == "try":
        try_once(args[0], args[1])
    elif command == "wait":
        wait(args[0], args[1], float(args[2]))
    elif command == "append":
        append(args[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
