"""A Jepsen-style history checker for twinlog on a FaultFS pair (issue 5).

A run (:func:`run_history`) sets up two nodes ``a`` and ``b`` whose ``peer_dir`` is a FaultFS mount
of the other node's ``log_dir``, starts writer processes on both nodes (``history_writer.py``,
which record every acknowledged entry with its start and end time; each writer, by the seeded
draw, calls ``write()``, calls ``write_many()`` with batches of 1 to 50, or is a ``twinlog write
-`` command fed bursts of lines on stdin), and lets a seeded *nemesis*
flip each peer mount between normal, hang (everything or only some requests), EIO, ETIMEDOUT,
slow, ENOSPC and unmounted, while it SIGKILLs writers at random moments and arms new writers
with failpoints (``TWINLOG_FAILPOINTS``) so that every point in ``twinlog._failpoints.POINTS`` is
hit; points still unreached after ``duration`` are then driven on purpose (conflicts repaired,
every writer armed with one of them, the link cut and healed in turn). Then it heals
everything, runs one ``reconcile()`` per node and checks (:func:`check_pair`):

* every acknowledged entry is in each node's log (active log plus rotated segments) exactly once,
  with the message its writer wrote; no entry at all is there twice, under one id or under two
  (every message is written by one call: an unacknowledged entry is there at most once);
* no torn or unparsable line in any log file;
* in every log, each origin's entries appear in sequence order without gaps; each writer's
  acknowledged entries have increasing sequence numbers, the entries of one ``write_many()``
  consecutive ones, and an entry acknowledged before another's call on the same node started has
  the smaller sequence number (real-time order);
* both logs hold the same entries, ``read()`` is identical on both nodes, ``verify().in_sync``;
* ``verify(deep=True)`` finds no break in either node's hash chains or witnesses;
* an unmounted peer mount point never received a file (it is a plain local directory then).

With ``disks`` on, the nemesis also takes a node's disk: it stops the node's writers, wipes its
log directory (a replaced disk) or restores a copy taken earlier (a snapshot rollback), and
sometimes cuts the pair right after, so the node writes new entries under ids the peer holds
(a history conflict). At the end, a node whose history conflicts is repaired
(``TwinLog.repair``), and the checker also requires: never two different entries under one id,
in any log or across both, and every acknowledged entry present under its id or, repaired,
under the entry that replaced it (``replaces``). Real-time order is checked within each of a
node's lives (between two disk events).

Everything random comes from one seed, printed at the start and stored in the report: the same
seed replays the same schedule of faults, kills and failpoints (timing on a loaded machine still
differs, so a failure found by a seed is likely, not certain, to come back with it).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from faultfs import FaultFS, FaultFSError, Mode
from pairlib import Pair
from twinlog import Config, LockTimeoutError, TwinLog
from twinlog._failpoints import POINTS
from twinlog._fileops import DirOps

__all__ = [
    "WRITER_KINDS",
    "CheckResult",
    "HistoryConfig",
    "HistoryReport",
    "Nemesis",
    "WriteOp",
    "check_pair",
    "count_lock_wait_threads",
    "count_workers",
    "describe_workers",
    "fault_pair",
    "new_tag",
    "parse_writer_output",
    "percentile",
    "run_history",
    "wait_for_no_workers",
    "writer_env",
]

WRITER = Path(__file__).with_name("history_writer.py")
#: How a writer writes (``history_writer.py``): ``write()``, ``write_many()``, ``twinlog write -``.
WRITER_KINDS = ("write", "write_many", "stdin")
NODES = ("a", "b")
WORKER_MARK = "twinlog._worker"
TAG_ENV = "TWINLOG_HISTORY_TAG"  # marks the processes (writers, their workers) of one run

Log = Callable[[str], None]
_EVERY_WRITE = frozenset({"after_lock", "after_local_append", "after_push_append"})
#: Reached by a repair process only, never by a writer (tests/test_history_crash.py).
REPAIR_POINTS = tuple(p for p in POINTS if p.startswith("repair_"))
#: Reached by writers only after the nemesis took a node's disk.
DISK_POINTS = ("after_recover", "after_conflict_record")
WRITER_POINTS = tuple(p for p in POINTS if p not in REPAIR_POINTS)


# -- the history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOp:
    """One acknowledged entry: which writer, which entry, when (CLOCK_MONOTONIC)."""

    writer: str
    node: str
    id: str
    i: int
    start: float
    end: float
    lock_waits: int = 0
    one_trip: bool = False  # its own commit reached the peer in one round trip
    batch: int | None = None  # write_many: the writer's call that acknowledged it (one commit)

    @property
    def seq(self) -> int:
        return int(self.id.rsplit(":", 1)[1])

    @property
    def msg(self) -> str:
        return f"{self.writer}-{self.i}"

    @property
    def latency(self) -> float:
        return self.end - self.start


def parse_writer_output(writer: str, node: str, text: str) -> tuple[list[WriteOp], list[str]]:
    """The acknowledged entries and the error lines of one ``history_writer.py`` run."""
    acks: list[WriteOp] = []
    errors: list[str] = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # never acknowledged as far as the history is concerned
        parts = line.split()
        if parts and parts[0] == "ack" and len(parts) in (7, 8):
            _, id_, i, start, end, waits, trip, *batch = parts
            acks.append(
                WriteOp(
                    writer,
                    node,
                    id_,
                    int(i),
                    float(start),
                    float(end),
                    int(waits),
                    trip == "1",
                    int(batch[0]) if batch else None,
                )
            )
        elif parts and parts[0] == "err":
            errors.append(f"{writer}: {line.strip()}")
    return acks, errors


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


# -- the checker ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """What :func:`check_pair` found; ``ok`` when ``problems`` is empty."""

    acked: int = 0
    entries: dict[str, int] = field(default_factory=dict)  # lines per node's log files
    unacked_present: int = 0  # entries in the logs that no writer saw acknowledged
    lost: dict[str, list[str]] = field(default_factory=dict)
    duplicated: dict[str, list[str]] = field(default_factory=dict)
    torn: dict[str, list[str]] = field(default_factory=dict)
    #: acknowledged entries found re-logged by a repair (under a new id that ``replaces`` it)
    repaired: dict[str, int] = field(default_factory=dict)
    conflicting: int = 0  # ids under which the two logs hold different entries
    #: what verify(deep=True) found broken in the hash chains and witnesses, per node
    chain_breaks: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def lost_count(self) -> int:
        return len({i for ids in self.lost.values() for i in ids})

    @property
    def duplicated_count(self) -> int:
        return len({i for ids in self.duplicated.values() for i in ids})


def log_files(log_dir: Path) -> list[Path]:
    """Rotated segments oldest first, then the active log (those that exist)."""
    segments = []
    for path in log_dir.glob("twinlog.log.*"):
        suffix = path.name.rsplit(".", 1)[1]
        if suffix.isdigit():
            segments.append((int(suffix), path))
    files = [p for _, p in sorted(segments)]
    active = log_dir / "twinlog.log"
    if active.exists():
        files.append(active)
    return files


@dataclass
class _NodeLog:
    ids: list[str] = field(default_factory=list)  # in file order
    msgs: dict[str, str] = field(default_factory=dict)
    lines: dict[str, bytes] = field(default_factory=dict)
    replaced: dict[str, list[str]] = field(default_factory=dict)  # old id: messages re-logged
    relogged: set[str] = field(default_factory=set)  # ids of entries a repair re-logged
    by_msg: dict[str, set[str]] = field(default_factory=dict)  # msg: ids, re-logged ones left out
    torn: list[str] = field(default_factory=list)


def _read_node_log(log_dir: Path) -> _NodeLog:
    out = _NodeLog()
    for path in log_files(log_dir):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            out.torn.append(f"{path.name}: torn last line {data[-80:]!r}")
        for number, raw in enumerate(data.splitlines(), 1):
            try:
                doc = json.loads(raw)
                id_, node, seq, msg = doc["id"], doc["node"], doc["seq"], doc["msg"]
                if id_ != f"{node}:{seq}":
                    raise ValueError("id does not match node and seq")
            except (ValueError, KeyError, TypeError) as exc:
                out.torn.append(f"{path.name}:{number}: {exc}: {raw[:80]!r}")
                continue
            out.ids.append(id_)
            out.msgs[id_] = msg
            out.lines.setdefault(id_, raw)
            if isinstance(doc.get("replaces"), str):
                out.replaced.setdefault(doc["replaces"], []).append(msg)
                out.relogged.add(id_)
            else:
                out.by_msg.setdefault(msg, set()).add(id_)
    return out


def _realtime_violations(ops: list[WriteOp]) -> list[str]:
    """Writes of one node: if X was acknowledged before Y started, X must have the lower seq."""
    by_end = sorted(ops, key=lambda op: op.end)
    highest: WriteOp | None = None
    found: list[str] = []
    j = 0
    for op in sorted(ops, key=lambda op: op.start):
        while j < len(by_end) and by_end[j].end < op.start:
            if highest is None or by_end[j].seq > highest.seq:
                highest = by_end[j]
            j += 1
        if highest is not None and highest.seq >= op.seq:
            found.append(f"{highest.id} (acked {highest.end:.3f}) before {op.id} ({op.start:.3f})")
    return found


def check_pair(
    pair: Pair,
    acks: list[WriteOp],
    configs: dict[str, Config],
    lives: dict[str, list[float]] | None = None,
) -> CheckResult:
    """Check the invariants of the module docstring on a healed, reconciled pair. ``lives``:
    when the nemesis took each node's disk (its writers were stopped then)."""
    result = CheckResult(acked=len(acks))
    logs = {node: _read_node_log(pair.log_dir(node)) for node in NODES}
    acked_ids = {op.id for op in acks}
    # An id is acknowledged twice only across a lost disk: then one of them was repaired.
    for node, log in logs.items():
        # By id and message: an id acknowledged twice is two writes.
        present = {(op.id, op.msg) for op in acks if log.msgs.get(op.id) == op.msg}
        repaired = {
            (op.id, op.msg)
            for op in acks
            if (op.id, op.msg) not in present and op.msg in log.replaced.get(op.id, ())
        }
        result.repaired[node] = len(repaired)
        accounted = present | repaired
        lost = {op.id for op in acks if (op.id, op.msg) not in accounted}
        result.lost[node] = sorted(lost)
    # The same id acknowledged twice (only across a lost disk) leaves one of the two lost
    # above unless a repair re-logged it.
    for node, log in logs.items():
        result.entries[node] = len(log.ids)
        counts = collections.Counter(log.ids)
        # A message is written by one call only: under two ids, a write (or a batch) got in twice.
        twice = {i for ids in log.by_msg.values() if len(ids) > 1 for i in ids}
        result.duplicated[node] = sorted({i for i, n in counts.items() if n > 1} | twice)
        result.torn[node] = log.torn
        if result.lost[node]:
            result.problems.append(
                f"{len(result.lost[node])} acknowledged entries missing from {node}'s log: "
                f"{result.lost[node][:10]}"
            )
        if result.duplicated[node]:
            result.problems.append(
                f"{len(result.duplicated[node])} entries more than once in {node}'s log: "
                f"{result.duplicated[node][:10]}"
            )
        if twice:
            result.problems.append(
                f"{len(twice)} ids in {node}'s log share a message with another id: "
                f"{sorted(twice)[:10]}"
            )
        if log.torn:
            result.problems.append(f"torn or bad lines in {node}'s log: {log.torn[:5]}")
        for origin in NODES:
            seqs = [int(i.rsplit(":", 1)[1]) for i in log.ids if i.startswith(origin + ":")]
            if seqs != list(range(1, len(seqs) + 1)):
                bad = next(
                    (k for k, s in enumerate(seqs) if s != k + 1), len(seqs)
                )  # first misplaced
                result.problems.append(
                    f"{origin}'s entries in {node}'s log out of order or gapped at position "
                    f"{bad}: {seqs[max(0, bad - 3) : bad + 3]}"
                )
    different = [i for i, line in logs["a"].lines.items() if logs["b"].lines.get(i, line) != line]
    result.conflicting = len(different)
    if different:
        result.problems.append(f"different entries under one id on a and b: {different[:10]}")
    if set(logs["a"].ids) != set(logs["b"].ids):
        only_a = sorted(set(logs["a"].ids) - set(logs["b"].ids))
        only_b = sorted(set(logs["b"].ids) - set(logs["a"].ids))
        result.problems.append(f"logs differ: only in a {only_a[:10]}, only in b {only_b[:10]}")
    result.unacked_present = len(set(logs["a"].ids) - acked_ids - logs["a"].relogged)
    by_writer: dict[str, list[WriteOp]] = collections.defaultdict(list)
    by_node: dict[str, list[WriteOp]] = collections.defaultdict(list)
    for op in acks:
        by_writer[op.writer].append(op)
        by_node[op.node].append(op)
        if not op.id.startswith(op.node + ":"):
            result.problems.append(f"writer {op.writer} on {op.node} got id {op.id}")
    by_batch: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
    for writer, ops in by_writer.items():
        seqs = [op.seq for op in ops]
        if any(x >= y for x, y in itertools.pairwise(seqs)):
            result.problems.append(f"writer {writer}'s acknowledged seqs not increasing")
        for op in ops:
            if op.batch is not None:
                by_batch[writer, op.batch].append(op.seq)
    for (writer, batch), seqs in by_batch.items():
        # One write_many() is one commit: its ids in order, without gaps.
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            result.problems.append(f"writer {writer}'s batch {batch} got seqs {seqs[:10]}")
    for node, ops in by_node.items():
        violations = []
        bounds = [*(lives or {}).get(node, []), float("inf")]
        for low, high in itertools.pairwise([float("-inf"), *bounds]):
            violations += _realtime_violations([op for op in ops if low <= op.start < high])
        if violations:
            result.problems.append(
                f"{len(violations)} real-time order violations on {node}: {violations[:3]}"
            )
    views: dict[str, list[dict[str, Any]]] = {}
    for node in NODES:
        with TwinLog(configs[node]) as twin:
            views[node] = [e.to_dict() for e in twin.read()]
            verdict = twin.verify(deep=True)
            result.chain_breaks[node] = len(verdict.broken)
            if verdict.broken:
                found = [str(b) for b in verdict.broken[:5]]
                result.problems.append(f"verify(deep=True) on {node}: chain breaks {found}")
            if not verdict.in_sync:
                result.problems.append(f"verify() on {node} is not in sync: {str(verdict)[:600]}")
    if views["a"] != views["b"]:
        first = next(
            (k for k, (x, y) in enumerate(zip(views["a"], views["b"], strict=False)) if x != y),
            min(len(views["a"]), len(views["b"])),
        )
        result.problems.append(
            f"read() differs between a ({len(views['a'])}) and b ({len(views['b'])}) "
            f"from position {first}"
        )
    for node in NODES:
        if len(views[node]) != len(logs[node].ids):
            result.problems.append(
                f"read() on {node} gives {len(views[node])} entries, its log has "
                f"{len(logs[node].ids)}"
            )
    return result


