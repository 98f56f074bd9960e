"""The lab's CI subset: what fits CI's time limit on a fresh machine, with no check weakened.

  image       build the guest image (cold on a fresh machine: debootstrap, ~2.5 min)
  boot        both VMs; warm states are used when cached, never saved (a fresh machine would
              only pay for them). .ci/run does image and boot beside the test suite
              (`nice lab.py up --cold`) and then runs `lab.py ci --attach`
  proof       the lock proof on the pristine VMs: setup, lock matrix, cable cut, silent cut
  deploy      the project's playbook; `twinlog status` exits 0 on both nodes
  link_cut    link cut, writes on both nodes, heal, convergence by the reconcile timer alone,
              then reconcile: every acknowledged entry exactly once on both, read() identical
  dead_peer   the lock proof's last step: twin-b dies holding a lock, twin-a gets it within 15 s

The full lab stays `lab.py smoke` + `lab.py scenarios --fresh` (see docs/lab.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from twinlab import proof, scenarios
from twinlab.cluster import Lab
from twinlab.image import ensure_image
from twinlab.paths import RUN_DIR
from twinlab.proof import Check, ProofResults

Step = Callable[[Lab, ProofResults], None]
STEPS: tuple[tuple[str, Step], ...] = (
    ("proof_setup", proof.setup),
    ("matrix", proof.SCENARIOS["matrix"]),
    ("cable_cut", proof.SCENARIOS["cable_cut"]),
    ("silent_cut", proof.SCENARIOS["silent_cut"]),
    ("deploy", scenarios.deploy),
    ("link_cut", scenarios.link_cut),
    ("dead_peer", proof.SCENARIOS["dead_peer"]),  # kills twin-b: keep it last
)
RESULTS_FILE = "ci-results.json"


def run(
    results: ProofResults | None = None, run_dir: Path = RUN_DIR, attach: bool = False
) -> ProofResults:
    """Image, boot, every step in order, down. Stops at the first step that raises.

    attach=True: use the VMs `lab.py up --cold` left running in run_dir (.ci/run boots them
    beside the test suite), and still tear them down at the end.
    """
    results = results or ProofResults()
    started = time.monotonic()
    try:
        if attach:
            lab = Lab.attach(run_dir)
            _timed(results, "nice", lambda: renice(lab))
        else:
            _timed(results, "image", ensure_image)
            lab = Lab(run_dir, save_warm=False)
            _timed(results, "boot", lab.up)
        try:
            for name, step in STEPS:
                if not _step(lab, results, name, step):
                    break
        finally:
            lab.down()
    except Exception as exc:  # image or boot: the evidence goes into the results
        results.checks.append(Check("lab came up", "yes", f"{type(exc).__name__}: {exc}"))
        traceback.print_exc()
    finally:
        results.phases["total"] = round(time.monotonic() - started, 1)
        write(results, run_dir)
    return results


def closing_line(results: ProofResults) -> str:
    """One plain line for CI logs: how many checks passed and failed."""
    failed = sum(not c.ok for c in results.checks)
    return f"lab: {len(results.checks) - failed} passed, {failed} failed"


def renice(lab: Lab, niceness: int = 0) -> None:
    """Set every thread of both VMs and of their ssh masters to niceness (they were started
    niced beside the tests; every later ssh command and its output goes through the master)."""
    pids = list(lab.pids.values())
    for name in lab.pids:
        pid = _master_pid(lab.files(name).ssh_control)
        if pid is not None:
            pids.append(pid)
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


def _master_pid(control: Path) -> int | None:
    check = subprocess.run(
        ["ssh", "-o", f"ControlPath={control}", "-O", "check", "lab"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    match = re.search(r"pid=(\d+)", check.stderr + check.stdout)
    return int(match[1]) if match else None


def _timed(results: ProofResults, name: str, action: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        action()
    finally:
        results.phases[name] = round(time.monotonic() - started, 1)
        _log(f"{name}: {results.phases[name]} s")


def _step(lab: Lab, results: ProofResults, name: str, step: Step) -> bool:
    """Run one step; False when it raised (the error is a failed check)."""
    first = len(results.checks)
    started = time.monotonic()
    try:
        step(lab, results)
        raised = False
    except Exception as exc:
        results.checks.append(Check(f"{name}: ran without error", "yes", f"{exc!r}"[:500]))
        traceback.print_exc()
        raised = True
    results.phases[name] = round(time.monotonic() - started, 1)
    failed = sum(not c.ok for c in results.checks[first:])
    _log(f"{name}: {results.phases[name]} s, {'FAILED ' + str(failed) if failed else 'ok'}")
    return not raised


def write(results: ProofResults, run_dir: Path = RUN_DIR) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS_FILE
    path.write_text(json.dumps(results.as_dict(), indent=2) + "\n")
    return path


def _log(message: str) -> None:
    print(f"lab ci: {message}", flush=True)
