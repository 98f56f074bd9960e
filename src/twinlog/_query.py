"""Which entries a reader asked for: time window, level, origin node, message regex, fields.

One :class:`Query` answers both ``TwinLog.read(...)`` and ``twinlog tail --since ...``, so the
two mean the same thing. Times are compared as the fixed-width strings entries carry (see
:func:`twinlog.entry.format_ts`): the window is ``since <= ts < until``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from twinlog._levels import ALIASES as _ALIASES
from twinlog._levels import DEFAULT_LEVEL, SEVERITY
from twinlog.entry import Entry, format_ts
from twinlog.exceptions import InvalidQueryError

__all__ = [
    "SEVERITY",
    "Query",
    "TimeBound",
    "level_rank",
    "parse_duration",
    "parse_level",
    "parse_time",
]

# One set of levels for writers and readers (see _levels.py); unknown names rank as INFO.
_RANK = {name: rank for rank, name in enumerate(SEVERITY)}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")

#: What ``since``/``until`` accept: a datetime with a time zone, RFC 3339 text, or a duration
#: back from now (``"15m"``).
TimeBound = datetime | str


def parse_duration(text: str) -> float:
    """Seconds in ``15m``, ``4h``, ``1d``, ``90s``, ``1w`` (or combined: ``1h30m``)."""
    spec = text.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not spec or pos != len(spec):
        raise InvalidQueryError(
            f"{text!r} is not a duration: use a number and a unit s, m, h, d or w (15m, 4h, 1d)"
        )
    return total


def parse_time(value: TimeBound, now: float | None = None) -> str:
    """``value`` as an entry timestamp string: RFC 3339 (with ``Z`` or an offset), a datetime
    with a time zone, or a duration meaning that long before ``now`` (``15m``)."""
    if isinstance(value, datetime):
        moment = value
    else:
        text = value.strip()
        if _DURATION_RE.match(text.lower()):
            try:
                seconds = parse_duration(text)
            except InvalidQueryError:
                pass
            else:
                start = time.time() if now is None else now
                return format_ts(round((start - seconds) * 1_000_000))
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidQueryError(
                f"{text!r} is neither RFC 3339 (2026-12-04T02:00:00Z) "
                "nor a duration back from now (15m, 2h, 1d)"
            ) from None
    if moment.tzinfo is None:
        raise InvalidQueryError(
            f"{value!s} has no time zone: add Z (UTC) or an offset such as +01:00"
        )
    return format_ts(round(moment.timestamp() * 1_000_000))


def parse_level(text: str) -> str:
    """The canonical name of a level (any case; WARN, FATAL, CRIT, EMERG accepted)."""
    name = text.strip().upper()
    name = _ALIASES.get(name, name)
    if name not in _RANK:
        raise InvalidQueryError(f"unknown level {text!r}; use one of {', '.join(SEVERITY)}")
    return name


def level_rank(value: object) -> int:
    """How severe an entry's ``level`` field is; missing or unknown ranks as INFO."""
    if isinstance(value, str):
        name = value.upper()
        rank = _RANK.get(_ALIASES.get(name, name))
        if rank is not None:
            return rank
    return _RANK[DEFAULT_LEVEL]


def _field_matches(actual: Any, wanted: Any) -> bool:
    """Equal values match; text also matches a number, boolean or null whose JSON reads the
    same (``--field port=80`` finds ``"port": 80``)."""
    if actual == wanted and isinstance(actual, bool) == isinstance(wanted, bool):
        return True
    if isinstance(wanted, str) and not isinstance(actual, str):
        try:
            return json.dumps(actual, ensure_ascii=False) == wanted
        except (TypeError, ValueError):
            return False
    return False


@dataclasses.dataclass(frozen=True)
class Query:
    """A filter on entries; every condition given must hold. ``since``/``until`` are entry
    timestamp strings (:func:`parse_time` makes them)."""

    since: str | None = None
    until: str | None = None
    min_level: int | None = None
    node: str | None = None
    grep: re.Pattern[str] | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        since: TimeBound | None = None,
        until: TimeBound | None = None,
        level: str | None = None,
        node: str | None = None,
        grep: str | re.Pattern[str] | None = None,
        fields: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> Query:
        """From what a caller gives; raises InvalidQueryError saying which argument is wrong."""
        start = time.time() if now is None else now
        try:
            pattern = re.compile(grep) if isinstance(grep, str) else grep
        except re.error as exc:
            raise InvalidQueryError(f"grep {grep!r} is not a regular expression: {exc}") from None
        return cls(
            since=None if since is None else parse_time(since, start),
            until=None if until is None else parse_time(until, start),
            min_level=None if level is None else _RANK[parse_level(level)],
            node=node,
            grep=pattern,
            fields=dict(fields or {}),
        )

    @property
    def by_origin_only(self) -> bool:
        """Whether nothing but the origin is asked (the last entries can then be read from
        the end of each origin's stream)."""
        return dataclasses.replace(self, node=None) == Query()

    def as_read_arguments(self) -> dict[str, Any]:
        """This query as ``TwinLog.read``'s keyword arguments (times already resolved)."""
        return {
            "since": self.since,
            "until": self.until,
            "level": None if self.min_level is None else SEVERITY[self.min_level],
            "node": self.node,
            "grep": self.grep,
            "fields": self.fields,
        }

    def in_window(self, ts: str) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def matches(self, entry: Entry) -> bool:
        if not self.in_window(entry.ts):
            return False
        if self.node is not None and entry.node != self.node:
            return False
        if self.min_level is not None and level_rank(entry.get("level")) < self.min_level:
            return False
        if self.grep is not None and self.grep.search(entry.msg) is None:
            return False
        return all(
            key in entry.fields and _field_matches(entry.fields[key], value)
            for key, value in self.fields.items()
        )
