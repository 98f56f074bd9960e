"""Looking without writing: ``read()`` (this node's log), ``status()`` and ``verify()`` (both)."""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from twinlog._audit import Break, check_witnesses, walk, witnesses_in
from twinlog._delivery import last_sync, oldest_undelivered, record_sync, ts_seconds
from twinlog._fileops import LOG_FILE, DirOps
from twinlog._history import Conflict, read_conflicts
from twinlog._query import Query
from twinlog._read import (
    Seeker,
    VerifyResult,
    compare,
    last_entries,
    merged_entries,
    origin_lines,
    pinned_snapshot,
    snapshot_files,
)
from twinlog._sides import Sides
from twinlog._store import LogStore
from twinlog.config import Config
from twinlog.entry import Entry, format_ts
from twinlog.exceptions import PeerError
from twinlog.probe import REASONS

__all__ = ["read", "status", "verify"]


def read(config: Config, query: Query, last: int | None) -> Iterator[Entry]:
    """``TwinLog.read``: this node's log, from a snapshot of its files pinned open; ``last``
    checked by the caller."""
    origins = [o for o in (config.node, config.peer) if query.node in (None, o)]
    dir_ops = DirOps(os.fspath(config.log_dir))
    dir_ops.open_dir(config.node, None, False)
    on_disk = LogStore(dir_ops, config.node, fsync=False)
    pinned, files = pinned_snapshot(on_disk, dir_ops.dir_fd)
    manifest = on_disk.read_manifest()
    store = LogStore(pinned, config.node, fsync=False)  # reads only the files pinned open
    seeker = Seeker(store, files, manifest)

    def entries() -> Iterator[Entry]:
        try:
            if last is not None and query.by_origin_only:
                yield from last_entries(seeker, origins, last)
                return
            plans = {o: seeker.window(o, query.since, query.until) for o in origins}
            found = merged_entries(store, files, origins, query.since, query.until, plans=plans)
            matching = (entry for entry in found if query.matches(entry))
            yield from matching if last is None else collections.deque(matching, last)
        finally:
            pinned.close()
            dir_ops.close()

    return entries()


# -- status ----------------------------------------------------------------------------------
def status(sides: Sides) -> dict[str, Any]:
    """``TwinLog.status``: reachability (and why not), what waits where, conflicts, age."""
    cfg, local = sides.config, sides.local
    sides.refresh_local(repair=False)
    assert local.state is not None
    local_hwm = dict(local.state.hwm)
    info: dict[str, Any] = {
        "node": cfg.node,
        "peer": cfg.peer,
        "peer_reachable": False,
        "peer_reason": "ok",
        "peer_reason_text": "",
        "cache_entries": {"local": local.count_cache(), "peer": None},
        "last_seq": {cfg.node: local_hwm.get(cfg.node, 0), cfg.peer: local_hwm.get(cfg.peer, 0)},
        "peer_last_seq": None,
        "pending_to_peer": None,
        "pending_from_peer": None,
        # Entries of ours the peer holds and our log lost (a replaced or rolled-back disk),
        # and of the peer's that its log lost and ours holds: the next contact gives each
        # node its history back.
        "to_take_back": None,
        "to_give_back": None,
        "stuck_workers": sides.reach.remote.stuck_pids,
        "conflict": None,
        "conflicts": [],
        "in_sync": False,
        # Per origin, both nodes' chain heads [seq, chain]; equal: the same history (O(1)).
        "chain_heads": None,
        "heads_agree": None,
    }
    conflicts = read_conflicts(local)
    from_peer: str | None = None
    reason = sides.reach.precheck()
    if reason is None:
        try:
            conflicts, from_peer = _peer_view(sides, info, local_hwm, conflicts)
            info["peer_reachable"] = True
        except PeerError as exc:
            reason = exc.reason
            info["peer_reason_text"] = exc.detail
    info["peer_reason"] = reason or "ok"
    info["peer_reason_text"] = info["peer_reason_text"] or REASONS.get(reason or "ok", "")
    _conflicts_and_sync(info, conflicts, cfg.node)
    _report_delivery(sides, info, from_peer)
    return info