# -- processes and threads --------------------------------------------------------------------


def count_workers(tag: str) -> int:
    """Live (non-zombie) ``twinlog._worker`` processes started under the run tag ``tag``.

    Workers inherit their writer's environment, and so :data:`TAG_ENV`: this counts the workers
    of one run (orphans of killed writers included), not those of tests running next to it.
    """
    count = 0
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not any(WORKER_MARK in arg for arg in proc.info["cmdline"] or ()):
                continue
            if proc.environ().get(TAG_ENV) == tag:
                count += 1
    return count


def describe_workers(tag: str) -> list[str]:
    """pid, parent, state, kernel wait channel and kernel stack of a run's live workers."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "ppid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if not any(WORKER_MARK in arg for arg in proc.info["cmdline"] or ()):
                continue
            if proc.environ().get(TAG_ENV) != tag:
                continue
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text(errors="replace")
            try:
                stack = Path(f"/proc/{proc.pid}/stack").read_text(errors="replace")
            except OSError:
                stack = "?"
            found.append(
                f"pid {proc.pid} ppid {proc.info['ppid']} {proc.info['status']} "
                f"wchan {wchan} stack {' | '.join(stack.split()[:12])}"
            )
    return found


def new_tag() -> str:
    return f"{os.getpid()}-{time.monotonic_ns()}"


def count_lock_wait_threads() -> int:
    """Threads of this process named ``twinlog-lock-wait``."""
    return sum(1 for t in threading.enumerate() if t.name == "twinlog-lock-wait")


def wait_for_no_workers(tag: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (left := count_workers(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# -- the pair on FaultFS ----------------------------------------------------------------------


class Nemesis:
    """The two FaultFS peer mounts of a pair: ``mounts[n]`` is node n's ``peer_dir``."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.mounts: dict[str, FaultFS | None] = dict.fromkeys(NODES)
        self.modes: dict[str, str] = dict.fromkeys(NODES, "unmounted")
        self.faults: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []

    def mount(self, node: str) -> None:
        if self.mounts[node] is not None:
            return
        mountpoint = self.pair.peer_dir(node)
        leftovers = sorted(os.listdir(mountpoint)) if mountpoint.exists() else []
        if leftovers:
            self.problems.append(
                f"files written into {node}'s unmounted peer mount point: {leftovers}"
            )
        fs = FaultFS(self.pair.log_dir(self.pair.other(node)), mountpoint)
        fs.start()
        self.mounts[node] = fs
        self.modes[node] = "normal"

    def unmount(self, node: str) -> None:
        fs, self.mounts[node] = self.mounts[node], None
        if fs is not None:
            fs.stop(raise_errors=False)
        self.modes[node] = "unmounted"

    def set_mode(
        self, node: str, mode: Mode, *, delay: float = 0.05, ops: Iterable[str] | None = None
    ) -> None:
        self.mount(node)
        fs = self.mounts[node]
        assert fs is not None
        fs.set_mode(mode, delay, ops=None if ops is None else set(ops))
        label = mode if ops is None else f"{mode}[{'+'.join(sorted(ops))}]"
        self.modes[node] = label

    def heal(self) -> None:
        for node in NODES:
            fs = self.mounts[node]
            if fs is None:
                self.mount(node)
            else:
                fs.release()
                self.modes[node] = "normal"

    def check_servers(self) -> None:
        for node, fs in self.mounts.items():
            if fs is not None and fs._proc is not None and fs._proc.poll() is not None:
                self.problems.append(f"FaultFS server of {node} died: {fs.server_log()[-500:]}")
                self.mounts[node] = None
                with contextlib.suppress(FaultFSError):
                    fs.stop(raise_errors=False)

    def close(self) -> None:
        for node in NODES:
            self.unmount(node)


