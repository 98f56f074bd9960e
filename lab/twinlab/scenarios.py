"""twinlog over real NFS in the lab: deploy with the project's playbook, then fault scenarios.

  deploy      ansible/site.yml against lab/run/inventory.ini; `twinlog status` exits 0 on both
  redeploy    the same playbook again: changed=0 expected (tasks that change are listed)
  concurrent  both nodes write N entries at the same time through the mounts
  link_cut    link cut on both NICs, both nodes write, link back; first the reconcile timer alone
              (up to TIMER_WAIT s), then `twinlog reconcile`
  asymmetric  twin-a drops its NFS server's replies to twin-b (ip rule ... blackhole): twin-a
              still reaches twin-b's export, twin-b's mount of twin-a hangs; both write; heal;
              converge by the next write on each node, then reconcile
  frozen_peer twin-b frozen (qemu stop): every write on twin-a returns within probe_timeout +
              io_timeout + margin; p50/p99 of write()
  throughput  on twin-a, time and NFS RPCs by operation per entry: write() and write_many() vs
              a raw lockf-locked dual append+fsync over the same mount; a reconcile draining
              N_DRAIN entries cached while the peer mount was unmounted; read() of the whole log
  dead_peer   twin-b holds the lock of twin-a's log directory through the mount and is killed
              (qemu quit): how long until twin-a's writes proceed; cold boot twin-b, converge

After every scenario: reconcile on both nodes, then every acknowledged entry is exactly once in
both nodes' read() (`twinlog tail -n all --json`), and both read() are identical.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from twinlab.cluster import Lab
from twinlab.paths import GUEST_DIR, RUN_DIR
from twinlab.proof import Check, ProofResults
from twinlab.remote import Remote

ROOT = Path(__file__).resolve().parents[2]
NODES = ("twin-a", "twin-b")
TWINLOG = "runuser -u twinlog -- /opt/twinlog/venv/bin/twinlog"
WRITER_PATH = "/usr/local/bin/twinwriter.py"
WRITER = f"runuser -u twinlog -- /opt/twinlog/venv/bin/python {WRITER_PATH}"
LOCKPROBE = "runuser -u twinlog -- /usr/bin/python3 /usr/local/bin/lockprobe"
LOG_DIR = "/var/lib/twinlog/log"
PEER_DIR = "/var/lib/twinlog/peer"
PROBE_TIMEOUT = 1.0  # the library's defaults; the role leaves them unset
IO_TIMEOUT = 2.0
WRITE_MARGIN = 2.0  # worker kill + restart under TCG
DEAD_PEER_GOAL = 15.0
TIMER_WAIT = float(os.environ.get("TWINLOG_LAB_TIMER_WAIT", "150"))
N_CONCURRENT = int(os.environ.get("TWINLOG_LAB_N", "100"))
N_CUT = 8  # one every 2 s: the cut lasts ~20 s, several probes and back-offs
ASYM_SERVER = "twin-a"  # its NFS server's replies to ASYM_BLOCKED are dropped
ASYM_BLOCKED = "192.168.77.2"
ASYM_RECOVER_WAIT = 180.0
N_BENCH = int(os.environ.get("TWINLOG_LAB_BENCH_N", "100"))
N_BENCH_MANY = int(os.environ.get("TWINLOG_LAB_BENCH_MANY_N", "2000"))
BATCH = 100  # write_many's batch, and the raw append's lines per write
N_DRAIN = int(os.environ.get("TWINLOG_LAB_DRAIN_N", "100000"))
CACHE_BATCH = 1000
RECONCILE_TIMER = "twinlog-reconcile.timer"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


# -- deploy --------------------------------------------------------------------------------------

RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def run_playbook(lab: Lab, log: Path) -> tuple[int, float, dict[str, dict[str, int]], list[str]]:
    """ansible-playbook with the project's playbook; returns rc, seconds, recap, changed tasks."""
    inventory = lab.write_inventory()
    env = dict(
        os.environ,
        ANSIBLE_PIPELINING="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    cmd = [
        ansible_playbook(),
        "-i",
        str(inventory),
        str(ROOT / "ansible/site.yml"),
        "-e",
        f"@{ROOT / 'inventory/group_vars/twinlog.yml'}",
        "-e",
        '{"twinlog_manage_packages": false}',
    ]
    started = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    seconds = round(time.monotonic() - started, 1)
    return (rc, seconds, *parse_playbook_log(log.read_text()))


