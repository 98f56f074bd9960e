"""The one error hierarchy of twinlog.

Every error raised on purpose by twinlog derives from :class:`TwinlogError` and also from the
built-in exception a caller would naturally catch, so ``except OSError`` or ``except ValueError``
keeps working::

    TwinlogError
    +-- ConfigError(ValueError)            configuration missing, malformed or inconsistent
    +-- InvalidEntryError(ValueError)      a message or field that cannot be logged as given
    |   +-- MessageTooLargeError           message larger than ``max_message_bytes``
    |   +-- ReservedFieldError             an extra field named like an entry field (id, seq, ...)
    +-- InvalidQueryError(ValueError)      a read filter it cannot parse (time, level, regex)
    +-- InvalidTypeError(TypeError)        ``msg`` not a str, a field value not JSON-serialisable
    +-- LockTimeoutError(TimeoutError)     a lock could not be taken within ``lock_timeout``
    +-- StorageError(OSError)              the local log cannot be made durable (disk full, EIO)
    +-- NotInitialisedError(FileNotFoundError)  no log_dir: ``twinlog init`` was not run, or the
    |                                      disk that holds it is not mounted
    +-- PeerError(OSError)                 a peer operation failed or timed out (internal: the
                                           write path turns it into "cache it"; never reaches
                                           ``TwinLog.write`` callers)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidEntryError",
    "InvalidQueryError",
    "InvalidTypeError",
    "LockTimeoutError",
    "MessageTooLargeError",
    "NotInitialisedError",
    "PeerError",
    "ReservedFieldError",
    "StorageError",
    "TwinlogError",
]


class TwinlogError(Exception):
    """Base class of every error twinlog raises on purpose."""


class ConfigError(TwinlogError, ValueError):
    """The configuration is missing, malformed or inconsistent."""


class InvalidEntryError(TwinlogError, ValueError):
    """A message or extra field cannot be logged as given; nothing was written."""


class MessageTooLargeError(InvalidEntryError):
    """The encoded message is larger than ``max_message_bytes``."""


class ReservedFieldError(InvalidEntryError):
    """An extra field uses a name reserved for the entry itself."""


class InvalidQueryError(TwinlogError, ValueError):
    """A filter given to ``read()`` (or ``twinlog tail``) cannot be understood."""


class InvalidTypeError(TwinlogError, TypeError):
    """``msg`` is not a str, or an extra field value is not JSON-serialisable."""


class LockTimeoutError(TwinlogError, TimeoutError):
    """A lock could not be acquired within ``lock_timeout``."""


class StorageError(TwinlogError, OSError):
    """The local log could not be written or made durable; the entry was not acknowledged."""


class NotInitialisedError(TwinlogError, FileNotFoundError):
    """``log_dir`` does not exist: run ``twinlog init``, or mount the disk that holds it."""


class PeerError(TwinlogError, OSError):
    """A peer operation failed or did not answer in time.

    ``reason`` is one of the :data:`twinlog.probe.REASONS` strings.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"peer {reason}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.detail = detail


class on_local_disk:  # lower case: it reads as a function, `with on_local_disk("..."):`
    """A step on our own directory: an ``OSError`` becomes a :class:`StorageError` saying
    ``what`` could not be done and why. Errors twinlog raised on purpose (the peer's
    :class:`PeerError`, a :class:`LockTimeoutError`) pass through unchanged.

    A class, not a generator: it wraps several steps of every write (contextlib's generator
    machinery cost ~2 µs a use)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or isinstance(exc, TwinlogError) or not isinstance(exc, OSError):
            return
        raise StorageError(exc.errno, f"cannot {self.what}: {exc.strerror or exc}") from exc