def _peer_view(
    sides: Sides, info: dict[str, Any], local_hwm: dict[str, int], known: dict[str, Conflict]
) -> tuple[dict[str, Conflict], str | None]:
    """What the peer holds, against ours (without its lock); the conflicts known and found, and
    the oldest entry of the peer's that we lack."""
    cfg, peer = sides.config, sides.peer
    sides.reach.ops.check_identity(cfg.peer, sides.local_ops.dev_ino())
    peer_state = peer.refresh(repair=False)
    peer_hwm = dict(peer_state.hwm)
    info["chain_heads"], info["heads_agree"] = _heads(sides, peer_state.heads)
    info["cache_entries"]["peer"] = peer.count_cache()
    info["peer_last_seq"] = {
        cfg.node: peer_hwm.get(cfg.node, 0),
        cfg.peer: peer_hwm.get(cfg.peer, 0),
    }
    ours = local_hwm.get(cfg.node, 0) - peer_hwm.get(cfg.node, 0)
    theirs = peer_hwm.get(cfg.peer, 0) - local_hwm.get(cfg.peer, 0)
    info["pending_to_peer"], info["to_take_back"] = max(ours, 0), max(-ours, 0)
    info["pending_from_peer"], info["to_give_back"] = max(theirs, 0), max(-theirs, 0)
    conflicts = sides.histories.with_found({**read_conflicts(peer), **known})
    return conflicts, oldest_undelivered(peer, cfg.peer, local_hwm.get(cfg.peer, 0))


def _heads(
    sides: Sides, peer_heads: dict[str, tuple[int, str]]
) -> tuple[dict[str, dict[str, list[Any] | None]], bool]:
    """Both nodes' chain heads per origin, and whether they are all equal (docs/security.md)."""
    cfg, local = sides.config, sides.local
    assert local.state is not None
    heads: dict[str, dict[str, list[Any] | None]] = {}
    for origin in (cfg.node, cfg.peer):
        mine, theirs = local.state.heads.get(origin), peer_heads.get(origin)
        heads[origin] = {
            cfg.node: None if mine is None else list(mine),
            cfg.peer: None if theirs is None else list(theirs),
        }
    agree = all(local.state.heads.get(o) == peer_heads.get(o) for o in (cfg.node, cfg.peer))
    return heads, agree


def _conflicts_and_sync(info: dict[str, Any], conflicts: dict[str, Conflict], node: str) -> None:
    ordered = sorted(conflicts.values(), key=lambda c: (c.origin != node, c.origin))
    info["conflicts"] = [c.to_dict() for c in ordered]
    info["conflict"] = info["conflicts"][0] if ordered else None
    info["in_sync"] = bool(
        not ordered
        and info["peer_reachable"]
        and info["pending_to_peer"] == 0
        and info["pending_from_peer"] == 0
        and info["to_take_back"] == 0
        and info["to_give_back"] == 0
        and not info["cache_entries"]["local"]
        and not info["cache_entries"]["peer"]
    )


def _report_delivery(sides: Sides, info: dict[str, Any], from_peer: str | None) -> None:
    """The oldest undelivered entry each way (None: nothing waits, or unknown for
    ``from_peer`` while the peer is away) and the last complete sync."""
    cfg = sides.config
    now = time.time()
    delivered = info["peer_last_seq"][cfg.node] if info["peer_reachable"] else None
    to_peer = oldest_undelivered(sides.local, cfg.node, delivered)
    oldest = {"to_peer": to_peer, "from_peer": from_peer if info["peer_reachable"] else None}
    info["oldest_undelivered_ts"] = oldest
    info["oldest_undelivered_age_seconds"] = {
        way: None if ts is None else round(max(0.0, now - ts_seconds(ts)), 3)
        for way, ts in oldest.items()
    }
    if info["in_sync"]:
        record_sync(sides.local_ops, now)
    synced = last_sync(sides.local_ops)
    info["last_sync"] = None if synced is None else format_ts(round(synced * 1_000_000))
    info["last_sync_age_seconds"] = None if synced is None else round(now - synced, 3)


# -- verify ----------------------------------------------------------------------------------
def verify(sides: Sides, *, deep: bool = False, full: bool = False) -> VerifyResult:
    """``TwinLog.verify``: compare both logs by entry id; again if either rotated meanwhile.
    ``deep``: also every link and witness, from where the last deep check ended (``full``:
    from the start)."""
    result, stable = _verify_once(sides, deep, full)
    for _ in range(2):
        if stable:
            break
        result, stable = _verify_once(sides, deep, full)
    return result


