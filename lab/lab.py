#!/usr/bin/env python3
"""twinlog lab: two Debian VMs with real NFS between them (qemu TCG). Host side: stdlib only.

lab.py build                    build (or reuse) the cached guest image
lab.py up [--wait]              boot twin-a and twin-b; --wait holds them until Ctrl-C
lab.py down                     stop the VMs, also leftovers of a crashed run
lab.py status                   what is running
lab.py ssh NODE [CMD...]        ssh to a node (twin-a, twin-b, or a, b)
lab.py monitor NODE CMD...      one qemu monitor command (set_link link off, stop, cont, quit)
lab.py link up|down             restore or cut the peer link on both nodes
lab.py proof                    the NFS lock proof on the running lab
lab.py smoke                    up + proof + down, in one go
lab.py scenarios [NAME...]      deploy twinlog (the playbook) + fault scenarios on the
                                running lab (--fresh: up, all, down)
lab.py ci [--attach]            CI's subset, from nothing: image, boot, lock proof, deploy,
                                link cut + heal, down (--attach: on the VMs `up` left running)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twinlab import ci, proof, scenarios
from twinlab.cluster import Lab, node_named
from twinlab.image import ensure_image
from twinlab.paths import RUN_DIR


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_build(args: argparse.Namespace) -> int:
    image = ensure_image()
    print(image.directory)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(warm=not args.cold)
    try:
        lab.up()
    except BaseException:
        lab.down()
        raise
    _print_status(lab)
    if args.wait:
        try:
            signal.pause()
        finally:
            lab.down()
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cleaned = Lab.cleanup()
    print("stopped: " + (", ".join(cleaned) if cleaned else "nothing was running"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    _print_status(Lab.attach())
    return 0


def _cmd_ssh(args: argparse.Namespace) -> int:
    lab = Lab.attach()
    argv = [*lab.target(args.node).base(), *args.cmd]
    if not args.cmd:
        argv.insert(1, "-t")
    os.execvp(argv[0], argv)


def _cmd_monitor(args: argparse.Namespace) -> int:
    print(Lab.attach().monitor(node_named(args.node).name, " ".join(args.cmd)))
    return 0


def _cmd_link(args: argparse.Namespace) -> int:
    Lab.attach().link(args.state == "up")
    return 0


def _cmd_proof(args: argparse.Namespace) -> int:
    lab = Lab.attach()
    code = _report(proof.run_proof(lab))
    lab.boot(proof.CLIENT, fresh=True)  # dead_peer killed it: leave a usable lab behind
    return code


def _cmd_smoke(args: argparse.Namespace) -> int:
    with Lab(warm=not args.cold) as lab:
        return _report(proof.run_proof(lab))


def _cmd_ci(args: argparse.Namespace) -> int:
    results = ci.run(attach=args.attach)
    print(results.summary())
    print(f"results: {RUN_DIR / ci.RESULTS_FILE}")
    print(ci.closing_line(results))
    return 0 if results.ok() and results.checks else 1


def _cmd_scenarios(args: argparse.Namespace) -> int:
    names = tuple(args.names) or tuple(scenarios.SCENARIOS)
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; known: {list(scenarios.SCENARIOS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    if args.fresh:
        with Lab() as lab:
            results = scenarios.run(lab, names)
    else:
        results = scenarios.run(Lab.attach(), names)
    results.phases["total"] = round(time.monotonic() - started, 1)
    path = scenarios.write(results)
    print(results.summary())
    print(f"results: {path}")
    return 0 if results.ok() else 1


def _report(results: proof.ProofResults) -> int:
    path = RUN_DIR / "proof-results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.as_dict(), indent=2) + "\n")
    print(results.summary())
    print(f"results: {path}")
    return 0 if results.ok() else 1


def _print_status(lab: Lab) -> None:
    for name, ports in lab.ports.items():
        pid = lab.pids.get(name)
        print(
            f"{name}: pid {pid or '-'}  ssh 127.0.0.1:{ports.ssh}  "
            f"monitor {lab.files(name).monitor}"
        )
    print(f"inventory: {lab.run_dir / 'inventory.ini'}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build").set_defaults(func=_cmd_build)
    up = sub.add_parser("up")
    up.add_argument("--wait", action="store_true", help="keep the VMs until Ctrl-C")
    up.add_argument("--cold", action="store_true", help="boot cold, not from saved states")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down").set_defaults(func=_cmd_down)
    sub.add_parser("status").set_defaults(func=_cmd_status)
    ssh = sub.add_parser("ssh")
    ssh.add_argument("node")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=_cmd_ssh)
    mon = sub.add_parser("monitor")
    mon.add_argument("node")
    mon.add_argument("cmd", nargs="+")
    mon.set_defaults(func=_cmd_monitor)
    link = sub.add_parser("link")
    link.add_argument("state", choices=["up", "down"])
    link.set_defaults(func=_cmd_link)
    sub.add_parser("proof").set_defaults(func=_cmd_proof)
    smoke = sub.add_parser("smoke")
    smoke.add_argument("--cold", action="store_true", help="boot cold, not from saved states")
    smoke.set_defaults(func=_cmd_smoke)
    scen = sub.add_parser("scenarios")
    scen.add_argument("names", nargs="*", help=f"default: all of {list(scenarios.SCENARIOS)}")
    scen.add_argument("--fresh", action="store_true", help="up, run, down (else: running lab)")
    scen.set_defaults(func=_cmd_scenarios)
    cip = sub.add_parser("ci", help="CI's subset of the lab, from nothing")
    cip.add_argument(
        "--attach", action="store_true", help="use the VMs `up` left running (then down)"
    )
    cip.set_defaults(func=_cmd_ci)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C, kill and a closed terminal all end in the same teardown (SIGINT too when this was
    # started in the background of a script, where it would otherwise be ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("lab: interrupted, torn down", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
