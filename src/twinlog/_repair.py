"""Repairing a history conflict on the node whose history it is (``twinlog repair``).

The peer's copy of this node's history wins: it is what the pair acknowledged to whoever read
it there. This node's entries with ids the peer holds differently are re-logged as new entries
after it (each with ``replaces`` naming the id it had); its entries with ids beyond the peer's
keep them. The origin's hash chain (_chain.py) follows the peer's copy, then goes on over the
entries that come after it. The local files holding the replaced entries move, whole, into an
archive directory (``twinlog.repaired.<time>``): nothing is deleted.

The new log is written beside the old one first, then a journal (``twinlog.repair``), then
the files are switched. Moving the active log into the archive is the commit point: a crash
before it leaves the old log in use (the journal is dropped), a crash after it is rolled
forward by the next process that locks the directory (:func:`roll_forward`). What needs the
peer (clearing both nodes' conflict records) is the journal's last phase, finished at the next
contact (:func:`finish_with_peer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twinlog import _failpoints
from twinlog._chain import GENESIS, seal, split_chain, unsealed
from twinlog._fileops import CACHE_FILE, LOG_FILE, DirOps
from twinlog._history import Conflict, read_conflicts, record_conflicts
from twinlog._store import INDEX_FILE, LogStore
from twinlog.clock import HybridClock
from twinlog.entry import check_message, decode_line, encode_entry, parse_key

__all__ = ["JOURNAL_FILE", "RepairResult", "finish_with_peer", "rebuild", "roll_forward", "switch"]

JOURNAL_FILE = "twinlog.repair"
NEW_LOG_FILE = "twinlog.log.repair"
ARCHIVE_PREFIX = "twinlog.repaired."
_NO_LIMIT = 1 << 30  # re-logging an entry once accepted: its size was checked then


@dataclass
class RepairResult:
    """What ``TwinLog.repair()`` did. ``repaired`` is False when there was nothing this node
    could repair (``reason`` says why: ``no_conflict``, ``peer_history`` (run it on the peer),
    or why the peer was not reachable)."""

    repaired: bool
    reason: str
    origin: str | None = None
    first_id: str | None = None
    taken_back: int = 0
    kept: int = 0
    relogged: list[tuple[str, str]] = field(default_factory=list)  # (old id, new id)
    archive: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "repaired": self.repaired,
            "reason": self.reason,
            "origin": self.origin,
            "first_id": self.first_id,
            "taken_back": self.taken_back,
            "kept": self.kept,
            "relogged": [list(pair) for pair in self.relogged],
            "archive": self.archive,
        }


@dataclass(frozen=True)
class _Plan:
    origin: str
    first_seq: int
    archive: str
    moves: list[str]  # files of the old log that go into the archive, the active log first
    switched: bool = False

    def to_bytes(self) -> bytes:
        doc = {
            "origin": self.origin,
            "first_seq": self.first_seq,
            "archive": self.archive,
            "moves": self.moves,
            "switched": self.switched,
        }
        return json.dumps(doc).encode() + b"\n"

    @classmethod
    def load(cls, ops: DirOps) -> _Plan | None:
        raw = ops.read(JOURNAL_FILE, 0, 1 << 20)
        try:
            doc = json.loads(raw)
            return cls(
                str(doc["origin"]),
                int(doc["first_seq"]),
                str(doc["archive"]),
                [str(name) for name in doc["moves"]],
                bool(doc["switched"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def rebuild(
    local: LogStore, ops: DirOps, peer: LogStore, conflict: Conflict, clock: HybridClock
) -> RepairResult:
    """Write the repaired log (``twinlog.log.repair``) and the journal that switches to it.

    Under both locks, both stores refreshed. The files from the first one holding an entry of
    ``conflict.origin`` at or after its first conflicting seq are rewritten: every line but the
    origin's from that seq on, then the peer's entries of the origin from that seq to its mark,
    then the origin's entries beyond the peer's mark, then the re-logged ones.
    """
    origin, first_seq = conflict.origin, conflict.first_seq
    state, peer_state = local.state, peer.state
    assert state is not None
    assert peer_state is not None
    peer_mark = peer_state.hwm.get(origin, 0)
    moves = _files_from(local, origin, first_seq)
    replaced: dict[int, bytes] = {}
    kept: dict[int, bytes] = {}
    ops.unlink(NEW_LOG_FILE)  # left by an attempt that did not get to its journal

    chain = _Chain()

    def old_lines() -> Iterator[bytes]:
        for name in moves:
            end = state.offset if name == LOG_FILE else None
            for lines in local.iter_lines(name, 0, end):
                for line in lines:
                    key = parse_key(line)
                    if key is None or key[0] != origin or key[1] < first_seq:
                        if key is not None and key[0] == origin:
                            chain.follow(line)
                        yield line
                    elif key[1] <= peer_mark:
                        replaced.setdefault(key[1], line)
                    else:
                        kept.setdefault(key[1], line)

    _append_all(ops, old_lines(), local.fsync)
    taken = _take_peers_copy(
        ops, peer, conflict, peer_mark, replaced, chain=chain, fsync=local.fsync
    )
    # Ours beyond the peer's mark chained to our replaced entries: now they follow the peer's.
    _append_all(ops, (chain.reseal(kept[seq]) for seq in sorted(kept)), local.fsync)
    next_seq = max(peer_mark, state.hwm.get(origin, 0)) + 1
    floor = max(state.max_ts, peer_state.max_ts) or None
    new_lines, relogged = _relog(origin, replaced, next_seq, clock.next_after(floor, len(replaced)))
    _append_all(ops, (chain.reseal(line) for line in new_lines), local.fsync)
    archive = _write_journal(ops, origin, first_seq, moves)
    return RepairResult(
        True,
        "ok",
        origin,
        conflict.first_id,
        taken_back=taken,
        kept=len(kept),
        relogged=relogged,
        archive=archive,
    )


def _write_journal(ops: DirOps, origin: str, first_seq: int, moves: list[str]) -> str:
    """The journal that switches to the new log (durable); the archive directory it names."""
    archive = ARCHIVE_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    plan = _Plan(origin, first_seq, archive, moves)
    ops.replace(JOURNAL_FILE, plan.to_bytes(), True)
    ops.fsync_dir()
    if _failpoints.ACTIVE:
        _failpoints.hit("repair_after_journal")
    return archive


def _take_peers_copy(
    ops: DirOps,
    peer: LogStore,
    conflict: Conflict,
    peer_mark: int,
    replaced: dict[int, bytes],
    *,
    chain: _Chain,
    fsync: bool,
) -> int:
    """The peer's entries of the origin from the conflict's first seq to ``peer_mark`` into
    the new log; those equal to ours leave ``replaced`` (not ours to re-log). How many."""
    taken = 0
    for lines in peer.iter_origin_after(conflict.origin, conflict.first_seq - 1):
        picked = [line for line in lines if _seq(line) <= peer_mark]
        for line in picked:
            chain.follow(line)
        _append_all(ops, iter(picked), fsync)
        taken += len(picked)
        for line in picked:
            if replaced.get(_seq(line)) == line:
                del replaced[_seq(line)]
    return taken


class _Chain:
    """The repaired origin's hash chain (_chain.py) along the new log: followed over the
    lines copied as they are, continued on the lines that move after them."""

    def __init__(self) -> None:
        self.prev = GENESIS

    def follow(self, line: bytes) -> None:
        found = split_chain(line)
        self.prev = found[1] if found is not None else GENESIS

    def reseal(self, line: bytes) -> bytes:
        line, self.prev = seal(unsealed(line), self.prev)
        return line


def _relog(
    origin: str, replaced: dict[int, bytes], next_seq: int, stamps: list[str]
) -> tuple[list[bytes], list[tuple[str, str]]]:
    """Our ``replaced`` entries (by seq) as new entries from ``next_seq`` on, each naming the
    id it replaces; and the (old id, new id) pairs."""
    relogged: list[tuple[str, str]] = []
    new_lines: list[bytes] = []
    for (seq, line), ts in zip(sorted(replaced.items()), stamps, strict=True):
        entry = decode_line(line)
        if entry is None:  # not an entry after all: nothing to re-log
            continue
        fields = {k: v for k, v in entry.fields.items() if k not in ("replaces", "key")}
        fields_json = check_message(entry.msg, fields, _NO_LIMIT)
        if isinstance(entry.fields.get("key"), str):  # the idempotency key stays in front
            key_json = b'"key":' + json.dumps(entry.fields["key"], ensure_ascii=False).encode()
            fields_json = key_json + (b"," + fields_json if fields_json else b"")
        fields_json += (
            (b"," if fields_json else b"") + b'"replaces":' + json.dumps(entry.id).encode()
        )
        new_lines.append(encode_entry(origin, next_seq, ts, entry.msg, fields_json))
        relogged.append((f"{origin}:{seq}", f"{origin}:{next_seq}"))
        next_seq += 1
    return new_lines, relogged


def _append_all(ops: DirOps, lines: Iterator[bytes], fsync: bool) -> None:
    """Append ``lines`` to the new log in blocks of about a MiB (fsync at the end)."""
    block: list[bytes] = []
    size = 0
    for line in lines:
        block.append(line)
        size += len(line)
        if size >= 1 << 20:
            ops.append(NEW_LOG_FILE, [b"".join(block)], False)
            block, size = [], 0
    ops.append(NEW_LOG_FILE, [b"".join(block)] if block else [], fsync)


def _files_from(local: LogStore, origin: str, first_seq: int) -> list[str]:
    """The segments from the first that may hold ``origin:first_seq`` or later, and the active
    log: a segment the manifest says ends below that seq keeps its place."""
    manifest = local.read_manifest()
    segments = local.segments()
    for index, name in enumerate(segments):
        info = manifest.get(name.rsplit(".", 1)[-1])
        hwm = info.get("hwm") if isinstance(info, dict) else None
        if not isinstance(hwm, dict) or int(hwm.get(origin, 0)) >= first_seq:
            return [*segments[index:], LOG_FILE]
    return [LOG_FILE]


def switch(local: LogStore, ops: DirOps) -> None:
    """Carry out the journal's switch to the new log (idempotent; under our lock): the old
    files into the archive, the active log first, then the new log in its place."""
    plan = _Plan.load(ops)
    if plan is None or plan.switched:
        return
    dir_fd = ops.dir_fd
    with contextlib.suppress(FileExistsError):
        os.mkdir(plan.archive, 0o750, dir_fd=dir_fd)
    archive_fd = os.open(plan.archive, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        committed = _exists(archive_fd, LOG_FILE)
        for name in [*plan.moves, CACHE_FILE, INDEX_FILE]:
            if name == LOG_FILE and committed:
                continue  # what is there now is the new log
            if _exists(dir_fd, name) and not _exists(archive_fd, name):
                ops.forget(name)
                os.rename(name, name, src_dir_fd=dir_fd, dst_dir_fd=archive_fd)
                if name == LOG_FILE and _failpoints.ACTIVE:
                    _failpoints.hit("repair_after_log_archived")
        if _exists(dir_fd, NEW_LOG_FILE):
            os.rename(NEW_LOG_FILE, LOG_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(archive_fd)
    finally:
        os.close(archive_fd)
    local.forget_segments([name for name in plan.moves if name != LOG_FILE])
    ops.fsync_dir()
    ops.replace(
        JOURNAL_FILE,
        _Plan(plan.origin, plan.first_seq, plan.archive, plan.moves, True).to_bytes(),
        True,
    )
    local.state = None  # read the new log afresh
    if _failpoints.ACTIVE:
        _failpoints.hit("repair_after_switch")


def roll_forward(local: LogStore, ops: DirOps) -> bool:
    """After a crash (under our lock, before anything is appended): finish a switch that got
    past its commit point, or drop one that did not (other processes may have appended to
    the old log since). Whether the log changed."""
    plan = _Plan.load(ops)
    if plan is None or plan.switched:
        return False
    if not _exists(ops.dir_fd, os.path.join(plan.archive, LOG_FILE)):
        ops.unlink(NEW_LOG_FILE)
        ops.unlink(JOURNAL_FILE)
        with contextlib.suppress(OSError):
            os.rmdir(plan.archive, dir_fd=ops.dir_fd)
        return False
    switch(local, ops)
    return True


def pending_origin(ops: DirOps) -> str | None:
    """The origin whose repair was switched here and waits for the peer to clear its record."""
    plan = _Plan.load(ops)
    return plan.origin if plan is not None and plan.switched else None


def finish_with_peer(local: LogStore, ops: DirOps, peer: LogStore) -> None:
    """The journal's last phase, under both locks: the conflict is no longer recorded on
    either node (the peer's record first: ours is what says the work is not done)."""
    plan = _Plan.load(ops)
    if plan is None or not plan.switched:
        return
    theirs = read_conflicts(peer)
    if theirs.pop(plan.origin, None) is not None:
        record_conflicts(peer, theirs)
    if _failpoints.ACTIVE:
        _failpoints.hit("repair_after_peer_record")
    mine = read_conflicts(local)
    if mine.pop(plan.origin, None) is not None:
        record_conflicts(local, mine)
    ops.unlink(JOURNAL_FILE)


def _seq(line: bytes) -> int:
    key = parse_key(line)
    return key[1] if key is not None else 0


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
