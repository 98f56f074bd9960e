"""A two-node pair on one machine: two directories cross bind-mounted, and invariant checks.

Node ``a``'s ``peer_dir`` is a bind mount of node ``b``'s ``log_dir`` and the other way round,
so each node reaches the other's files through a real mount point, as with NFS. A partition is
an unmount (lazy, since a worker may hold files open); healing mounts again.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from twinlog import Config, TwinLog
from twinlog._group import Leadership


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    # JSON strings, numbers and booleans are valid TOML values.
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
    return path


def system_tool(name: str, package: str) -> str:
    """The path of a command tests check twinlog's output with. .ci/setup installs it (as root,
    as CI runs): missing as root is a failure; elsewhere the test is skipped."""
    found = shutil.which(name)
    if found is None:
        if os.geteuid() == 0:
            pytest.fail(f"{name} missing: .ci/setup installs it (Debian package {package})")
        pytest.skip(f"{name} not installed (Debian package {package}; .ci/setup as root)")
    return found


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == os.fspath(path) for line in f)


def can_bind_mount(tmp: Path) -> bool:
    src, dst = tmp / "probe-src", tmp / "probe-dst"
    src.mkdir()
    dst.mkdir()
    try:
        run("mount", "--bind", os.fspath(src), os.fspath(dst))
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False
    run("umount", os.fspath(dst))
    return True


@dataclass
class Pair:
    """Two nodes ``a`` and ``b`` under ``root``; TwinLog instances made on demand."""

    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    _open: list[TwinLog] = field(default_factory=list)

    def __post_init__(self) -> None:
        for node in ("a", "b"):
            self.log_dir(node).mkdir(parents=True, exist_ok=True)
            self.peer_dir(node).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def other(node: str) -> str:
        return "b" if node == "a" else "a"

    def log_dir(self, node: str) -> Path:
        return self.root / node / "log"

    def peer_dir(self, node: str) -> Path:
        return self.root / node / "peer"

    def config(self, node: str, **overrides: Any) -> Config:
        opts = {"probe_timeout": 2.0, "io_timeout": 3.0, "lock_timeout": 10.0, **self.options}
        opts.update(overrides)
        return Config(
            node=node,
            peer=self.other(node),
            log_dir=self.log_dir(node),
            peer_dir=self.peer_dir(node),
            **opts,
        )

    def config_dict(self, node: str) -> dict[str, Any]:
        return self.config(node).to_dict()

    def twin(self, node: str, **overrides: Any) -> TwinLog:
        log = TwinLog(self.config(node, **overrides))
        self._open.append(log)
        return log

    # -- the network -----------------------------------------------------------------------
    def connect(self, node: str) -> None:
        """Mount the other node's log_dir at ``node``'s peer_dir (``node`` reaches its peer)."""
        if not is_mounted(self.peer_dir(node)):
            self.log_dir(self.other(node)).mkdir(parents=True, exist_ok=True)
            run(
                "mount",
                "--bind",
                os.fspath(self.log_dir(self.other(node))),
                os.fspath(self.peer_dir(node)),
            )

    def cut(self, node: str) -> None:
        """``node`` can no longer reach its peer (lazy unmount: open files stay valid)."""
        if is_mounted(self.peer_dir(node)):
            run("umount", "-l", os.fspath(self.peer_dir(node)))

    def heal(self) -> None:
        self.connect("a")
        self.connect("b")

    def partition(self) -> None:
        self.cut("a")
        self.cut("b")

    def close(self) -> None:
        for log in self._open:
            log.close()
        self._open.clear()
        for node in ("a", "b"):
            while is_mounted(self.peer_dir(node)):
                run("umount", "-l", os.fspath(self.peer_dir(node)))


# -- invariants ---------------------------------------------------------------------------
def log_lines(log_dir: Path) -> list[bytes]:
    path = log_dir / "twinlog.log"
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"torn last line in {path}: {data[-80:]!r}"
    return data.splitlines()


def log_ids(log_dir: Path) -> list[str]:
    ids = []
    for line in log_lines(log_dir):
        ids.append(json.loads(line)["id"])
    return ids


def assert_converged(pair: Pair, acked: Iterable[str] = ()) -> None:
    """Both logs hold the same entries once each (every acknowledged one among them), no torn
    lines, each node's entries in their order, and read() is identical on both nodes."""
    ids = {node: log_ids(pair.log_dir(node)) for node in ("a", "b")}
    for node, node_ids in ids.items():
        dups = [i for i, n in collections.Counter(node_ids).items() if n > 1]
        assert not dups, f"duplicates in {node}'s log: {dups[:10]}"
        for origin in ("a", "b"):
            seqs = [int(i.split(":")[1]) for i in node_ids if i.startswith(origin + ":")]
            assert seqs == list(range(1, len(seqs) + 1)), (
                f"{origin} entries in {node}'s log out of order or gapped"
            )
    assert set(ids["a"]) == set(ids["b"]), (
        f"logs differ: only in a {sorted(set(ids['a']) - set(ids['b']))[:10]}, "
        f"only in b {sorted(set(ids['b']) - set(ids['a']))[:10]}"
    )
    missing = set(acked) - set(ids["a"])
    assert not missing, f"acknowledged entries lost: {sorted(missing)[:10]}"
    a, b = pair.twin("a"), pair.twin("b")
    view_a = [e.to_dict() for e in a.read()]
    view_b = [e.to_dict() for e in b.read()]
    assert view_a == view_b
    assert len(view_a) == len(ids["a"])
    result = a.verify()
    assert result.in_sync, result
    assert b.verify().in_sync


WRITER = Path(__file__).with_name("writer_proc.py")


def spawn(
    pair: Pair, node: str, count: int, *, failpoint: str = "", prefix: str = "w"
) -> subprocess.Popen[str]:
    """A writer process (``writer_proc.py``) on ``node``: it prints each acknowledged id.
    ``failpoint`` arms ``TWINLOG_FAILPOINTS`` for it (and only it)."""
    env = dict(os.environ)
    env.pop("TWINLOG_FAILPOINTS", None)
    if failpoint:
        env["TWINLOG_FAILPOINTS"] = failpoint
    return subprocess.Popen(
        [sys.executable, os.fspath(WRITER), json.dumps(pair.config_dict(node)), str(count), prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def write_through_a_leader(
    pair: Pair,
    leader: TwinLog,
    follower: TwinLog,
    msg: str,
    before_commit: Callable[[], None],
    **fields: Any,
) -> list[str]:
    """``follower.write(msg)`` in a thread, committed by ``leader`` as the group-commit leader
    (one ``_commit`` for it, after ``before_commit``); the ids the write returned."""
    assert leader._group_name is not None
    lead = Leadership.try_take(leader._group_name)
    assert lead is not None
    # The lock is busy (as while a leader waits for it), so the writer follows, not commits alone.
    holder = pair.twin(leader.config.node)
    holder._local_ops.lock(1.0)
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(follower.write(msg, **fields).id))
    t.start()
    deadline = time.monotonic() + 5
    while not lead.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    holder._local_ops.unlock()
    with leader._mutex:
        before_commit()
        leader._commit([], lead=lead)
    t.join(5)
    lead.close()
    return done
