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
from pathlib import Path
from typing import Any

import pytest

from twinlog import TwinLog
from twinlog._chain import GENESIS, seal, split_chain
from twinlog._commit import Commit
from twinlog._group import Leadership
from twinlog.entry import parse_key
from twinlog.testing import TwoNodes, mount_points


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
    return os.fspath(path) in mount_points()


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


class Pair(TwoNodes):
    """Two nodes ``a`` and ``b`` under ``root``, each ``peer_dir`` a bind mount of the other's
    ``log_dir`` (root only), or without ``mounts`` the other's ``log_dir`` itself behind a
    switched link (``twinlog.testing``); TwinLog instances made on demand, with test timeouts.
    """

    def __init__(
        self, root: Path, options: dict[str, Any] | None = None, *, mounts: bool = True
    ) -> None:
        defaults = {"probe_timeout": 2.0, "io_timeout": 3.0, "lock_timeout": 10.0}
        super().__init__(root, mounts=mounts, **{**defaults, **(options or {})})

    def config_dict(self, node: str) -> dict[str, Any]:
        return self.config(node).to_dict()

    def twin(self, node: str, **overrides: Any) -> TwinLog:
        return self.open(node, **overrides)

    def heal(self) -> None:
        """Both nodes reach their peers again (without delivering anything yet)."""
        self.connect()

    def partition(self) -> None:
        self.cut()


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


def assert_converged(pair: TwoNodes, acked: Iterable[str] = ()) -> None:
    """Both logs hold the same entries once each (every acknowledged one among them), no torn
    lines, each node's entries in their order, read() is identical on both nodes, and every
    link of both nodes' hash chains holds."""
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
    a, b = pair.open("a"), pair.open("b")
    view_a = [e.to_dict() for e in a.read()]
    view_b = [e.to_dict() for e in b.read()]
    assert view_a == view_b
    assert len(view_a) == len(ids["a"])
    result = a.verify(deep=True)  # and no break in either node's hash chains (issue 22)
    assert result.in_sync and not result.broken, result
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
    assert leader._election is not None
    lead = Leadership.try_take(leader._election.name)
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
        Commit(leader._sides, leader._stats, [], lead=lead).run()
    t.join(5)
    lead.close()
    return done


def sealed_after(log_dir: Path, line: bytes) -> bytes:
    """``line`` (an encoded entry) sealed as its origin's process would have: chained to the
    origin's newest entry in ``log_dir``'s active log (what a test fakes a dead process wrote)."""
    origin = (parse_key(line) or ("",))[0]
    prev = GENESIS
    for found in log_lines(log_dir):
        key = parse_key(found + b"\n")
        if key is not None and key[0] == origin:
            link = split_chain(found + b"\n")
            prev = link[1] if link is not None else GENESIS
    return seal(line, prev)[0]
