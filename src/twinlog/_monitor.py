"""``twinlog status`` for monitoring systems: Nagios/Icinga thresholds and performance data,
and the Prometheus text format (written atomically for node_exporter's textfile collector).

Thresholds (``--warning``/``--critical``) take a comma-separated list of limits, each either a
duration with its unit (``15m``, ``4h``, ``2d``: a limit on the *lag*) or a plain whole number
(``1000``: a limit on the entries waiting in the caches). The lag is the age of the oldest
entry one node has not delivered to the other, either way; while the peer cannot be reached it
is at least the time since the last complete sync, so a peer down for days turns critical even
when nobody writes. A limit is exceeded when the value is greater than it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from twinlog._delivery import ts_seconds
from twinlog._query import parse_duration
from twinlog.exceptions import InvalidQueryError

__all__ = [
    "STATE_NAMES",
    "UNKNOWN",
    "Limits",
    "evaluate",
    "lag_seconds",
    "parse_limits",
    "perfdata",
    "prometheus_text",
    "restate",
    "write_textfile",
]

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclasses.dataclass(frozen=True)
class Limits:
    """One state's limits: on the lag (seconds) and on the cached entries; None: no limit."""

    lag: float | None = None
    cached: int | None = None


def parse_limits(text: str) -> Limits:
    """``15m``, ``1000``, ``4h,10000``: a duration limits the lag, a whole number the cached
    entries. Raises InvalidQueryError naming the part it cannot read."""
    lag: float | None = None
    cached: int | None = None
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit():
            if cached is not None:
                raise InvalidQueryError(f"{text!r}: two entry counts")
            cached = int(part)
            continue
        try:
            seconds = parse_duration(part)
        except InvalidQueryError:
            raise InvalidQueryError(
                f"{part!r} is neither a duration (15m, 4h, 2d: the lag) nor a whole number "
                "(1000: cached entries)"
            ) from None
        if lag is not None:
            raise InvalidQueryError(f"{text!r}: two durations")
        lag = seconds
    return Limits(lag, cached)


def lag_seconds(info: dict[str, Any]) -> float | None:
    """The age of the oldest undelivered entry either way; while the peer is away, at least
    the time since the last complete sync. None when nothing says (never synced, nothing
    waiting that we can see)."""
    ages = [a for a in info["oldest_undelivered_age_seconds"].values() if a is not None]
    if not info["peer_reachable"] and info["last_sync_age_seconds"] is not None:
        ages.append(info["last_sync_age_seconds"])
    return max(ages) if ages else (0.0 if info["in_sync"] else None)


def cached_entries(info: dict[str, Any]) -> int:
    """Entries waiting in the caches (the peer's counted when it could be read)."""
    cache = info["cache_entries"]
    return int(cache["local"] or 0) + int(cache["peer"] or 0)


def evaluate(info: dict[str, Any], warning: Limits, critical: Limits) -> tuple[int, str]:
    """The state the thresholds give (OK when none is exceeded) and why, in words."""
    lag, cached = lag_seconds(info), cached_entries(info)
    for state, limits, option in ((CRITICAL, critical, "critical"), (WARNING, warning, "warning")):
        reasons = []
        if limits.lag is not None and lag is not None and lag > limits.lag:
            reasons.append(f"lag {_duration(lag)} over --{option} {_duration(limits.lag)}")
        if limits.cached is not None and cached > limits.cached:
            entries = "entry" if cached == 1 else "entries"
            reasons.append(f"{cached} cached {entries} over --{option} {limits.cached}")
        if reasons:
            return state, "; ".join(reasons)
    return OK, ""


def restate(line: str, state: int, why: str) -> str:
    """The check's first line ``TWINLOG WORD - text | perf`` with the state the thresholds
    gave, when worse than the line's own, and their reason after the text."""
    head, sep, perf = line.partition(" | ")
    prefix, _, text = head.partition(" - ")
    word = prefix.removeprefix("TWINLOG ")
    if word in STATE_NAMES and STATE_NAMES.index(word) < state:
        word = STATE_NAMES[state]
    if why:
        text = f"{text}; {why}"
    return f"TWINLOG {word} - {text}{sep}{perf}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def _perf_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "U"
    return f"{value}{unit}" if isinstance(value, int) else f"{value:.3f}{unit}"