def ansible_playbook() -> str:
    """The checkout's own (`.ci/setup` installs it into .venv), else the one on PATH."""
    own = ROOT / ".venv/bin/ansible-playbook"
    return str(own) if own.exists() else "ansible-playbook"


def parse_playbook_log(text: str) -> tuple[dict[str, dict[str, int]], list[str]]:
    recap: dict[str, dict[str, int]] = {}
    changed: list[str] = []
    task = ""
    for line in text.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            host = line.split("[", 1)[1].split("]", 1)[0]
            changed.append(f"{task} ({host})")
        elif match := RECAP.match(line):
            recap[match[1]] = {
                "ok": int(match[2]),
                "changed": int(match[3]),
                "unreachable": int(match[4]),
                "failed": int(match[5]),
            }
    return recap, changed


def deploy(lab: Lab, results: ProofResults, run: int = 1) -> None:
    log = RUN_DIR / f"deploy-{run}.log"
    rc, seconds, recap, changed = run_playbook(lab, log)
    key = "deploy" if run == 1 else f"deploy_{run}"
    results.numbers[f"{key}_s"] = seconds
    results.numbers[f"{key}_recap"] = recap
    results.evidence[f"{key}_log"] = str(log)
    results.checks.append(Check(f"{key}: playbook exits 0", "0", str(rc)))
    if run > 1:
        total = sum(host["changed"] for host in recap.values())
        results.numbers[f"{key}_changed_tasks"] = changed
        results.checks.append(Check(f"{key}: second run reports changed=0", "0", str(total)))
    install_tools(lab)
    for node in NODES:
        status = lab.ssh(node, f"{TWINLOG} status", check=False, timeout=120)
        results.evidence[f"{key}_status_{node}"] = status.stdout.strip()[-2000:]
        results.checks.append(
            Check(f"{key}: twinlog status exits 0 on {node}", "0", str(status.returncode))
        )


def install_tools(lab: Lab) -> None:
    for node in NODES:
        lab.put(node, GUEST_DIR / "twinwriter.py", WRITER_PATH, mode="0755")
        lab.put(node, GUEST_DIR / "lockprobe.py", "/usr/local/bin/lockprobe", mode="0755")


# -- helpers -------------------------------------------------------------------------------------