@contextlib.contextmanager
def fault_pair(root: Path, **options: Any) -> Iterator[tuple[Pair, Nemesis]]:
    """A pair under ``root`` with both peer mounts on FaultFS (normal mode); always torn down."""
    pair = Pair(root, options=dict(options))
    for node in NODES:
        TwinLog(pair.config(node, require_mount=False)).close()  # the identity markers
    nemesis = Nemesis(pair)
    try:
        nemesis.heal()
        yield pair, nemesis
    finally:
        nemesis.close()
        pair.close()


# -- writers ----------------------------------------------------------------------------------


@dataclass
class _Writer:
    name: str
    node: str
    proc: subprocess.Popen[bytes]
    out: Path
    failpoint: str | None
    started: float
    kind: str = "write"
    killed: bool = False


@dataclass
class HistoryConfig:
    """What a run does. Every random choice is drawn from ``seed``."""

    seed: int
    duration: float = 60.0
    writers_per_node: int = 2
    pace: float = 0.002  # seconds a writer sleeps between writes
    step: tuple[float, float] = (0.2, 1.2)  # seconds between nemesis steps
    fault_time: tuple[float, float] = (0.3, 3.0)  # how long one fault lasts, seconds
    slow_delay: tuple[float, float] = (0.005, 0.05)  # per FUSE request in "slow" mode
    max_hang: float = 3.0  # hangs last at most this long (bounds how long a lock is held)
    arm_probability: float = 0.5  # a new writer gets a failpoint
    armed_lifetime: float = 10.0  # an armed writer that never reached its point is then killed
    cover_failpoints: bool = True  # after ``duration``, go on (<= coverage_grace) until all hit
    coverage_grace: float = 60.0
    probe_timeout: float = 0.3
    io_timeout: float = 0.6
    lock_timeout: float = 20.0
    rotate_bytes: int = 8192
    failpoints: tuple[str, ...] = WRITER_POINTS  # the points writers are armed with
    disks: bool = True  # the nemesis also wipes or rolls back a node's directory
    writer_kinds: tuple[str, ...] = WRITER_KINDS  # each new writer is one of these, drawn