def perfdata(
    info: dict[str, Any] | None,
    warning: Limits | None = None,
    critical: Limits | None = None,
) -> str:
    """Nagios performance data: the same labels whatever the state (``U`` where unknown, and
    all ``U`` when ``info`` is None: the check could not tell)."""
    warning, critical = warning or Limits(), critical or Limits()

    def limit(value: float | None) -> str:
        if value is None:
            return ""
        return str(int(value)) if float(value).is_integer() else f"{value:.3f}"

    def get(*path: str) -> Any:
        node: Any = info
        for key in path:
            if node is None:
                return None
            node = node[key]
        return node

    reachable = get("peer_reachable")
    values: list[tuple[str, Any, str, Limits | None]] = [
        ("cache_local", get("cache_entries", "local"), "", None),
        ("cache_peer", get("cache_entries", "peer"), "", None),
        ("cached", None if info is None else cached_entries(info), "", Limits(cached=0)),
        ("pending_to_peer", get("pending_to_peer"), "", None),
        ("pending_from_peer", get("pending_from_peer"), "", None),
        ("peer_reachable", None if reachable is None else int(reachable), "", None),
        ("oldest_to_peer", _known_age(info, "to_peer"), "s", None),
        ("oldest_from_peer", _known_age(info, "from_peer"), "s", None),
        ("last_sync_age", get("last_sync_age_seconds"), "s", None),
        ("lag", None if info is None else lag_seconds(info), "s", Limits(lag=0)),
    ]
    out = []
    for label, value, unit, checked in values:
        text = f"{label}={_perf_value(value, unit)}"
        if checked is not None:  # the two values the thresholds apply to carry them
            pick = "lag" if checked.lag is not None else "cached"
            text += f";{limit(getattr(warning, pick))};{limit(getattr(critical, pick))}"
            text = text.rstrip(";")
        out.append(text)
    return " ".join(out)


# -- Prometheus ---------------------------------------------------------------------------
def _label(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def prometheus_text(info: dict[str, Any], version: str) -> str:
    """The status in the Prometheus text exposition format.

    Labels mean one thing each: ``node`` is always the node reporting (on every metric),
    ``peer`` its peer, ``origin`` the node that wrote the entries counted, ``side`` whose
    cache, ``direction`` which way delivery goes. Unknown values (the peer's side while it is
    away) are left out rather than reported as 0.
    """
    out: list[str] = []
    here = {"node": info["node"]}
    for name, kind, help_text, samples in [*_health(info, version), *_delivery(info)]:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            rendered = ",".join(f"{k}={_label(v)}" for k, v in {**here, **labels}.items())
            number = f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else value
            out.append(f"{name}{{{rendered}}} {number}")
    return "\n".join(out) + "\n"


#: name, type, help, and (labels, value) samples
_Metric = tuple[str, str, str, list[tuple[dict[str, Any], Any]]]


def _health(info: dict[str, Any], version: str) -> list[_Metric]:
    cache = info["cache_entries"]
    return [
        (
            "twinlog_build_info",
            "gauge",
            "twinlog's version and the Python running it; always 1.",
            [({"version": version, "python": platform.python_version()}, 1)],
        ),
        (
            "twinlog_peer_reachable",
            "gauge",
            "Whether this node reached its peer's log directory (1) or not (0).",
            [({"peer": info["peer"]}, int(info["peer_reachable"]))],
        ),
        (
            "twinlog_in_sync",
            "gauge",
            "Whether both logs hold the same entries and no cache holds any (1) or not (0).",
            [({}, int(info["in_sync"]))],
        ),
        (
            "twinlog_cache_entries",
            "gauge",
            "Entries waiting in a cache: side=local for the peer, side=peer for this node.",
            [({"side": side}, cache[side]) for side in ("local", "peer")],
        ),
    ]


def _delivery(info: dict[str, Any]) -> list[_Metric]:
    return [
        (
            "twinlog_entries_total",
            "counter",
            "Entries of each origin node in this node's log "
            "(the origin's highest sequence number).",
            [({"origin": origin}, seq) for origin, seq in info["last_seq"].items()],
        ),
        (
            "twinlog_pending_entries",
            "gauge",
            "Entries present on one node's log and not yet on the other's.",
            [({"direction": d}, info[f"pending_{d}"]) for d in ("to_peer", "from_peer")],
        ),
        (
            "twinlog_oldest_undelivered_age_seconds",
            "gauge",
            "Age of the oldest entry not yet delivered that way (0: nothing waits).",
            [({"direction": d}, _known_age(info, d)) for d in ("to_peer", "from_peer")],
        ),
        (
            "twinlog_last_sync_timestamp_seconds",
            "gauge",
            "When both logs were last known to hold every entry (Unix time).",
            [({}, _last_sync_seconds(info))],
        ),
        (
            "twinlog_history_conflicts",
            "gauge",
            "Origins whose entries differ between the two logs under the same ids "
            "(twinlog repair).",
            [({}, len(info.get("conflicts", [])))],
        ),
        (
            "twinlog_stuck_workers",
            "gauge",
            "Peer worker processes stuck in the kernel (a hung mount).",
            [({}, len(info["stuck_workers"]))],
        ),
    ]


def _known_age(info: dict[str, Any] | None, direction: str) -> float | None:
    """The oldest undelivered entry's age that way; 0 when nothing waits, None when unknown
    (what waits on the peer's side, while it cannot be reached)."""
    if info is None:
        return None
    age = info["oldest_undelivered_age_seconds"][direction]
    if age is not None:
        return float(age)
    return 0.0 if direction == "to_peer" or info["peer_reachable"] else None


def _last_sync_seconds(info: dict[str, Any]) -> float | None:
    return None if info["last_sync"] is None else ts_seconds(info["last_sync"])


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a temporary file in the same directory, then
    a rename): node_exporter never reads half a file. World-readable, as the collector runs as
    another user."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
