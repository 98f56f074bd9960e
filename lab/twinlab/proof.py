"""The lock proof over real NFS, with no twinlog code.

twin-a exports /srv/twinlab to 192.168.77.2 only; twin-b mounts it (NFSv4.2, soft, timeo=10,
retrans=2). Scenarios:

  lock matrix  lockf held on one side excludes lockf on the other (both ways); flock does not.
  partition    link cut: how long an append+fsync through the mount on twin-b takes to fail; how
               long twin-a waits for a lock that partitioned twin-b holds; how long after the link
               is back twin-b can write again.
  dead peer    twin-b holds a lockf lock through the mount and is killed (qemu quit): how long
               until twin-a can take that lock (NFSv4 lease, 10 s here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twinlab.cluster import Lab
from twinlab.paths import GUEST_DIR
from twinlab.remote import Remote

SERVER = "twin-a"
CLIENT = "twin-b"
EXPORT_DIR = "/srv/twinlab"
MOUNT_DIR = "/mnt/twin-a"
MOUNT_OPTIONS = "vers=4.2,soft,timeo=10,retrans=2"
EXPORT_OPTIONS = "rw,sync,root_squash,no_subtree_check"
PROBE = "/usr/local/bin/lockprobe"
LEASE_SECONDS = 10
DEAD_PEER_GOAL = 15.0
LINK_CUT_LIMIT = 240.0
SECOND_APPEND_WAIT = 30.0
FILES = ("lockf.lock", "flock.lock", "partition.lock", "partition.log", "dead.lock")


@dataclass
class Check:
    name: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass
class ProofResults:
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)

    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok(),
            "checks": [asdict(c) | {"ok": c.ok} for c in self.checks],
            "numbers": self.numbers,
            "phases_seconds": self.phases,
            "evidence": self.evidence,
        }

    def summary(self) -> str:
        lines = [
            f"{'ok ' if c.ok else 'FAIL'} {c.name}: expected {c.expected}, got {c.got}"
            for c in self.checks
        ]
        for key, value in self.numbers.items():
            if isinstance(value, dict):
                lines += [f"     {key}.{sub} = {item}" for sub, item in value.items()]
            else:
                lines.append(f"     {key} = {value}")
        lines += [f"     phase {key}: {value:.1f} s" for key, value in self.phases.items()]
        return "\n".join(lines)


def server_path(name: str) -> str:
    return f"{EXPORT_DIR}/{name}"


def client_path(name: str) -> str:
    return f"{MOUNT_DIR}/{name}"


# -- setup ---------------------------------------------------------------------------------------


def install_probe(lab: Lab) -> None:
    for node in (SERVER, CLIENT):
        lab.put(node, GUEST_DIR / "lockprobe.py", PROBE)


def export_and_mount(lab: Lab, results: ProofResults) -> None:
    """Export EXPORT_DIR on twin-a to twin-b only and mount it on twin-b."""
    touch = " && ".join(f"install -m 0666 /dev/null {server_path(name)}" for name in FILES)
    lab.ssh(
        SERVER,
        f"mkdir -p {EXPORT_DIR} /etc/exports.d && chmod 1777 {EXPORT_DIR} && {touch} && "
        f"echo '{EXPORT_DIR} 192.168.77.2({EXPORT_OPTIONS})' "
        f"> /etc/exports.d/twinlab.exports && exportfs -ra",
    )
    lease = lab.ssh(SERVER, "cat /proc/fs/nfsd/nfsv4leasetime /proc/fs/nfsd/nfsv4gracetime")
    lab.ssh(
        CLIENT,
        f"mkdir -p {MOUNT_DIR} && mount -t nfs4 -o {MOUNT_OPTIONS} "
        f"192.168.77.1:{EXPORT_DIR} {MOUNT_DIR}",
        timeout=60,
    )
    mounts = lab.ssh(CLIENT, f"grep ' {MOUNT_DIR} ' /proc/mounts").stdout.strip()
    results.evidence["exports"] = lab.ssh(SERVER, "exportfs -v").stdout.strip()
    results.evidence["mount"] = mounts
    lease_time, grace_time = lease.stdout.split()
    results.checks.append(Check("server NFSv4 lease time", str(LEASE_SECONDS), lease_time))
    results.numbers["grace_time_s"] = int(grace_time)
    results.checks.append(Check("mount is NFSv4.2", "yes", _yes("vers=4.2" in mounts)))
    results.checks.append(
        Check(
            "mount has no local locks",
            "yes",
            _yes(
                "nolock" not in mounts
                and ("local_lock=none" in mounts or "local_lock" not in mounts)
            ),
        )
    )


# -- lock matrix ---------------------------------------------------------------------------------


def hold(lab: Lab, node: str, path: str, kind: str) -> Remote:
    holder = Remote(lab.spawn(node, f"{PROBE} hold {path} {kind}"))
    holder.expect("LOCKED", timeout=60)
    return holder


def try_lock(lab: Lab, node: str, path: str, kind: str) -> str:
    return lab.ssh(node, f"{PROBE} try {path} {kind}", timeout=60).stdout.strip()


def _path_on(node: str, name: str) -> str:
    return server_path(name) if node == SERVER else client_path(name)


def lock_matrix(lab: Lab, results: ProofResults) -> None:
    """For each lock kind and holder side: does the other side get the lock?"""
    expected = {"lockf": "BLOCKED", "flock": "GOT"}
    for kind, outcome in expected.items():
        name = f"{kind}.lock"
        for holder_node, other in ((SERVER, CLIENT), (CLIENT, SERVER)):
            label = f"{kind} held on {holder_node}, {kind} tried on {other}"
            with hold(lab, holder_node, _path_on(holder_node, name), kind):
                got = try_lock(lab, other, _path_on(other, name), kind)
                if holder_node == CLIENT:
                    results.evidence[f"/proc/locks on {SERVER} while {CLIENT} holds {kind}"] = (
                        lab.ssh(SERVER, "cat /proc/locks").stdout.strip()
                    )
            results.checks.append(Check(label, outcome, got))
            after = try_lock(lab, other, _path_on(other, name), kind)
            results.checks.append(Check(f"{label}, after release", "GOT", after))


# -- partition -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """How the link is cut: which NICs get `set_link link off`."""

    name: str
    nodes: tuple[str, ...]
    meaning: str


CUTS = {
    "cable": Cut("cable", (SERVER, CLIENT), "both NICs down: both guests see carrier loss"),
    "silent": Cut(
        "silent", (SERVER,), "only twin-a's NIC down: twin-b keeps carrier, its packets vanish"
    ),
}


def partition(lab: Lab, results: ProofResults, cut: Cut) -> None:
    """Cut the link while twin-b holds a lock through the mount, then write through it.

    Records: when the first append on twin-b fails; when twin-a gets the lock twin-b held; what a
    second append, started after that, does while the link is still cut and once it is back.
    """
    numbers: dict[str, Any] = {"cut": cut.meaning}
    results.numbers[f"{cut.name}_cut"] = numbers
    holder = hold(lab, CLIENT, client_path("partition.lock"), "lockf")
    waiter = Remote(lab.spawn(SERVER, f"{PROBE} wait {server_path('partition.lock')} lockf 200"))
    remotes = [holder, waiter]
    blocked: Remote | None = None
    try:
        waiter.expect("WAITING", timeout=60)
        _set_link(lab, cut, up=False)
        cut_at = time.monotonic()
        first = _append(lab)
        remotes.append(first)
        _first_append(first, cut_at, cut, numbers, results)
        got_at, _ = waiter.expect("GOT", timeout=LINK_CUT_LIMIT)
        numbers["partitioned_peer_lock_free_s"] = round(got_at - cut_at, 1)
        second = _append(lab)
        remotes.append(second)
        blocked = _second_append(second, numbers)
    finally:
        _set_link(lab, cut, up=True)
    restored = time.monotonic()
    if blocked is not None:
        done_at, line = blocked.expect("{", timeout=LINK_CUT_LIMIT)
        numbers["second_append_after_link_back"] = (
            f"{json.loads(line)} {done_at - restored:.1f} s after the link is back"
        )
    for remote in remotes:
        remote.finish(timeout=5)
    numbers["link_back_client_writes_after_s"] = _recovery(lab, restored)


def _set_link(lab: Lab, cut: Cut, up: bool) -> None:
    for node in cut.nodes:
        lab.link(up, node)


def _append(lab: Lab) -> Remote:
    return Remote(lab.spawn(CLIENT, f"{PROBE} append {client_path('partition.log')}"))


def _first_append(
    first: Remote, cut_at: float, cut: Cut, numbers: dict[str, Any], results: ProofResults
) -> None:
    failed_at, line = first.expect("{", timeout=LINK_CUT_LIMIT)
    outcome = json.loads(line)
    numbers["first_append_fails_after_s"] = round(failed_at - cut_at, 1)
    numbers["first_append_error"] = outcome["error"]
    label = f"append on twin-b fails with the link cut ({cut.name})"
    results.checks.append(Check(label, "yes", _yes(outcome["error"] is not None)))


def _second_append(second: Remote, numbers: dict[str, Any]) -> Remote | None:
    """Wait a while for an append started after the lease expired; return it if still blocked."""
    started = time.monotonic()
    done = second.line(timeout=SECOND_APPEND_WAIT)
    if done is None:
        numbers["second_append"] = f"blocked > {SECOND_APPEND_WAIT:.0f} s"
        return second
    numbers["second_append"] = f"{json.loads(done[1])} after {done[0] - started:.1f} s"
    return None


def _recovery(lab: Lab, since: float, limit: float = 180.0) -> float:
    """Seconds from `since` until an append through the mount on twin-b succeeds again."""
    while time.monotonic() - since < limit:
        line = lab.ssh(
            CLIENT, f"{PROBE} append {client_path('partition.log')}", timeout=limit
        ).stdout.strip()
        if json.loads(line)["error"] is None:
            return round(time.monotonic() - since, 1)
        time.sleep(1)
    raise TimeoutError(f"twin-b could not write through the mount {limit} s after the link")


# -- dead peer -----------------------------------------------------------------------------------


def dead_peer(lab: Lab, results: ProofResults) -> None:
    """twin-b dies holding a lock on twin-a's file: when can twin-a lock it again?"""
    holder = hold(lab, CLIENT, client_path("dead.lock"), "lockf")
    waiter = Remote(lab.spawn(SERVER, f"{PROBE} wait {server_path('dead.lock')} lockf 120"))
    try:
        waiter.expect("WAITING", timeout=60)
        killed = time.monotonic()
        lab.kill(CLIENT)
        got_at, _ = waiter.expect("GOT", timeout=130)
        seconds = round(got_at - killed, 1)
        results.numbers["dead_peer_lock_free_s"] = seconds
        results.checks.append(
            Check(
                f"lock of a dead peer is free within {DEAD_PEER_GOAL:.0f} s",
                "yes",
                _yes(seconds <= DEAD_PEER_GOAL),
            )
        )
    finally:
        for remote in (waiter, holder):
            remote.finish(timeout=5)


# -- all -----------------------------------------------------------------------------------------


def setup(lab: Lab, results: ProofResults) -> None:
    install_probe(lab)
    export_and_mount(lab, results)


Scenario = Callable[[Lab, ProofResults], None]
SCENARIOS: dict[str, Scenario] = {
    "matrix": lock_matrix,
    "cable_cut": lambda lab, results: partition(lab, results, CUTS["cable"]),
    "silent_cut": lambda lab, results: partition(lab, results, CUTS["silent"]),
    "dead_peer": dead_peer,  # kills twin-b: keep it last
}


def run_proof(lab: Lab, scenarios: tuple[str, ...] = tuple(SCENARIOS)) -> ProofResults:
    """Set up NFS and run the scenarios in order; phase durations go into the results."""
    results = ProofResults()
    for name in ("setup", *scenarios):
        started = time.monotonic()
        step = setup if name == "setup" else SCENARIOS[name]
        step(lab, results)
        results.phases[name] = round(time.monotonic() - started, 1)
    return results


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def write_results(results: ProofResults, path: Path) -> None:
    path.write_text(json.dumps(results.as_dict(), indent=2) + "\n")
