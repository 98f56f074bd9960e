"""A :mod:`logging` handler writing each record as one twinlog entry.

>>> import logging
>>> from twinlog.handler import TwinlogHandler
>>> handler = TwinlogHandler("/etc/twinlog/twinlog.toml")  # doctest: +SKIP
>>> logging.getLogger("cluster").addHandler(handler)  # doctest: +SKIP

With :func:`logging.config.dictConfig`::

    "handlers": {"twinlog": {"class": "twinlog.handler.TwinlogHandler",
                             "config": "/etc/twinlog/twinlog.toml", "level": "INFO"}}

Each record becomes ``TwinLog.write(formatted_message, level=..., logger=..., **extra)``. Like the
handlers of :mod:`logging.handlers`, a failure goes to :meth:`~logging.Handler.handleError`
(a report on stderr when ``logging.raiseExceptions`` is true) and never into the application.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from twinlog._api import TwinLog
from twinlog.config import Config
from twinlog.entry import RESERVED_FIELDS

__all__ = ["EXTRA_PREFIX", "TwinlogHandler", "fit_message", "record_fields"]

#: Prefix given to an ``extra=`` key that clashes with a reserved or handler-set field name.
EXTRA_PREFIX = "extra_"

# Attributes every LogRecord has (plus those Formatter.format adds): the rest came from extra=.
_RECORD_ATTRS = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_OWN_FIELDS = frozenset({"level", "logger"})


def _json_value(value: Any) -> Any:
    """``value`` if it is JSON-serialisable as it is, else its ``repr``."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The entry's extra fields for ``record``: level, logger and the record's ``extra=``."""
    fields: dict[str, Any] = {"level": record.levelname, "logger": record.name}
    extra = {
        key: value
        for key, value in record.__dict__.items()
        if isinstance(key, str) and key and key not in _RECORD_ATTRS
    }
    taken = RESERVED_FIELDS | _OWN_FIELDS
    # Keys that clash are renamed after the others have their own names, so a renamed key never
    # takes the name of one the caller gave (``id`` becomes ``extra_id`` unless that is used too).
    for key, value in extra.items():
        if key not in taken:
            fields[key] = _json_value(value)
    for key, value in extra.items():
        if key in taken:
            name = EXTRA_PREFIX + key
            while name in fields or name in taken:
                name = EXTRA_PREFIX + name
            fields[name] = _json_value(value)
    return fields


class TwinlogHandler(logging.Handler):
    """Write log records to twinlog, from any number of threads.

    ``config`` is a :class:`twinlog.Config` or the path of a TOML configuration file. The
    :class:`~twinlog.TwinLog` is opened here, so a wrong configuration fails when logging is
    configured, not at the first record.
    """

    def __init__(self, config: Config | str | os.PathLike[str], level: int | str = logging.NOTSET):
        super().__init__(level)
        if not isinstance(config, Config):
            config = Config.load(config)
        self.config = config
        self._log: TwinLog | None = TwinLog(config)
        self._close_guard = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # Unlike logging.Handler.handle, do not hold the handler lock while emitting: TwinLog is
        # thread-safe and commits the writes of concurrent threads together (one lock hold and
        # one fsync for the group), which a lock around emit would serialise away.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = self._log
            if log is None:
                raise ValueError("TwinlogHandler is closed")
            message, cut = fit_message(self.format(record), self.config.max_message_bytes)
            fields = record_fields(record)
            if cut:
                fields["truncated_bytes"] = cut
            log.write(message, **fields)
        except RecursionError:  # as in the standard handlers: let this one through
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Close the TwinLog (stops its peer worker). Records emitted afterwards are reported
        through handleError."""
        with self._close_guard:
            log, self._log = self._log, None
        try:
            if log is not None:
                log.close()
        finally:
            super().close()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.config.node} -> {self.config.peer} ({level})>"


def fit_message(message: str, limit: int) -> tuple[str, int]:
    """``message`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), marked as cut,
    and how many bytes were cut: a long traceback is logged shortened rather than dropped."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return message, 0
    marker = " [...]"
    keep = max(0, limit - len(marker))
    head = data[:keep].decode("utf-8", "ignore")
    return head + marker, len(data) - len(head.encode("utf-8"))
