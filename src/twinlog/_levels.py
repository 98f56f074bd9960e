"""Entry levels: one set for the API, the CLI, the logging handler, syslog and the readers.

Syslog's eight severities, named as Python names the ones it shares (``WARNING``,
``CRITICAL``). A syslog severity number (0 is the most severe) maps onto the same names, so a
message that came through rsyslog as ``daemon.err`` is stored as ``ERROR``.
"""

from __future__ import annotations

from twinlog.exceptions import InvalidEntryError

__all__ = [
    "ALIASES",
    "DEFAULT_LEVEL",
    "SEVERITY",
    "SYSLOG_SEVERITY",
    "canonical_level",
    "python_level",
]

#: Level names from least to most severe.
SEVERITY = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
#: Other spellings accepted for them (any case): syslog's and Python's.
ALIASES = {
    "WARN": "WARNING",
    "FATAL": "CRITICAL",
    "EMERG": "EMERGENCY",
    "CRIT": "CRITICAL",
    "ERR": "ERROR",
}
#: What an entry written without a level is stored with (and how readers rank one without).
DEFAULT_LEVEL = "INFO"
#: Syslog severity 0..7 (RFC 5424: emerg, alert, crit, err, warning, notice, info, debug).
SYSLOG_SEVERITY = tuple(reversed(SEVERITY))

_NAMES = frozenset(SEVERITY)


def canonical_level(value: object) -> str:
    """The stored name of ``value``: a level name (any case, or an alias) or a syslog severity
    (0-7, as a number or its digit). Raises :class:`InvalidEntryError` for anything else."""
    if isinstance(value, str):
        if value in _NAMES:  # the stored form already (the default, "INFO", above all)
            return value
        name = value.strip().upper()
        name = ALIASES.get(name, name)
        if name in _NAMES:
            return name
        if len(name) == 1 and "0" <= name <= "7":
            return SYSLOG_SEVERITY[int(name)]
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return SYSLOG_SEVERITY[value]
    raise InvalidEntryError(
        f"unknown level {value!r}; use one of {', '.join(SEVERITY)} "
        "(any case) or a syslog severity 0-7"
    )


def python_level(levelno: int, levelname: str) -> str:
    """The level of a Python logging record: its name when it is one of ours, else the nearest
    standard level at or below its number (a custom ``TRACE`` of 5 is DEBUG, 25 is INFO)."""
    name = levelname.upper()
    name = ALIASES.get(name, name)
    if name in _NAMES:
        return name
    for floor, stored in ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO")):
        if levelno >= floor:
            return stored
    return "DEBUG"