@dataclass
class HistoryReport:
    """Everything a run did and found."""

    seed: int
    elapsed: float = 0.0
    writes: int = 0
    write_errors: list[str] = field(default_factory=list)
    writers: int = 0
    #: per writer kind: processes started, killed at a failpoint, entries acknowledged, and the
    #: latency of each acknowledged call (write_many: a batch; stdin: a line, fed to its id read)
    kind_writers: collections.Counter[str] = field(default_factory=collections.Counter)
    kind_failpoint_crashes: collections.Counter[str] = field(default_factory=collections.Counter)
    kind_entries: collections.Counter[str] = field(default_factory=collections.Counter)
    kind_latencies: dict[str, list[float]] = field(default_factory=dict)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    random_kills: int = 0
    failpoint_crashes: collections.Counter[str] = field(default_factory=collections.Counter)
    armed_not_reached: int = 0
    writer_failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    max_workers: int = 0
    max_lock_wait_threads: int = 0
    one_trip_writes: int = 0
    disk_events: collections.Counter[str] = field(default_factory=collections.Counter)
    repairs: list[dict[str, Any]] = field(default_factory=list)
    workers_after_heal: int = 0
    reconcile: dict[str, dict[str, Any]] = field(default_factory=dict)
    check: CheckResult = field(default_factory=CheckResult)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.all_problems

    @property
    def all_problems(self) -> list[str]:
        return self.problems + self.check.problems

    failpoints: tuple[str, ...] = WRITER_POINTS

    @property
    def uncovered_failpoints(self) -> list[str]:
        return [p for p in self.failpoints if not self.failpoint_crashes[p]]

    def latency_ms(self) -> dict[str, float]:
        return {
            name: 1000 * percentile(self.latencies, pct)
            for name, pct in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
        } | {"max": 1000 * max(self.latencies, default=0.0)}

    def summary(self) -> str:
        lat = self.latency_ms()
        return (
            f"seed={self.seed} elapsed={self.elapsed:.0f}s writes={self.writes} "
            f"writers={self.writers} by_kind={dict(self.kind_writers)} "
            f"entries_by_kind={dict(self.kind_entries)} faults={sum(self.faults.values())} "
            f"kills={self.random_kills} failpoint_crashes={sum(self.failpoint_crashes.values())} "
            f"lost={self.check.lost_count} duplicated={self.check.duplicated_count} "
            f"conflicting={self.check.conflicting} "
            f"chain_breaks={sum(self.check.chain_breaks.values())} "
            f"disks={dict(self.disk_events)} "
            f"repairs={len(self.repairs)} "
            f"p50={lat['p50']:.1f}ms p99={lat['p99']:.1f}ms max={lat['max']:.1f}ms "
            f"problems={len(self.all_problems)}"
        )

    def _kind_row(self, kind: str) -> str:
        lat = self.kind_latencies.get(kind, [])
        cells = [
            kind,
            self.kind_writers[kind],
            self.kind_failpoint_crashes[kind],
            self.kind_entries[kind],
            len(lat),
            *(f"{1000 * percentile(lat, pct):.1f}" for pct in (50, 99)),
            f"{1000 * max(lat, default=0.0):.1f}",
        ]
        return "| " + " | ".join(map(str, cells)) + " |"

    def to_markdown(self) -> str:
        lat = self.latency_ms()
        rows = [
            ("seed", str(self.seed)),
            ("run time", f"{self.elapsed:.0f} s"),
            ("acknowledged entries (all writer kinds)", str(self.writes)),
            ("entries in each log", ", ".join(f"{n}: {c}" for n, c in self.check.entries.items())),
            ("entries present but never acknowledged", str(self.check.unacked_present)),
            ("**lost**", str(self.check.lost_count)),
            ("**duplicated**", str(self.check.duplicated_count)),
            ("**ids with two different entries**", str(self.check.conflicting)),
            (
                "**hash chain breaks (verify --deep, both nodes)**",
                str(sum(self.check.chain_breaks.values())),
            ),
            (
                "disks taken (wiped, rolled back; snapshots taken)",
                f"{self.disk_events['wipe']}, {self.disk_events['rollback']}; "
                f"{self.disk_events['snapshot']}",
            ),
            (
                "history conflicts repaired (acknowledged entries found re-logged)",
                f"{len(self.repairs)} ({max(self.check.repaired.values(), default=0)})",
            ),
            ("torn lines", str(sum(len(t) for t in self.check.torn.values()))),
            ("writer errors (a call that raised)", str(len(self.write_errors))),
            (
                "write() and write_many() calls committed in one round trip to the peer by "
                "their own writer",
                str(self.one_trip_writes),
            ),
            ("writer processes", str(self.writers)),
            ("faults injected", str(sum(self.faults.values()))),
            ("writers SIGKILLed at random moments", str(self.random_kills)),
            ("writers killed at a failpoint", str(sum(self.failpoint_crashes.values()))),
            ("failpoints never reached", ", ".join(self.uncovered_failpoints) or "none"),
            ("max twinlog._worker processes at once", str(self.max_workers)),
            ("max twinlog-lock-wait threads in a writer", str(self.max_lock_wait_threads)),
            ("invariant violations", str(len(self.all_problems))),
        ]
        lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        lines += [
            "",
            "By writer kind (latency per acknowledged call in ms, faults included; a write_many()"
            " call is a batch of 1-50, a stdin call one line, from fed to its id read):",
            "",
            "| writer kind | processes | killed at a failpoint | entries acknowledged | calls "
            "| p50 | p99 | max |",
            "|---|---|---|---|---|---|---|---|",
            *(self._kind_row(kind) for kind in WRITER_KINDS if self.kind_writers[kind]),
            "",
            "write() latency (ms, every acknowledged write() call, faults included):",
            "",
            "| p50 | p90 | p99 | p99.9 | max |",
            "|---|---|---|---|---|",
            "| "
            + " | ".join(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            + " |",
            "",
            "Faults injected, by kind (per peer mount):",
            "",
            "| fault | count |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in sorted(self.faults.items())),
            "",
            "Crashes at failpoints:",
            "",
            "| failpoint | crashes |",
            "|---|---|",
            *(f"| {p} | {self.failpoint_crashes[p]} |" for p in POINTS),
        ]
        if self.all_problems:
            lines += ["", "Problems:", "", *(f"- {p}" for p in self.all_problems[:50])]
        return "\n".join(lines) + "\n"


def writer_env(tag: str, failpoint: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[TAG_ENV] = tag
    env.pop("TWINLOG_FAILPOINTS", None)
    if failpoint:
        env["TWINLOG_FAILPOINTS"] = failpoint
    return env


class _Run:
    def __init__(
        self, cfg: HistoryConfig, pair: Pair, nemesis: Nemesis, workdir: Path, log: Log
    ) -> None:
        self.cfg = cfg
        self.pair = pair
        self.nemesis = nemesis
        self.workdir = workdir
        self.log = log
        self.rng = random.Random(cfg.seed)
        self.tag = new_tag()
        # Only a taken disk leads a writer to these, and only if it makes contact before the
        # peer gives the node its history back: armed when a node starts a new life, not
        # required (tests/test_history_crash.py reaches each of them).
        failpoints = tuple(p for p in cfg.failpoints if p in WRITER_POINTS and p not in DISK_POINTS)
        self.report = HistoryReport(seed=cfg.seed, failpoints=failpoints)
        self.lives: dict[str, list[float]] = {node: [] for node in NODES}
        self.snapshots: dict[str, Path] = {}
        self.configs = {
            node: pair.config(
                node,
                probe_timeout=cfg.probe_timeout,
                io_timeout=cfg.io_timeout,
                lock_timeout=cfg.lock_timeout,
                rotate_bytes=cfg.rotate_bytes,
            )
            for node in NODES
        }
        self.slots: dict[tuple[str, int], _Writer | None] = {
            (node, k): None for node in NODES for k in range(cfg.writers_per_node)
        }
        self.respawn_at: dict[tuple[str, int], float] = {}
        self.finished: list[_Writer] = []
        self.fault_until: dict[str, float] = {}
        self.generation = 0
        self.armed: collections.Counter[str] = collections.Counter()
        self.covering = False  # past ``duration`` with points not yet reached
        self.outcomes = open(workdir / "writers.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        #: what the harness did and when (CLOCK_MONOTONIC, as the writers' records): to line
        #: a stall in the writers' output up with a nemesis step, a kill or a taken disk
        self.events = open(workdir / "events.log", "a", encoding="utf-8")  # noqa: SIM115

    def event(self, text: str) -> None:
        self.events.write(f"{time.monotonic():.3f} {text}\n")
        self.events.flush()

    # -- writers --------------------------------------------------------------------------
    def spawn(self, slot: tuple[str, int]) -> None:
        node, k = slot
        self.generation += 1
        name = f"{node}{k}g{self.generation}"
        failpoint: str | None = None
        new_life = bool(self.lives[node]) and time.monotonic() - self.lives[node][-1] < 1.0
        if new_life and self.rng.random() < 0.5 and not self.covering:
            failpoint = self.rng.choice(DISK_POINTS)
        elif self.covering or self.rng.random() < self.cfg.arm_probability:
            # Points not yet reached first, the least armed of them; then any point.
            uncovered = self.report.uncovered_failpoints
            if uncovered and (self.covering or self.rng.random() < 0.8):
                point = min(uncovered, key=lambda p: (self.armed[p], self.rng.random()))
            else:
                point = self.rng.choice(self.report.failpoints)
            self.armed[point] += 1
            # Points passed on every write: die at one of the first few; the others are rarer.
            nth = self.rng.randint(1, 4) if point in _EVERY_WRITE else 1
            failpoint = f"{point}@{nth}"
        kind = self.rng.choice(self.cfg.writer_kinds)
        out = self.workdir / f"{name}.out"
        with open(out, "wb") as stdout, open(self.workdir / f"{name}.err", "wb") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    os.fspath(WRITER),
                    json.dumps(self.configs[node].to_dict()),
                    name,
                    str(self.cfg.pace),
                    kind,
                    str(self.rng.randrange(1 << 31)),  # its batch sizes
                ],
                stdout=stdout,
                stderr=stderr,
                env=writer_env(self.tag, failpoint),
            )
        self.slots[slot] = _Writer(name, node, proc, out, failpoint, time.monotonic(), kind)
        self.event(f"spawn {name} {kind} {failpoint} pid={proc.pid}")
        self.report.writers += 1
        self.report.kind_writers[kind] += 1

    def reap(self, now: float) -> None:
        for slot, writer in self.slots.items():
            if writer is None:
                if now >= self.respawn_at.get(slot, 0.0):
                    self.spawn(slot)
                continue
            if (
                writer.failpoint
                and not writer.killed
                and now - writer.started > (self.cfg.armed_lifetime)
            ):
                self.kill(writer)
                self.report.armed_not_reached += 1
            code = writer.proc.poll()
            if code is None:
                continue
            self.record(writer, code)
            self.event(f"exit {writer.name} {code} {writer.failpoint}")
            if code == -signal.SIGKILL and not writer.killed:
                if writer.failpoint:
                    self.report.failpoint_crashes[writer.failpoint.split("@")[0]] += 1
                    self.report.kind_failpoint_crashes[writer.kind] += 1
                else:
                    self.report.writer_failures.append(f"{writer.name}: SIGKILL from nowhere")
            elif code != -signal.SIGKILL:
                err = (self.workdir / f"{writer.name}.err").read_text(errors="replace")
                self.report.writer_failures.append(f"{writer.name} exited {code}: {err[-2000:]}")
            self.finished.append(writer)
            self.slots[slot] = None
            self.respawn_at[slot] = now + self.rng.uniform(0.0, 0.3)

    def record(self, writer: _Writer, code: int) -> None:
        outcome = {
            "writer": writer.name,
            "failpoint": writer.failpoint,
            "code": code,
            "killed_by_nemesis": writer.killed,
            "lived": round(time.monotonic() - writer.started, 3),
        }
        self.outcomes.write(json.dumps(outcome) + "\n")
        self.outcomes.flush()

    def kill(self, writer: _Writer) -> None:
        self.event(f"kill {writer.name}")
        writer.killed = True
        with contextlib.suppress(ProcessLookupError):
            writer.proc.kill()

    # -- the nemesis ----------------------------------------------------------------------
    ACTIONS = (
        ("heal", 1),
        ("hang", 2),
        ("hang-some", 2),
        ("eio", 1),
        ("eio-writeback", 1),
        ("etimedout", 1),
        ("slow", 1),
        ("enospc", 1),
        ("unmount", 1),
        ("kill", 4),
    )
    DISK_ACTIONS = (("snapshot", 1), ("wipe", 1), ("rollback", 1))
    HANG_OPS = (
        ("write",),
        ("fsync", "flush"),
        ("setlk", "setlkw"),
        ("open", "create"),
        ("read",),
        ("getattr",),
        ("rename", "unlink"),
    )

    def step(self, now: float) -> None:
        actions = self.ACTIONS + (self.DISK_ACTIONS if self.cfg.disks else ())
        names = [a for a, _ in actions]
        weights = [w for _, w in actions]
        action = self.rng.choices(names, weights)[0]
        node = self.rng.choice(NODES)
        nem = self.nemesis
        self.event(f"step {action} {node}")
        if action in ("snapshot", "wipe", "rollback"):
            self.take_disk(node, action)
            return
        if action == "kill":
            live = [w for w in self.slots.values() if w is not None and not w.killed]
            live = [w for w in live if not w.failpoint] or live
            if live:
                victim = self.rng.choice(live)
                self.kill(victim)
                self.report.random_kills += 1
            return
        if action == "heal":
            nem.heal()
            self.fault_until.clear()
            return
        label = action
        if action == "hang":
            nem.set_mode(node, "hang")
        elif action == "hang-some":
            ops = self.rng.choice(self.HANG_OPS)
            nem.set_mode(node, "hang", ops=ops)
            label = f"hang[{'+'.join(ops)}]"
        elif action == "eio":
            nem.set_mode(node, "eio")
        elif action == "eio-writeback":
            nem.set_mode(node, "eio", ops=("fsync", "flush"))
            label = "eio[fsync+flush]"
        elif action == "etimedout":
            nem.set_mode(node, "etimedout")
        elif action == "slow":
            nem.set_mode(node, "slow", delay=self.rng.uniform(*self.cfg.slow_delay))
        elif action == "enospc":
            nem.set_mode(node, "enospc")
        elif action == "unmount":
            nem.unmount(node)
        self.report.faults[label] += 1
        self.event(f"fault {node} {label}")
        lasts = self.rng.uniform(*self.cfg.fault_time)
        if action.startswith("hang"):
            lasts = min(lasts, self.cfg.max_hang)
        self.fault_until[node] = now + lasts

    def start_covering(self) -> None:
        """Past ``duration`` with points never reached: from now on every writer is armed with
        one of them, so the writers not armed so go. A conflicting history is repaired first:
        nothing of its origin moves until then, and the cache points need things to move."""
        self.covering = True
        uncovered = set(self.report.uncovered_failpoints)
        self.log(f"  covering {sorted(uncovered)}: every new writer armed with one of them")
        self.nemesis.heal()
        self.fault_until.clear()
        self.repair_conflicts()
        for writer in self.slots.values():
            if writer is not None and (writer.failpoint or "@").split("@")[0] not in uncovered:
                self.kill(writer)

    def cover_step(self, now: float) -> None:
        """The cut-and-heal cycle the cache points need: the pair loses its link for a moment
        (its writers cache), then the link comes back and the next commit drains the caches.
        Half the cuts are one-sided; a node's own cache is drained by its own writer only if
        the peer could not pull it first, which takes a cut on both sides."""
        if self.fault_until:
            return  # end_faults heals the cut; the step after next cuts again
        lasts = self.rng.uniform(0.5, 1.5)
        nodes = self.rng.sample(NODES, 2 if self.rng.random() < 0.5 else 1)  # healed in order
        for node in nodes:
            if self.rng.random() < 0.5:
                self.nemesis.unmount(node)
                self.report.faults["cover-unmount"] += 1
            else:
                self.nemesis.set_mode(node, "eio")
                self.report.faults["cover-eio"] += 1
            self.fault_until[node] = now + lasts

    # -- disks ----------------------------------------------------------------------------
    def take_disk(self, node: str, action: str) -> None:
        """``snapshot``: copy the node's directory aside. ``wipe`` (a replaced disk) or
        ``rollback`` (to the copy): stop the node's writers, make sure the peer holds all its
        entries (the promise is about what the pair holds: an entry only on the lost disk is
        lost with it), then empty its directory, or restore the copy, under its lock. Half the
        time the pair is cut right after, so the node writes before it can recover."""
        try:
            self._take_disk(node, action)
            self.event(f"took disk {node} {action}")
        except LockTimeoutError:
            self.event(f"disk not taken {node} {action}: lock busy")
            # Writers queue on the lock too, each for up to lock_timeout: a busy lock is not a
            # finding, only a disk not taken this time.
            self.report.disk_events["lock busy"] += 1
        for slot in self.slots:
            if slot[0] == node and self.slots[slot] is None:
                self.respawn_at[slot] = min(self.respawn_at.get(slot, 0.0), time.monotonic())

    def _take_disk(self, node: str, action: str) -> None:
        log_dir = self.pair.log_dir(node)
        if action == "snapshot" or (action == "rollback" and node not in self.snapshots):
            if (log_dir / "twinlog.conflict").exists():
                return  # a copy taken in a conflict would bring it back after its repair
            copy = self.workdir / f"snapshot-{node}"
            shutil.rmtree(copy, ignore_errors=True)
            # Only this loop ends a hang: one that holds the node's lock through the peer's
            # mount would hold it for as long as we wait.
            self.nemesis.heal()
            self.fault_until.clear()
            with self.locked_dir(node):
                shutil.copytree(log_dir, copy, ignore=shutil.ignore_patterns("twinlog.lock"))
            self.snapshots[node] = copy
            self.report.disk_events["snapshot"] += 1
            return
        self.stop_writers(node)
        if self.settle(node):
            snapshot = self.snapshots.pop(node, None)  # gone if settling repaired the node
            if snapshot is None:
                action = "wipe"
            with self.locked_dir(node):
                for path in log_dir.iterdir():
                    if path.name in ("twinlog.node", "twinlog.lock"):
                        continue  # ``twinlog init`` writes the same marker again
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                if snapshot is not None and action == "rollback":
                    shutil.copytree(snapshot, log_dir, dirs_exist_ok=True)
            self.lives[node].append(time.monotonic())
            self.report.disk_events[action] += 1
            if self.rng.random() < 0.5:
                for side in NODES:
                    self.nemesis.unmount(side)
                    self.fault_until[side] = time.monotonic() + self.rng.uniform(
                        *self.cfg.fault_time
                    )

    def stop_writers(self, node: str) -> None:
        """SIGKILL the node's writers and reap them (they start again when told)."""
        for slot, writer in self.slots.items():
            if writer is None or writer.node != node:
                continue
            self.kill(writer)
            self.record(writer, writer.proc.wait())
            self.finished.append(writer)
            self.slots[slot] = None
            self.respawn_at[slot] = float("inf")

    def settle(self, node: str) -> bool:
        """Heal, repair whatever history conflict is known, and deliver the node's entries to
        its peer. Whether the peer then holds every entry of the node's."""
        self.nemesis.heal()
        self.fault_until.clear()
        for _ in range(10):
            self.event(f"settling {node}")
            self.repair_conflicts()
            with TwinLog(self.configs[node]) as twin:
                twin.reconcile()
                status = twin.status()
            if (
                status["peer_reachable"]
                and not status["conflicts"]
                and status["pending_to_peer"] == 0
                and status["cache_entries"]["local"] == 0
            ):
                return True
            time.sleep(0.2)
        self.report.problems.append(f"could not settle {node} before taking its disk: {status}")
        return False

    def repair_conflicts(self) -> None:
        """``twinlog repair`` on each node whose own history conflicts with its peer's copy."""
        for node in NODES:
            with TwinLog(self.configs[node]) as twin:
                twin.reconcile()  # contact: finds a conflict that is there
                conflicts = [c["origin"] for c in twin.status()["conflicts"]]
                if node not in conflicts:
                    continue
                result = twin.repair()
                self.report.repairs.append(result.to_dict())
                if not result.repaired:
                    self.report.problems.append(f"repair on {node} failed: {result.to_dict()}")
                self.snapshots.pop(node, None)

    @contextlib.contextmanager
    def locked_dir(self, node: str) -> Iterator[None]:
        """The node's directory lock, as its own writers take it (the peer's through NFS wait)."""
        ops = DirOps(os.fspath(self.pair.log_dir(node)), lock_kind="ofd")
        ops.open_dir(node, None, False)
        try:
            self.event(f"locking {node}")
            ops.lock(3 * self.cfg.lock_timeout)  # behind writers that each wait up to lock_timeout
            self.event(f"locked {node}")
            try:
                yield
            finally:
                ops.unlock()
                self.event(f"unlocked {node}")
        finally:
            ops.close()

    def end_faults(self, now: float) -> None:
        """Faults are transient: each ends (back to a normal mount) after its drawn duration."""
        for node, until in list(self.fault_until.items()):
            if now >= until:
                self.event(f"fault over {node}")
                self.nemesis.set_mode(node, "normal")
                del self.fault_until[node]

    # -- the run --------------------------------------------------------------------------
    def run(self) -> HistoryReport:
        cfg, rep = self.cfg, self.report
        start = time.monotonic()
        self.log(f"history: seed={cfg.seed} duration={cfg.duration}s (same seed, same schedule)")
        end = start + cfg.duration
        hard_end = end + (cfg.coverage_grace if cfg.cover_failpoints else 0.0)
        next_step = start + 1.0
        next_note = start + 10.0
        try:
            while True:
                now = time.monotonic()
                if now >= end and (
                    not cfg.cover_failpoints or not rep.uncovered_failpoints or now >= hard_end
                ):
                    break
                uncovered = cfg.cover_failpoints and bool(rep.uncovered_failpoints)
                if uncovered and now >= end and not self.covering:
                    self.start_covering()
                self.reap(now)
                self.end_faults(now)
                self.nemesis.check_servers()
                if now >= next_step:
                    (self.cover_step if self.covering else self.step)(now)
                    next_step = now + self.rng.uniform(*cfg.step)
                    rep.max_workers = max(rep.max_workers, count_workers(self.tag))
                if now >= next_note:
                    next_note = now + 10.0
                    self.log(
                        f"  t={now - start:.0f}s writers={rep.writers} kills={rep.random_kills} "
                        f"failpoints={sum(rep.failpoint_crashes.values())} "
                        f"uncovered={rep.uncovered_failpoints} modes={self.nemesis.modes}"
                    )
                time.sleep(0.02)
        finally:
            self.nemesis.heal()
            for writer in self.slots.values():
                if writer is not None:
                    self.kill(writer)
            for slot, writer in self.slots.items():
                if writer is not None:
                    self.record(writer, writer.proc.wait())
                    self.finished.append(writer)
                    self.slots[slot] = None
            self.outcomes.close()
            self.events.close()
        rep.problems += self.nemesis.problems
        rep.problems += rep.writer_failures
        acks: list[WriteOp] = []
        for writer in self.finished:
            got, errors = parse_writer_output(writer.name, writer.node, writer.out.read_text())
            acks += got
            rep.write_errors += errors
            rep.kind_entries[writer.kind] += len(got)
            # One call per entry, but a batch's entries share theirs (keyed ~batch: below 0).
            calls = list({op.i if op.batch is None else ~op.batch: op for op in got}.values())
            rep.kind_latencies.setdefault(writer.kind, []).extend(op.latency for op in calls)
            if writer.kind == "write":
                rep.latencies += [op.latency for op in calls]
            rep.one_trip_writes += sum(op.one_trip for op in calls)
        rep.writes = len(acks)
        rep.max_lock_wait_threads = max((op.lock_waits for op in acks), default=0)
        if rep.write_errors:
            rep.problems.append(f"{len(rep.write_errors)} writer errors: {rep.write_errors[:5]}")
        rep.workers_after_heal = wait_for_no_workers(self.tag, 10.0)
        if rep.workers_after_heal:
            rep.problems.append(f"{rep.workers_after_heal} peer workers still alive after healing")
        if rep.workers_after_heal:
            rep.problems.append(f"workers alive after healing: {describe_workers(self.tag)}")
        for node in NODES:
            with TwinLog(self.configs[node]) as twin:
                result = twin.reconcile()
                rep.reconcile[node] = result.to_dict()
                if not result.peer_reachable:
                    status = twin.status()
                    rep.problems.append(
                        f"reconcile on {node} after healing: {result.to_dict()}; status: "
                        f"{status['peer_reason']} {status['peer_reason_text']!r}; "
                        f"mounts {self.nemesis.modes}"
                    )
        for node in NODES:  # a failed reconcile: does it come right by itself? (diagnosis)
            for attempt in range(3):
                if rep.reconcile[node]["peer_reachable"]:
                    break
                time.sleep(3.0)
                with TwinLog(self.configs[node]) as twin:
                    rep.reconcile[node] = twin.reconcile().to_dict()
                rep.problems.append(
                    f"reconcile on {node}, retry {attempt + 1} after {3 * (attempt + 1)} s: "
                    f"{rep.reconcile[node]}"
                )
        if self.cfg.disks:
            self.repair_conflicts()
            for node in NODES:
                with TwinLog(self.configs[node]) as twin:
                    twin.reconcile()
        rep.check = check_pair(self.pair, acks, self.configs, self.lives)
        rep.elapsed = time.monotonic() - start
        self.log("history: " + rep.summary())
        return rep


def run_history(root: Path, cfg: HistoryConfig, *, log: Log = print) -> HistoryReport:
    """One seeded run on a fresh FaultFS pair under ``root``; see the module docstring."""
    workdir = root / "history"
    workdir.mkdir(parents=True, exist_ok=True)
    with fault_pair(root / "pair") as (pair, nemesis):
        return _Run(cfg, pair, nemesis, workdir, log).run()
