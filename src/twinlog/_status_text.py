"""``twinlog status`` in words: the Nagios-style first line and the details under it, and the
phrases other output shares (counts of entries, why the peer is not reachable).

Both the command line (``cli.py``) and the demo (``demo.py``) print through here, so neither
imports the other for it.
"""

from __future__ import annotations

from typing import Any

from twinlog._monitor import Limits, perfdata
from twinlog.probe import REASONS

__all__ = ["plural", "reason_text", "status_details", "status_summary"]


def plural(n: int, word: str) -> str:
    """``1 entry``, ``2 entries``, ``3 later entries``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def reason_text(reason: str, text: str = "") -> str:
    """Why the peer is not reachable, in words: ``text`` when given, else the probe's wording."""
    return text or REASONS.get(reason.split(":", 1)[0], reason)


def status_summary(
    info: dict[str, Any], warning: Limits | None = None, critical: Limits | None = None
) -> str:
    """The Nagios-style first line: ``TWINLOG OK - ...`` or ``TWINLOG WARNING - ...``."""
    node, peer = info["node"], info["peer"]
    cache = info["cache_entries"]
    perf = [perfdata(info, warning, critical)]
    seqs = ", ".join(f"{n}:{s}" for n, s in info["last_seq"].items())
    conflict = info.get("conflict")
    if conflict:
        origin = conflict["origin"]
        where = f"on {node}" if origin == node else f"on {origin} (the node whose history it is)"
        text = (
            f"TWINLOG CRITICAL - history conflict: {origin}'s entries differ between {node} and "
            f"{peer} from {conflict['first_id']} on; nothing of them is copied until an "
            f"operator runs 'twinlog repair' {where}"
        )
    elif info["in_sync"]:
        text = f"TWINLOG OK - {node} and {peer} in sync (last seq {seqs})"
    elif not info["peer_reachable"]:
        reason = reason_text(info["peer_reason"], info["peer_reason_text"])
        text = f"TWINLOG WARNING - peer {peer} not reachable from {node}: {reason}"
        if cache["local"]:
            text += f"; {plural(cache['local'], 'entry')} cached for {peer}"
    else:
        waiting = []
        to_peer = max(info["pending_to_peer"] or 0, cache["local"] or 0)
        from_peer = max(info["pending_from_peer"] or 0, cache["peer"] or 0)
        if to_peer:
            waiting.append(f"{plural(to_peer, 'entry')} waiting to go to {peer}")
        if from_peer:
            waiting.append(f"{plural(from_peer, 'entry')} waiting to come from {peer}")
        if info.get("to_take_back"):
            waiting.append(
                f"{plural(info['to_take_back'], 'entry')} of {node}'s own that its log lost "
                f"to take back from {peer}"
            )
        if info.get("to_give_back"):
            waiting.append(
                f"{plural(info['to_give_back'], 'entry')} of {peer}'s own that its log lost "
                f"to give back"
            )
        text = (
            f"TWINLOG WARNING - {' and '.join(waiting) or 'not in sync'}; run 'twinlog reconcile'"
        )
    return f"{text} | {' '.join(perf)}"


def status_details(info: dict[str, Any]) -> list[str]:
    """The lines under the first one: the peer, both caches, the marks, delivery, conflicts."""
    node, peer = info["node"], info["peer"]
    cache = info["cache_entries"]
    if info["peer_reachable"]:
        reach = "reachable"
    else:
        reach = f"NOT reachable: {reason_text(info['peer_reason'], info['peer_reason_text'])}"
    lines = [
        f"node:              {node}",
        f"peer:              {peer} ({reach})",
        f"local cache:       {plural(cache['local'], 'entry')} waiting for {peer}",
        "peer cache:        "
        + (
            "unknown (peer not reachable)"
            if cache["peer"] is None
            else f"{plural(cache['peer'], 'entry')} waiting for {node}"
        ),
        "last seq here:     " + ", ".join(f"{n}:{s}" for n, s in info["last_seq"].items()),
    ]
    if info["peer_last_seq"] is not None:
        lines.append(
            "last seq on peer:  " + ", ".join(f"{n}:{s}" for n, s in info["peer_last_seq"].items())
        )
    lines += _delivery_lines(info)
    if info["stuck_workers"]:
        pids = ", ".join(str(pid) for pid in info["stuck_workers"])
        lines.append(f"stuck peer workers: {pids}")
    for conflict in info.get("conflicts", []):
        origin = conflict["origin"]
        holds = ", ".join(f"{n} up to {origin}:{s}" for n, s in conflict["marks"].items())
        lines.append(
            f"history conflict:  {origin}'s entries from {conflict['first_id']} on "
            f"({holds}; found by {conflict['found_by']})"
        )
    return lines


def _delivery_lines(info: dict[str, Any]) -> list[str]:
    """The oldest undelivered entry each way and the last complete sync, in words."""
    peer = info["peer"]
    lines = []
    for way, label in (("to_peer", f"to {peer}"), ("from_peer", f"from {peer}")):
        ts = info["oldest_undelivered_ts"][way]
        if ts is not None:
            age = info["oldest_undelivered_age_seconds"][way]
            text = f"{ts} ({_age(age)} ago)"
        elif way == "from_peer" and not info["peer_reachable"]:
            text = "unknown (peer not reachable)"
        else:
            text = "none"
        lines.append(f"oldest undelivered {label}: {text}")
    synced = info["last_sync"]
    lines.append(
        "last complete sync: "
        + (f"{synced} ({_age(info['last_sync_age_seconds'])} ago)" if synced else "never recorded")
    )
    return lines


def _age(seconds: float) -> str:
    """``42.0s``, ``3m12s``, ``5h4m``, ``2d3h``: the two largest units."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole, parts = int(seconds), list[str]()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size or parts:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts[:2])