class Writer:
    """twinwriter.py on a node; collects its ACK lines (id, seconds, reason, host arrival)."""

    def __init__(self, lab: Lab, node: str, args: str) -> None:
        self.node = node
        self.remote = Remote(lab.spawn(node, f"{WRITER} {args}"))
        self.acks: list[tuple[float, str, float, str]] = []
        self.other: list[str] = []

    def ready(self, timeout: float = 120) -> None:
        self.remote.expect("READY", timeout=timeout)

    def pump(self, timeout: float, until: str = "DONE") -> bool:
        """Read lines until one starts with `until` (True) or the timeout/exit (False)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            item = self.remote.line(min(left, 0.5))
            if item is None:
                if self.remote.proc.poll() is not None and self.remote.lines.empty():
                    return False
                continue
            at, line = item
            if line.startswith("ACK "):
                _, entry_id, took, reason = [*line.split(" ", 3), ""][:4]
                self.acks.append((at, entry_id, float(took), reason))
                if until == "ACK":
                    return True
            else:
                self.other.append(line)
                if line.startswith(until):
                    return True
        return False

    def finish(self, timeout: float = 60) -> int:
        self.remote.close_stdin()
        self.pump(timeout)
        return self.remote.finish(timeout=10)

    @property
    def ids(self) -> list[str]:
        return [ack[1] for ack in self.acks]

    @property
    def latencies(self) -> list[float]:
        return [ack[2] for ack in self.acks]


def tail_ids(lab: Lab, node: str) -> list[str]:
    out = lab.ssh(node, f"{TWINLOG} tail -n all --json", timeout=180).stdout
    return [json.loads(line)["id"] for line in out.splitlines() if line.strip()]


def reconcile_both(lab: Lab) -> dict[str, int]:
    codes = {}
    for node in (*NODES, NODES[0]):
        codes[node] = lab.ssh(node, f"{TWINLOG} reconcile", check=False, timeout=180).returncode
    return codes


def check_converged(
    lab: Lab, results: ProofResults, name: str, acked: list[str], reconcile: bool = True
) -> bool:
    """Reconcile, then: every acked id exactly once on both nodes; identical read() on both."""
    if reconcile:
        results.numbers[f"{name}_reconcile_rc"] = reconcile_both(lab)
    logs = {node: tail_ids(lab, node) for node in NODES}
    ok = True
    for node, ids in logs.items():
        counts = Counter(ids)
        missing = [i for i in acked if counts[i] == 0]
        dupes = sorted(i for i, c in counts.items() if c > 1)
        got = (
            "yes"
            if not missing and not dupes
            else (f"missing {len(missing)} {missing[:5]}, duplicated {len(dupes)} {dupes[:5]}")
        )
        results.checks.append(
            Check(f"{name}: every acked entry exactly once on {node}", "yes", got)
        )
        ok = ok and got == "yes"
    same = logs[NODES[0]] == logs[NODES[1]]
    results.checks.append(Check(f"{name}: read() identical on both nodes", "yes", _yes(same)))
    results.numbers[f"{name}_entries"] = {node: len(ids) for node, ids in logs.items()}
    results.numbers[f"{name}_acked"] = len(acked)
    if not (ok and same):
        for node, ids in logs.items():
            path = RUN_DIR / f"{name}-{node}.ids"
            path.write_text("\n".join(ids) + "\n")
            results.evidence[f"{name}_{node}_ids"] = str(path)
        (RUN_DIR / f"{name}-acked.ids").write_text("\n".join(acked) + "\n")
    return ok and same


def status_codes(lab: Lab) -> dict[str, int]:
    return {
        node: lab.ssh(node, f"{TWINLOG} status", check=False, timeout=120).returncode
        for node in NODES
    }


# -- scenarios -----------------------------------------------------------------------------------


def concurrent(lab: Lab, results: ProofResults) -> None:
    writers = [Writer(lab, node, f"write conc-{node} {N_CONCURRENT}") for node in NODES]
    for writer in writers:
        writer.ready()
    started = time.monotonic()
    for writer in writers:
        writer.pump(timeout=600)
    seconds = time.monotonic() - started
    for writer in writers:
        writer.finish()
        results.checks.append(
            Check(
                f"concurrent: {writer.node} acked all {N_CONCURRENT}",
                str(N_CONCURRENT),
                str(len(writer.acks)),
            )
        )
        reasons = Counter(ack[3] for ack in writer.acks)
        results.numbers[f"concurrent_reasons_{writer.node}"] = dict(reasons)
        results.numbers[f"concurrent_p50_p99_s_{writer.node}"] = [
            _pct(writer.latencies, 0.5),
            _pct(writer.latencies, 0.99),
        ]
    results.numbers["concurrent_wall_s"] = round(seconds, 1)
    acked = [i for w in writers for i in w.ids]
    # No reconcile first: concurrent writes through the mounts must already be on both.
    check_converged(lab, results, "concurrent_no_reconcile", acked, reconcile=False)
    check_converged(lab, results, "concurrent", acked)


def link_cut(lab: Lab, results: ProofResults) -> None:
    lab.link(False)
    cut_at = time.monotonic()
    writers = [Writer(lab, node, f"write cut-{node} {N_CUT} 2") for node in NODES]
    try:
        for writer in writers:
            writer.ready()
            writer.pump(timeout=300)
    finally:
        for writer in writers:
            writer.finish()
        lab.link(True)
    healed = time.monotonic()
    results.numbers["link_cut_write_s"] = {w.node: w.latencies for w in writers}
    results.numbers["link_cut_reasons"] = {w.node: [a[3] for a in w.acks] for w in writers}
    results.numbers["link_cut_duration_s"] = round(healed - cut_at, 1)
    for writer in writers:
        results.checks.append(
            Check(
                f"link_cut: {writer.node} acked all {N_CUT} while cut",
                str(N_CUT),
                str(len(writer.acks)),
            )
        )
        worst = max(writer.latencies, default=0.0)
        results.checks.append(
            Check(
                f"link_cut: every write on {writer.node} within "
                f"{PROBE_TIMEOUT + IO_TIMEOUT + WRITE_MARGIN:.0f} s",
                "yes",
                _yes(worst <= PROBE_TIMEOUT + IO_TIMEOUT + WRITE_MARGIN),
            )
        )
    acked = [i for w in writers for i in w.ids]
    # The reconcile timer alone (every minute), without any write or manual reconcile.
    timer_s: float | None = None
    while time.monotonic() - healed < TIMER_WAIT:
        if status_codes(lab) == {n: 0 for n in NODES}:
            timer_s = round(time.monotonic() - healed, 1)
            break
        time.sleep(5)
    results.numbers["link_cut_timer_converged_s"] = (
        timer_s if timer_s is not None else (f"not within {TIMER_WAIT:.0f} s")
    )
    if timer_s is not None:
        check_converged(lab, results, "link_cut_timer_only", acked, reconcile=False)
    check_converged(lab, results, "link_cut", acked)


def peer_answers(lab: Lab, node: str, limit: float = 5.0) -> float | None:
    """Seconds a statfs of the node's peer mount took (a round trip to the peer's server), or
    None when it did not answer within limit (the stat is then killed: SIGKILL ends an NFS wait).
    """
    out = lab.ssh(
        node,
        f"bash -c 's=$EPOCHREALTIME; timeout -s KILL {limit:g} stat -f {PEER_DIR} >/dev/null "
        "2>&1 && echo $s $EPOCHREALTIME'",
        check=False,
        timeout=limit + 60,
    ).stdout.split()
    return round(float(out[1]) - float(out[0]), 3) if len(out) == 2 else None


def asymmetric(lab: Lab, results: ProofResults) -> None:
    """twin-a's NFS server replies to twin-b are dropped; all else passes. So twin-a still reaches
    twin-b's export, while twin-b's mount of twin-a hangs (its requests even arrive and run)."""
    bound = PROBE_TIMEOUT + IO_TIMEOUT + WRITE_MARGIN
    rule = f"ipproto tcp sport 2049 to {ASYM_BLOCKED} blackhole"
    before = {node: peer_answers(lab, node) for node in NODES}
    results.numbers["asymmetric_statfs_before_s"] = before
    lab.ssh(ASYM_SERVER, f"ip rule add {rule}")
    cut_at = time.monotonic()
    writers: list[Writer] = []
    try:
        during = {node: peer_answers(lab, node) for node in NODES}
        results.numbers["asymmetric_statfs_during_s"] = during
        results.evidence["asymmetric_rules"] = lab.ssh(ASYM_SERVER, "ip rule show").stdout
        results.checks.append(
            Check(
                "asymmetric: twin-a's mount of twin-b answers during the partition",
                "yes",
                _yes(during["twin-a"] is not None),
            )
        )
        results.checks.append(
            Check(
                "asymmetric: twin-b's mount of twin-a hangs during the partition",
                "yes",
                _yes(during["twin-b"] is None),
            )
        )
        writers = [Writer(lab, node, f"write asym-{node} {N_CUT} 2") for node in NODES]
        for writer in writers:
            writer.ready()
            writer.pump(timeout=300)
    finally:
        for writer in writers:
            writer.finish()
        lab.ssh(ASYM_SERVER, f"while ip rule del {rule} 2>/dev/null; do :; done")
    healed = time.monotonic()
    results.numbers["asymmetric_duration_s"] = round(healed - cut_at, 1)
    results.numbers["asymmetric_write_s"] = {w.node: w.latencies for w in writers}
    results.numbers["asymmetric_reasons"] = {w.node: [a[3] for a in w.acks] for w in writers}
    for writer in writers:
        results.checks.append(
            Check(
                f"asymmetric: {writer.node} acked all {N_CUT} during the partition",
                str(N_CUT),
                str(len(writer.acks)),
            )
        )
        worst = max(writer.latencies, default=0.0)
        results.checks.append(
            Check(
                f"asymmetric: every write on {writer.node} within {bound:.0f} s",
                "yes",
                _yes(worst <= bound),
            )
        )
    # twin-b's client has to reconnect (its SYNs were answered into the blackhole).
    back_s: float | None = None
    while time.monotonic() - healed < ASYM_RECOVER_WAIT:
        if peer_answers(lab, "twin-b") is not None:
            back_s = round(time.monotonic() - healed, 1)
            break
        time.sleep(2)
    results.numbers["asymmetric_twin_b_mount_back_s"] = back_s
    results.checks.append(
        Check(
            f"asymmetric: twin-b's mount answers within {ASYM_RECOVER_WAIT:.0f} s of the heal",
            "yes",
            _yes(back_s is not None),
        )
    )
    acked = [i for w in writers for i in w.ids]
    # Convergence by the next write on each node (a write drains both caches), no reconcile.
    nexts = [Writer(lab, node, f"write asym-next-{node} 1") for node in NODES]
    for writer in nexts:
        writer.ready()
        writer.pump(timeout=60)
        writer.finish()
    results.numbers["asymmetric_next_write"] = {
        w.node: [(a[2], a[3]) for a in w.acks] for w in nexts
    }
    acked += [i for w in nexts for i in w.ids]
    check_converged(lab, results, "asymmetric_next_write", acked, reconcile=False)
    check_converged(lab, results, "asymmetric", acked)


def frozen_peer(lab: Lab, results: ProofResults, n: int = 30) -> None:
    bound = PROBE_TIMEOUT + IO_TIMEOUT + WRITE_MARGIN
    writer = Writer(lab, "twin-a", f"write frozen {n} 0.1")
    writer.ready()
    lab.freeze("twin-b")
    try:
        writer.pump(timeout=n * (bound + 1))
    finally:
        lab.thaw("twin-b")
        writer.finish()
    lab.ssh("twin-b", f"date -s @{time.time():.3f} >/dev/null")  # its clock stood still
    lat = writer.latencies
    results.numbers["frozen_write_p50_s"] = _pct(lat, 0.5)
    results.numbers["frozen_write_p99_s"] = _pct(lat, 0.99)
    results.numbers["frozen_write_max_s"] = round(max(lat, default=0.0), 3)
    results.numbers["frozen_reasons"] = dict(Counter(a[3] for a in writer.acks))
    results.checks.append(Check(f"frozen_peer: twin-a acked all {n}", str(n), str(len(lat))))
    results.checks.append(
        Check(
            f"frozen_peer: every write within {bound:.0f} s",
            "yes",
            _yes(max(lat, default=0.0) <= bound),
        )
    )
    check_converged(lab, results, "frozen_peer", writer.ids)


class Measured(NamedTuple):
    """A twinwriter.py MEASURED line: N, seconds, and the peer mount's RPCs by operation."""

    n: int
    seconds: float
    rpcs: dict[str, int]

    @classmethod
    def of(cls, writer: Writer) -> Measured:
        line = next(x for x in writer.other if x.startswith("MEASURED "))
        _, _, n, seconds, rpcs = line.split(" ", 4)
        return cls(int(n), float(seconds), json.loads(rpcs))

    def row(self, baseline: Measured | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "n": self.n,
            "s": self.seconds,
            "ms_per_entry": round(1000 * self.seconds / max(self.n, 1), 3),
            "rpcs": dict(sorted(self.rpcs.items())),
            "rpcs_per_entry": {
                op: round(count / max(self.n, 1), 4) for op, count in sorted(self.rpcs.items())
            },
            "rpcs_per_entry_total": round(sum(self.rpcs.values()) / max(self.n, 1), 2),
        }
        if baseline is not None:
            base = row["baseline"] = baseline.row()
            row["ratio"] = round(row["ms_per_entry"] / base["ms_per_entry"], 2)
            row["rpcs_per_entry_over_baseline"] = round(
                row["rpcs_per_entry_total"] - base["rpcs_per_entry_total"], 2
            )
        return row


