"""A :mod:`logging` handler writing each record as one twinlog entry.

>>> import logging
>>> from twinlog.handler import TwinlogHandler
>>> handler = TwinlogHandler("/etc/twinlog/twinlog.toml")  # doctest: +SKIP
>>> logging.getLogger("cluster").addHandler(handler)  # doctest: +SKIP

With :func:`logging.config.dictConfig`::

    "handlers": {"twinlog": {"class": "twinlog.handler.TwinlogHandler",
                             "config": "/etc/twinlog/twinlog.toml", "level": "INFO"}}

Each record becomes ``TwinLog.write(formatted_message, level=..., logger=..., **extra)``; a
traceback (``exc_info``) goes into its own ``exc`` field and ``stack_info`` into ``stack``, not
into the message, so the message stays one readable line and the traceback one field. Like the
handlers of :mod:`logging.handlers`, a failure goes to :meth:`~logging.Handler.handleError`
(a report on stderr when ``logging.raiseExceptions`` is true) and never into the application.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from twinlog._api import TwinLog
from twinlog._levels import python_level
from twinlog.config import Config
from twinlog.entry import RESERVED_FIELDS

__all__ = [
    "EXTRA_PREFIX",
    "TwinlogHandler",
    "fit_json_text",
    "fit_message",
    "record_fields",
    "structured",
]

#: Prefix given to an ``extra=`` key that clashes with a reserved or handler-set field name.
EXTRA_PREFIX = "extra_"

# Attributes every LogRecord has (plus those Formatter.format adds): the rest came from extra=.
_RECORD_ATTRS = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_DEFAULT_FORMATTER = logging.Formatter()
_OWN_FIELDS = frozenset({"level", "logger", "exc", "stack"})
# Room kept beside the other fields for the ``"exc":"..."`` key, quotes and separator.
_FIELD_OVERHEAD = 16


def _json_value(value: Any) -> Any:
    """``value`` if it is JSON-serialisable as it is, else its ``repr``."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return value


def record_fields(
    record: logging.LogRecord, event: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The entry's extra fields for ``record``: level, logger, the record's ``extra=`` and, for
    a structured record, the keys of its ``event`` dict. Names starting with ``_`` are private
    to the logging machinery (structlog's ``_logger``, ``_name``, ``_record``): not stored."""
    fields: dict[str, Any] = {
        "level": python_level(record.levelno, record.levelname),
        "logger": record.name,
    }
    extra = {
        key: value
        for key, value in [*record.__dict__.items(), *(event or {}).items()]
        if isinstance(key, str) and key and not key.startswith("_") and key not in _RECORD_ATTRS
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
        # Before anything can fail: logging registers the handler as it is constructed and
        # closes every registered handler at exit; a configuration that failed here must find
        # a handler it can close, not an AttributeError in an atexit callback.
        self._close_guard = threading.Lock()
        self._log: TwinLog | None = None
        super().__init__(level)
        try:
            if not isinstance(config, Config):
                config = Config.load(config)
            self.config = config
            self._log = TwinLog(config)
        except BaseException:
            super().close()  # no longer registered: nothing to close at exit
            raise

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
            limit = self.config.max_message_bytes
            record, event = structured(record)
            text, traces = self._format_apart(record)
            message, cut = fit_message(text, limit)
            fields = record_fields(record, event)
            if cut:
                fields["truncated_bytes"] = cut
            for key, trace in traces.items():
                used = len(json.dumps(fields, ensure_ascii=False).encode("utf-8"))
                fields[key] = fit_json_text(trace, limit - used - _FIELD_OVERHEAD)
            log.write(message, **fields)
        except RecursionError:  # as in the standard handlers: let this one through
            raise
        except Exception:
            self.handleError(record)

    def _format_apart(self, record: logging.LogRecord) -> tuple[str, dict[str, str]]:
        """The formatted message without the traceback and stack a Formatter appends, and
        those two as the ``exc`` and ``stack`` fields (only those present)."""
        formatter = self.formatter or _DEFAULT_FORMATTER
        traces: dict[str, str] = {}
        if record.exc_info and record.exc_info[0] is not None:
            traces["exc"] = formatter.formatException(record.exc_info)
        elif record.exc_text:
            traces["exc"] = record.exc_text
        if record.stack_info:
            traces["stack"] = formatter.formatStack(record.stack_info)
        if not traces:
            return self.format(record), traces
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.format(record), traces
        finally:  # other handlers of the record still see it whole
            record.exc_info, record.exc_text, record.stack_info = saved

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


def structured(record: logging.LogRecord) -> tuple[logging.LogRecord, dict[str, Any] | None]:
    """A record whose ``msg`` is a mapping (an event dict: what structlog's
    ``ProcessorFormatter.wrap_for_formatter`` hands to logging, or ``log.info({...})``) as a
    plain copy whose message is the ``event`` key, and the other keys, to store as fields;
    ``exc_info`` in the dict acts as the logging keyword does (``stack_info`` when it is
    already text). Any other record
    as it is, and None."""
    if not isinstance(record.msg, Mapping):
        return record, None
    event = dict(record.msg)
    plain = logging.makeLogRecord(record.__dict__)  # other handlers still get the original
    plain.msg, plain.args = str(event.pop("event", "")), ()
    exc = event.pop("exc_info", None)
    if exc and not plain.exc_info:
        if isinstance(exc, BaseException):
            plain.exc_info = (type(exc), exc, exc.__traceback__)
        elif isinstance(exc, tuple):
            plain.exc_info = exc
        else:  # True: the exception being handled, as logging.exception does
            plain.exc_info = sys.exc_info()
    stack = event.pop("stack_info", None)
    if isinstance(stack, str) and not plain.stack_info:
        plain.stack_info = stack
    return plain, event


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


def fit_json_text(text: str, limit: int) -> str:
    """``text`` cut (as :func:`fit_message` cuts) so that its JSON string, escapes and quotes
    included, takes at most ``limit`` bytes: a traceback's newlines and quotes each grow when
    encoded, and the fields together must stay within ``max_message_bytes``."""
    budget = max(0, limit)
    while True:
        cut, _ = fit_message(text, budget)
        size = len(json.dumps(cut, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size <= limit or budget == 0:
            return cut
        budget = max(0, budget - (size - limit))
