"""The long soak: one history run (tests/history.py) for as long as asked, report to a file.

Run by hand, as root, from the repository root::

    .venv/bin/python tests/soak.py --seconds 600 [--writers 4] [--seed N] \\
        [--report docs/reliability.md]

It prints the seed first (pass it back with ``--seed`` to replay the same schedule), writes the
report between the ``soak-report`` markers of the report file (the rest of the file is left as
it is; a missing file or missing markers get a fresh section at the end), and exits 1 if any
invariant was violated. The run's directory (logs of both nodes, each writer's output,
``history/writers.jsonl``, ``history/events.log``) is kept on failure, or always with
``--keep``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from history import WRITER_POINTS, HistoryConfig, HistoryReport, run_history
from twinlog._failpoints import POINTS

START = "<!-- soak-report:start -->"
END = "<!-- soak-report:end -->"


def render(report: HistoryReport, cfg: HistoryConfig, command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpus = os.cpu_count()
    head = [
        START,
        f"Soak of {when} on {platform.system()} {platform.release()}, {cpus} CPUs, "
        f"Python {platform.python_version()}, commit {_commit()}; verdict: "
        + ("**all invariants held**" if report.ok else "**INVARIANTS VIOLATED**")
        + ".",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Settings: {cfg.writers_per_node} writers per node (each one of "
        f"{', '.join(cfg.writer_kinds)}, drawn), probe_timeout {cfg.probe_timeout} s, "
        f"io_timeout {cfg.io_timeout} s, lock_timeout {cfg.lock_timeout} s, rotate_bytes "
        f"{cfg.rotate_bytes}, a nemesis step every {cfg.step[0]}-{cfg.step[1]} s, each fault "
        f"lasting {cfg.fault_time[0]}-{cfg.fault_time[1]} s (hangs at most {cfg.max_hang} s), "
        f"failpoints armed: {', '.join(cfg.failpoints)}.",
        "",
        "",
    ]
    return "\n".join(head) + report.to_markdown() + END + "\n"


def _commit() -> str:
    """The checked-out commit (with "+changes" when the work tree differs from it)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", os.fspath(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", os.fspath(repo), "status", "--porcelain", "--", "src", "tests"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{head}`" + (" +changes" if dirty else "")


def write_report(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Reliability\n\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--report", type=Path, default=None, help="markdown file to update")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument(
        "--writers", type=int, default=2, help="writer processes per node (group commit: > 1)"
    )
    parser.add_argument(
        "--skip-failpoint", action="append", default=[], choices=POINTS, metavar="POINT"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"soak seed: {seed}", flush=True)
    failpoints = tuple(p for p in WRITER_POINTS if p not in args.skip_failpoint)
    cfg = HistoryConfig(
        seed=seed,
        duration=args.seconds,
        coverage_grace=120.0,
        failpoints=failpoints,
        writers_per_node=args.writers,
    )
    root = args.workdir or Path(tempfile.mkdtemp(prefix="twinlog-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    report = run_history(root, cfg, log=lambda line: print(line, flush=True))
    command = shlex.join(
        [".venv/bin/python", "tests/soak.py", *(argv if argv is not None else sys.argv[1:])]
    )
    if "--seed" not in command:
        command += f" --seed {seed}  # (the seed this run drew)"
    print(report.to_markdown())
    if args.report:
        write_report(args.report, render(report, cfg, command))
        print(f"report written to {args.report}")
    if report.ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"run directory kept: {root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