def bench_writer(lab: Lab, args: str, timeout: float = 1800) -> Writer:
    writer = Writer(lab, "twin-a", args)
    writer.pump(timeout=timeout)
    writer.finish()
    return writer


def acked_range(writer: Writer) -> list[str]:
    """The ids of an ACKED <first> <last> line (one writer alone on its node: consecutive)."""
    for line in writer.other:
        if line.startswith("ACKED "):
            first, last = line.split()[1:3]
            node, low = first.rsplit(":", 1)
            return [f"{node}:{seq}" for seq in range(int(low), int(last.rsplit(":", 1)[1]) + 1)]
    return []


def reconcile_timers(lab: Lab, start: bool) -> None:
    """Start or stop the reconcile timer on both nodes; a stop waits for a running reconcile
    (its RPCs would be counted with ours)."""
    for node in NODES:
        if start:
            lab.ssh(node, f"systemctl start {RECONCILE_TIMER}")
        else:
            lab.ssh(
                node,
                f"systemctl stop {RECONCILE_TIMER}; "
                "while systemctl -q is-active twinlog-reconcile.service; do sleep 1; done",
                timeout=300,
            )


def throughput(lab: Lab, results: ProofResults) -> None:
    """Twin-a, same mount, same run: time and the peer mount's RPCs per entry of write() and
    write_many(BATCH) against the raw locked dual append of the same lines, of a reconcile that
    drains N_DRAIN cached entries, and of read() of the whole log."""
    reconcile_both(lab)
    reconcile_timers(lab, start=False)
    acked: list[str] = []
    try:
        write = bench_writer(lab, f"bench {N_BENCH}")
        raw = bench_writer(lab, f"raw {N_BENCH}")
        many = bench_writer(lab, f"bench_many {N_BENCH_MANY} {BATCH}")
        raw_many = bench_writer(lab, f"raw {N_BENCH_MANY} {BATCH}")
        acked += acked_range(write) + acked_range(many)
        lab.ssh("twin-a", f"umount {PEER_DIR}")  # the peer cut: writes go to the cache
        try:
            cache = bench_writer(lab, f"cache {N_DRAIN} {CACHE_BATCH}")
        finally:
            lab.ssh("twin-a", f"mount {PEER_DIR}")
        cached = acked_range(cache)
        acked += cached
        drain = bench_writer(lab, "reconcile")
        read = bench_writer(lab, "read")
    finally:
        reconcile_timers(lab, start=True)
    rows = {
        "write": Measured.of(write).row(Measured.of(raw)),
        f"write_many_{BATCH}": Measured.of(many).row(Measured.of(raw_many)),
        f"reconcile_{len(cached)}_cached": Measured.of(drain).row(),
        "read": Measured.of(read).row(),
    }
    results.numbers["throughput"] = rows
    results.evidence["throughput_reconcile"] = next(
        (x for x in drain.other if x.startswith("RECONCILED ")), ""
    )
    results.checks.append(Check("throughput: measured", "yes", "yes"))
    results.checks.append(
        Check(
            f"throughput: the reconcile delivered all {N_DRAIN} cached entries",
            "yes",
            _yes(len(cached) == N_DRAIN and Measured.of(drain).n >= N_DRAIN),
        )
    )
    check_converged(lab, results, "throughput", acked)