def _verify_once(sides: Sides, deep: bool, full: bool) -> tuple[VerifyResult, bool]:
    """One comparison, and whether neither log rotated while it read them."""
    cfg, local, peer = sides.config, sides.local, sides.peer
    result = VerifyResult(
        in_sync=False, node=cfg.node, peer=cfg.peer, peer_reachable=False, reason="ok"
    )
    reason = sides.reach.precheck()
    if reason is not None:
        result.reason = reason
        return result, True
    try:
        # Snapshot both logs' complete sizes under both locks, then read without them.
        with sides.snapshot_locks():
            local_state = local.refresh(repair=False)
            peer_state = peer.refresh(repair=False)
            local_files = snapshot_files(local)
            peer_files = snapshot_files(peer)
        for origin in (cfg.node, cfg.peer):
            compare(
                origin_lines(local, local_files, origin),
                origin_lines(peer, peer_files, origin),
                origin,
                result,
                local_mark=local_state.hwm.get(origin, 0),
                peer_mark=peer_state.hwm.get(origin, 0),
            )
        _compare_heads(sides, result, peer_state.heads)
        if deep:
            # Copies that differ: the whole of both logs, to place what broke.
            full = full or bool(result.conflicts) or not result.heads_agree
            _deep(sides, result, (local_files, peer_files), full=full)
        stable = all(
            store.segments() == [name for name, _ in files[:-1]]
            and (store.ops.stat(LOG_FILE) or (0, None))[1] == state.ino
            for store, files, state in (
                (local, local_files, local_state),
                (peer, peer_files, peer_state),
            )
        )
    except PeerError as exc:
        result.reason = exc.reason
        return result, True
    result.peer_reachable = True
    result.in_sync = not (
        result.conflicts
        or result.missing_on_local
        or result.missing_on_peer
        or result.duplicates_local
        or result.duplicates_peer
        or result.broken
    )
    return result, stable


def _compare_heads(sides: Sides, result: VerifyResult, peer: dict[str, tuple[int, str]]) -> None:
    result.chain_heads, result.heads_agree = _heads(sides, peer)


def _deep(
    sides: Sides,
    result: VerifyResult,
    files: tuple[list[tuple[str, int | None]], list[tuple[str, int | None]]],
    *,
    full: bool,
) -> None:
    """Every link on both nodes (from where the last deep check without a break ended,
    unless ``full``), then every witness either log holds against both."""
    cfg, local, peer = sides.config, sides.local, sides.peer
    local_files, peer_files = files
    witnesses = {w.by: w for w in witnesses_in(local, local_files) + witnesses_in(peer, peer_files)}
    wanted = {(w.origin, w.seq) for w in witnesses.values()}
    resume = {} if full else _verified(sides)
    walks = (
        walk(local, local_files, cfg.node, wanted, resume.get(cfg.node)),
        walk(peer, peer_files, cfg.peer, wanted, resume.get(cfg.peer)),
    )
    for walked in walks:
        check_witnesses(walked, witnesses.values())
    # A node's log holds every entry of its own (the local append comes first): fewer of
    # them than the peer holds is a cut-off tail.
    for walked, other in (walks, walks[::-1]):
        own = walked.last.get(walked.node, (0, None))[0]
        held = other.last.get(walked.node, (0, None))[0]
        if own < held:
            name, at = walked.end
            detail = f"its log ends at {walked.node}:{own}, {other.node} holds up to {held}"
            walked.breaks.append(
                Break(walked.node, name, at, f"{walked.node}:{own + 1}", "truncated", detail)
            )
    result.deep = True
    result.lines_checked = sum(w.lines for w in walks)
    result.broken = [b for w in walks for b in w.breaks]
    result.unchained = {w.node: w.unchained for w in walks if w.unchained}
    if not result.broken:
        data = json.dumps({w.node: w.verified for w in walks}).encode()
        sides.local_ops.replace(VERIFIED_FILE, data, False)


#: Where the last ``verify --deep`` without a break ended, per node (``_audit.walk``'s resume).
VERIFIED_FILE = "twinlog.verified"


def _verified(sides: Sides) -> dict[str, Any]:
    try:
        data = json.loads(sides.local_ops.read(VERIFIED_FILE, 0, 1 << 20) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
