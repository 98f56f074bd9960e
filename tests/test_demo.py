"""``twinlog demo``: runs end to end, converges, and leaves no mount or directory behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from twinlog import TwinLog
from twinlog.cli import main
from twinlog.demo import mount_points


@pytest.fixture
def demo_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo's temporary directory goes under this test's tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path))
    return tmp_path


def leftovers(root: Path) -> tuple[list[str], list[Path]]:
    mounts = [m for m in mount_points() if m.startswith(os.fspath(root))]
    dirs = list(root.glob("twinlog-demo-*"))
    return mounts, dirs


def test_demo_with_bind_mounts(
    demo_tmp: Path, bind_mounts_work: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    if not bind_mounts_work:
        pytest.skip("bind mounts need root")
    started = time.monotonic()
    assert main(["demo"]) == 0
    assert time.monotonic() - started < 10
    out = capsys.readouterr().out
    assert "bind mount of the other's log_dir" in out and "FALLBACK" not in out
    assert "cached: beta unreachable (not_mounted)" in out
    assert "reconcile on alpha: pushed 2 to beta, pulled 2 from beta" in out
    assert out.count("IN SYNC - 8 entries here, 8 on") == 2
    assert "identical views on both nodes: yes" in out
    view = out.split("4. Each node reads")[1].split("5. verify")[0]
    rows = [line for line in view.splitlines() if re.match(r"  \d\d:\d\d:\d\d\.", line)]
    assert len(rows) == 8 and all(" ! " not in row for row in rows)
    assert "cleaned up" in out
    assert leftovers(demo_tmp) == ([], [])


def test_demo_fallback_without_mounts(demo_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--no-mount"]) == 0
    out = capsys.readouterr().out
    assert "FALLBACK: --no-mount was given" in out and "require_mount=False" in out
    assert "cached: beta unreachable (cut)" in out
    assert "identical views on both nodes: yes" in out
    assert leftovers(demo_tmp) == ([], [])


def test_demo_cleans_up_after_ctrl_c(
    demo_tmp: Path,
    bind_mounts_work: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not bind_mounts_work:
        pytest.skip("bind mounts need root")
    seen: list[str] = []

    def interrupted(self: TwinLog) -> None:
        seen.extend(m for m in mount_points() if m.startswith(os.fspath(demo_tmp)))
        raise KeyboardInterrupt

    monkeypatch.setattr(TwinLog, "reconcile", interrupted)
    assert main(["demo"]) == 130
    assert len(seen) == 2  # both peer_dirs were mounted when Ctrl-C came
    out, err = capsys.readouterr()
    assert "cleaned up" in out and err == "twinlog: interrupted\n"
    assert leftovers(demo_tmp) == ([], [])


def test_demo_cleans_up_after_an_error(
    demo_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(self: TwinLog) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TwinLog, "verify", broken)
    assert main(["demo"]) == 2
    out, err = capsys.readouterr()
    assert "cleaned up" in out and "No space left on device" in err and "Traceback" not in err
    assert leftovers(demo_tmp) == ([], [])


def test_demo_subprocess_sigterm(demo_tmp: Path, bind_mounts_work: bool) -> None:
    """Killed with SIGTERM while running, the demo still unmounts and removes everything."""
    if not bind_mounts_work:
        pytest.skip("bind mounts need root")
    env = {**os.environ, "TMPDIR": os.fspath(demo_tmp)}
    with subprocess.Popen(
        [sys.executable, "-m", "twinlog", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the story has started: mounts are in place
            if line.startswith(b"1. Connected"):
                break
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert b"cleaned up" in rest and b"Traceback" not in err
    assert leftovers(demo_tmp) == ([], [])