def dead_peer(lab: Lab, results: ProofResults) -> None:
    """twin-b dies holding the lock of twin-a's log directory; when do twin-a's writes proceed?"""
    holder = Remote(lab.spawn("twin-b", f"{LOCKPROBE} hold {PEER_DIR}/twinlog.lock lockf"))
    holder.expect("LOCKED", timeout=60)
    writer = Writer(lab, "twin-a", "until dead 0.5")
    writer.ready()
    time.sleep(2)  # the first write is now queued behind twin-b's lock
    blocked = not writer.acks and writer.remote.lines.empty()
    killed = time.monotonic()
    lab.kill("twin-b")
    holder.finish(timeout=5)
    first = writer.pump(timeout=60, until="ACK")
    proceed_s = round(writer.acks[0][0] - killed, 1) if first else None
    writer.pump(timeout=15, until="never")  # a few more writes with the peer dead
    writer.finish()
    results.numbers["dead_peer_writes_proceed_s"] = proceed_s
    results.numbers["dead_peer_write_s"] = writer.latencies
    results.numbers["dead_peer_reasons"] = dict(Counter(a[3] for a in writer.acks))
    results.checks.append(
        Check("dead_peer: first write waited for twin-b's lock", "yes", _yes(blocked))
    )
    results.checks.append(
        Check(
            f"dead_peer: writes proceed within {DEAD_PEER_GOAL:.0f} s",
            "yes",
            _yes(proceed_s is not None and proceed_s <= DEAD_PEER_GOAL),
        )
    )
    started = time.monotonic()
    lab.boot("twin-b")  # cold, from its own disk: the deployment is on it
    results.numbers["dead_peer_boot_s"] = round(time.monotonic() - started, 1)
    # The peer mount on twin-b comes from fstab (nofail) at boot, or from the same mount unit
    # pulled in again by the next twinlog-reconcile.service.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if lab.ssh("twin-b", f"findmnt {PEER_DIR}", check=False).returncode == 0:
            break
        time.sleep(3)
    results.numbers["dead_peer_mounted_after_boot_s"] = round(time.monotonic() - started, 1)
    check_converged(lab, results, "dead_peer", writer.ids)


Scenario = Callable[[Lab, ProofResults], None]
SCENARIOS: dict[str, Scenario] = {
    "deploy": deploy,
    "redeploy": lambda lab, results: deploy(lab, results, run=2),
    "concurrent": concurrent,
    "link_cut": link_cut,
    "asymmetric": asymmetric,
    "frozen_peer": frozen_peer,
    "throughput": throughput,
    "dead_peer": dead_peer,  # kills and cold-boots twin-b: keep it last
}


def run(
    lab: Lab,
    names: tuple[str, ...] = tuple(SCENARIOS),
    results: ProofResults | None = None,
) -> ProofResults:
    results = results or ProofResults()
    for name in names:
        started = time.monotonic()
        try:
            SCENARIOS[name](lab, results)
        except Exception as exc:  # keep the evidence, go on with the next scenario
            results.checks.append(
                Check(f"{name}: ran without error", "yes", f"{type(exc).__name__}: {exc}")
            )
        results.phases[name] = round(time.monotonic() - started, 1)
        print(f"lab: scenario {name}: {results.phases[name]} s", flush=True)
        write(results)
    return results


def write(results: ProofResults, path: Path = RUN_DIR / "scenario-results.json") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = results.as_dict()
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
