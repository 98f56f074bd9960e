"""``verify(deep=True)``: every link of every origin's chain on both nodes, and every witness.

A walk reads one node's files in log order and, per origin, checks that seqs go up by one and
that each line's chain is SHA-256 of the chain before it and the line without its chain
(_chain.py). What it finds is a :class:`Break`, located by node, file, byte offset and id.
Witnesses (entries a node logs of the peer's chain head on a reconcile) are then checked on
both nodes: the witnessed line must carry the witnessed chain, so a history rewritten on one
node with every chain recomputed still contradicts what the other node saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from twinlog._chain import GENESIS, expected_chain, split_chain
from twinlog._store import LogStore
from twinlog.entry import decode_line, parse_key

__all__ = ["WITNESS_FIELD", "Break", "Walk", "Witness", "check_witnesses", "walk", "witnesses_in"]

#: The field of a witness entry: ``{"origin", "seq", "chain"}`` of the peer's head.
WITNESS_FIELD = "witness"
_WITNESS_MARK = b'"witness":{'
_TAIL = 80  # bytes before where a walk ended, that must still be there to resume from it


@dataclasses.dataclass(frozen=True)
class Break:
    """One place where a log is not what its chain, its seqs or a witness says."""

    node: str  # whose log
    file: str
    offset: int  # of the line's first byte in ``file``
    id: str  # the entry's id ("" when the line is not an entry)
    kind: str  # link, gap, order, duplicate, unchained, unreadable, witness, truncated
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = f"{self.node}:{self.file}@{self.offset}"
        return f"{self.kind} at {self.id or '(no id)'} ({where}): {self.detail}"


@dataclasses.dataclass(frozen=True)
class Witness:
    """A witness entry: ``by`` (its id) saw ``origin``'s log end at ``seq`` with ``chain``."""

    by: str
    origin: str
    seq: int
    chain: str


@dataclasses.dataclass
class Walk:
    """What one walk over one node's log found."""

    node: str
    breaks: list[Break] = dataclasses.field(default_factory=list)
    #: Per origin, the last seq and its chain (None: unchained).
    last: dict[str, tuple[int, bytes | None]] = dataclasses.field(default_factory=dict)
    #: Per origin, the highest seq of the unchained prefix (entries from before the chain).
    unchained: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The chain (hex) found at each witnessed id asked for (``wanted``), and where.
    found: dict[tuple[str, int], tuple[str, str, int]] = dataclasses.field(default_factory=dict)
    lines: int = 0
    end: tuple[str, int] = ("", 0)  # the last file walked and its size walked
    #: Where this walk ended, for the next to start from (``resume``): each file's inode and
    #: size walked, each origin's last seq and chain.
    verified: dict[str, Any] = dataclasses.field(default_factory=lambda: {"files": []})


def walk(
    store: LogStore,
    files: list[tuple[str, int | None]],
    node: str,
    wanted: Iterable[tuple[str, int]] = (),
    resume: dict[str, Any] | None = None,
) -> Walk:
    """Check every line of ``files`` (in log order) on ``store``, ``node``'s directory; from
    where ``resume`` (a :attr:`Walk.verified` of an earlier walk without a break) ended, when
    it still describes these files (each file keeps its inode through a rotation)."""
    result = Walk(node)
    want = set(wanted)
    stats = [store.ops.stat(name) or (0, 0) for name, _ in files]
    inodes = [ino for _size, ino in stats]
    ends = [end for _name, end in files]
    sizes = [size if end is None else end for end, (size, _ino) in zip(ends, stats, strict=True)]
    starts = _resume(result, resume, store, [name for name, _ in files], (inodes, sizes))
    for (name, end), start in zip(files, starts, strict=True):
        offset = start
        for block in store.iter_blocks(name, start, end):
            for line in block.splitlines(keepends=True):
                _check_line(result, want, name, offset, line)
                offset += len(line)
        result.end = (name, offset)
        tail = store.ops.read(name, max(0, offset - _TAIL), min(offset, _TAIL)).hex()
        result.verified["files"].append([inodes[len(result.verified["files"])], offset, tail])
    result.verified["last"] = {
        o: [seq, None if chain is None else chain.hex()] for o, (seq, chain) in result.last.items()
    }
    result.verified["unchained"] = dict(result.unchained)
    for origin, seq in want - set(result.found):
        held = result.last.get(origin, (0, None))[0]
        found = store.line_of(origin, seq) if seq <= held else None
        link = split_chain(found) if found is not None else None
        if link is not None:  # in the part verified before: found, not placed
            result.found[(origin, seq)] = (link[1].hex(), "(verified before; --full places it)", -1)
    return result


