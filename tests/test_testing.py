"""twinlog.testing.LocalPair: the shipped test double, as an application would use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest

import twinlog
from pairlib import assert_converged, log_ids
from twinlog.testing import LocalPair


def test_the_example_from_the_docstring(tmp_path: Path) -> None:
    with LocalPair(tmp_path) as pair:
        x = pair.a.write("x")
        assert pair.a.last_reason == "ok"
        pair.cut()
        y = pair.b.write("y")
        assert pair.b.last_reason == "cut"
        assert pair.a.reconcile().reason == "cut"
        assert log_ids(pair.log_dir("a")) == [x.id]
        result = pair.heal()
        assert result.peer_reachable and result.pulled == 1
        assert log_ids(pair.log_dir("a")) == log_ids(pair.log_dir("b")) == [x.id, y.id]
        assert [e.msg for e in pair.a.read()] == [e.msg for e in pair.b.read()] == ["x", "y"]
        assert pair.a.status()["in_sync"]


def test_a_cut_in_one_direction(tmp_path: Path) -> None:
    with LocalPair(tmp_path) as pair:
        pair.cut("a")  # a cannot reach b; b still reaches a
        a1 = pair.a.write("from a")
        b1 = pair.b.write("from b")
        assert pair.a.last_reason == "cut" and pair.b.last_reason == "ok"
        assert pair.a.status()["peer_reason"] == "cut"
        # b's write found a's cache (step 4B) and took it first, then wrote to both logs.
        assert log_ids(pair.log_dir("a")) == [a1.id, b1.id]
        assert log_ids(pair.log_dir("b")) == [a1.id, b1.id]
        assert not (pair.log_dir("a") / "twinlog.cache").exists()
        b2 = pair.b.write("again from b")
        pair.heal()
        assert_converged(pair, [a1.id, b1.id, b2.id])


def test_options_reach_both_configs_and_another_instance_shares_the_link(tmp_path: Path) -> None:
    with LocalPair(tmp_path, fsync=False, probe_timeout=0.5) as pair:
        assert not pair.a.config.fsync and pair.b.config.probe_timeout == 0.5
        assert not pair.a.config.require_mount
        second = pair.open("a")  # another process of node a, as it were
        pair.cut("a")
        second.write("cached")
        assert second.last_reason == "cut"
        pair.connect("a")
        second.write("delivered")
        assert second.last_reason == "ok"
        assert log_ids(pair.log_dir("b")) == ["a:1", "a:2"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_it_runs_as_a_user_without_root(request: pytest.FixtureRequest) -> None:
    """What an application's CI does: no root, no mounts, the real worker process."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop root for this test")
    # Not under tmp_path: pytest's base directory is root's own (mode 0700).
    home = Path(tempfile.mkdtemp(prefix="twinlog-nonroot-"))
    os.chown(home, 65534, 65534)
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from twinlog.testing import LocalPair

        assert os.geteuid() != 0
        with LocalPair(Path(sys.argv[1])) as pair:
            pair.a.write("x")
            pair.cut()
            pair.b.write("y")
            assert pair.b.last_reason == "cut", pair.b.last_reason
            assert pair.heal().peer_reachable
            ids = [e.id for e in pair.a.read()]
            assert ids == [e.id for e in pair.b.read()] == ["a:1", "b:1"], ids
            assert pair.a.peer_worker_stats()["spawned"] >= 1
        print("ok as", os.geteuid())
        """
    )
    python, path = _interpreter_for_others()
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        [*nobody, python, "-c", script, os.fspath(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": os.fspath(home), "PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok as 65534"


def _interpreter_for_others() -> tuple[str, str]:
    """A Python another user can run (this one may live under root's home, as pyenv's does),
    and the path that finds twinlog and psutil from it."""
    path = os.pathsep.join(
        os.fspath(Path(module.__file__ or "").parents[1]) for module in (twinlog, psutil)
    )
    for candidate in (
        sys.executable,
        f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
    ):
        real = Path(os.path.realpath(candidate))
        if real.exists() and all(p.stat().st_mode & 0o001 for p in real.parents):
            return candidate, path
    pytest.fail(
        f"no Python {sys.version_info[:2]} that user nobody can run (tried {sys.executable})"
    )
