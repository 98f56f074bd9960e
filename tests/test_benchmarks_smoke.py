"""The benchmark harness runs end to end with tiny sizes and prints every row (no timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.fspath(REPO))

from benchmarks import ROW_KEYS  # noqa: E402


def test_quick_run_produces_every_row(tmp_path: Path, bind_mounts_work: bool) -> None:
    if not bind_mounts_work:
        pytest.skip("the benchmarks bind-mount a pair: run as root")
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--dir",
            os.fspath(tmp_path),
            "--json",
            os.fspath(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert [row["key"] for row in rows] == list(ROW_KEYS)
    for row in rows:
        assert row["twinlog"], row
        assert row["label"] in proc.stdout
    # Nothing left mounted under the run's directory.
    with open("/proc/self/mounts", encoding="utf-8") as f:
        assert not [line for line in f if os.fspath(tmp_path) in line]