def _resume(
    result: Walk,
    resume: dict[str, Any] | None,
    store: LogStore,
    names: list[str],
    files: tuple[list[int], list[int]],
) -> list[int]:
    """Where to start in each file: past what ``resume`` verified, if each file is still the
    one verified (its inode, at least its size, the same last bytes before where it ended);
    otherwise (rotated away, rolled back, repaired, rewritten) from the start."""
    inodes, sizes = files
    starts = [0] * len(names)
    if not resume:
        return starts
    try:
        verified = [
            (int(ino), int(size), bytes.fromhex(tail)) for ino, size, tail in resume["files"]
        ]
        last = {
            str(o): (int(v[0]), None if v[1] is None else bytes.fromhex(v[1]))
            for o, v in resume["last"].items()
        }
        unchained = {str(o): int(s) for o, s in resume.get("unchained", {}).items()}
    except (KeyError, TypeError, ValueError):
        return starts
    if len(verified) > len(names) or [v[0] for v in verified] != inodes[: len(verified)]:
        return starts
    for i, (_ino, size, tail) in enumerate(verified):
        if sizes[i] < size or store.ops.read(names[i], size - len(tail), len(tail)) != tail:
            return [0] * len(names)
        starts[i] = size
    result.last, result.unchained = last, unchained
    return starts


def witnesses_in(store: LogStore, files: list[tuple[str, int | None]]) -> list[Witness]:
    """The witness entries in ``files`` (a substring search per block: cheap)."""
    found: list[Witness] = []
    for name, end in files:
        for block in store.iter_blocks(name, 0, end):
            if _WITNESS_MARK not in block:
                continue
            for line in block.splitlines(keepends=True):
                if _WITNESS_MARK in line:
                    witness = _witness_of(line)
                    if witness is not None:
                        found.append(witness)
    return found


def _check_line(result: Walk, want: set[tuple[str, int]], name: str, at: int, line: bytes) -> None:
    result.lines += 1
    key = parse_key(line)
    if key is None:
        result.breaks.append(Break(result.node, name, at, "", "unreadable", "not an entry"))
        return
    origin, seq, _ts = key
    entry_id = f"{origin}:{seq}"
    prev_seq, prev_chain = result.last.get(origin, (0, None))

    def broke(kind: str, detail: str) -> None:
        result.breaks.append(Break(result.node, name, at, entry_id, kind, detail))

    if seq <= prev_seq:
        kind = "duplicate" if seq == prev_seq else "order"
        broke(kind, f"after {origin}:{prev_seq}: seqs of an origin only go up, by one")
        return
    gap = prev_seq > 0 and seq != prev_seq + 1
    if gap:
        broke("gap", f"follows {origin}:{prev_seq}: {seq - prev_seq - 1} entries missing")
    sealed = split_chain(line)
    if sealed is None:
        if prev_chain is not None:
            broke("unchained", "a line without a chain after chained ones")
        else:
            result.unchained[origin] = seq
        result.last[origin] = (seq, None)
        return
    body, chain = sealed
    # After a gap, or at the start of what is kept (older segments expired), the link to
    # the entry before cannot be checked: the chain goes on from this line.
    checkable = not gap and (prev_seq > 0 or seq == 1)
    if checkable and expected_chain(prev_chain or GENESIS, body) != chain:
        broke("link", "its chain does not match its content and the entry before it")
    result.last[origin] = (seq, chain)
    if (origin, seq) in want:
        result.found[(origin, seq)] = (chain.hex(), name, at)


def _witness_of(line: bytes) -> Witness | None:
    entry = decode_line(line)
    seen = entry.fields.get(WITNESS_FIELD) if entry is not None else None
    if entry is None or not isinstance(seen, dict):
        return None
    try:
        return Witness(entry.id, str(seen["origin"]), int(seen["seq"]), str(seen["chain"]))
    except (KeyError, TypeError, ValueError):
        return None


def check_witnesses(walked: Walk, witnesses: Iterable[Witness]) -> None:
    """Each witness against ``walked`` (a walk asked for the witnessed ids): the line must be
    there, with the witnessed chain; a break otherwise, on the walked node."""
    for witness in witnesses:
        witnessed_id = f"{witness.origin}:{witness.seq}"
        found = walked.found.get((witness.origin, witness.seq))
        held = walked.last.get(witness.origin, (0, None))[0]
        if found is None and held < witness.seq:
            name, at = walked.end
            detail = f"{witness.by} saw {witnessed_id}; this log's {witness.origin} ends at {held}"
            walked.breaks.append(Break(walked.node, name, at, witnessed_id, "truncated", detail))
        elif found is not None and found[0] != witness.chain:
            detail = (
                f"{witness.by} saw chain {witness.chain[:16]}..., this log has {found[0][:16]}...:"
                " rewritten after it was witnessed"
            )
            walked.breaks.append(
                Break(walked.node, found[1], found[2], witnessed_id, "witness", detail)
            )
