"""A two-node pair under one directory, for tests: twinlog's own and your application's.

No root and no mounts: each node's ``peer_dir`` is the other node's ``log_dir``, and the link
between them is a :class:`SwitchLink` that :meth:`LocalPair.cut` and :meth:`LocalPair.heal`
turn off and on. Everything else is the real thing: the same commit, the same locks, the peer
reached through the same killable worker process, the same files on disk::

    from twinlog.testing import LocalPair

    with LocalPair(tmp_path) as pair:    # nodes "a" and "b"; pair.a, pair.b are TwinLog
        pair.a.write("x")
        pair.cut()                       # both directions; pair.cut("a"): a cannot reach b
        pair.b.write("y")                # cached on b
        pair.heal()                      # pair.a.reconcile(): delivers both ways
        assert [e.msg for e in pair.a.read()] == [e.msg for e in pair.b.read()]

With ``mounts=True`` (root only) each ``peer_dir`` is a bind mount of the other's ``log_dir``,
as an NFS mount would be, and a cut is a lazy unmount: the demo, twinlog's tests of the mount
checks and the benchmarks use that.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

from twinlog._api import ReconcileResult, TwinLog
from twinlog._reach import PeerLink
from twinlog.config import Config

__all__ = ["LocalPair", "SwitchLink", "TwoNodes", "mount_points"]


class SwitchLink:
    """A :class:`~twinlog._reach.PeerLink` switched by a file: while ``flag`` exists, the node
    cannot reach its peer (reason ``"cut"``). Another process can build the same link from the
    same path (see :meth:`LocalPair.link`)."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def down(self) -> str | None:
        return "cut" if os.path.lexists(self.flag) else None


def mount_points() -> set[str]:
    """Mount points of this process's namespace (``/proc/self/mounts``, octal escapes decoded)."""
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return {
            line.split()[1].encode("latin-1", "surrogateescape").decode("unicode_escape")
            for line in f
            if len(line.split()) > 1
        }


class TwoNodes:
    """Two nodes' directories under ``root`` (``root/<node>/log``) and the link between them,
    without opening anything: what :class:`LocalPair`, the demo, twinlog's tests and its
    benchmarks share. ``options`` are :class:`~twinlog.Config` fields for both nodes."""

    def __init__(
        self,
        root: Path | str,
        *,
        mounts: bool = False,
        nodes: tuple[str, str] = ("a", "b"),
        **options: Any,
    ) -> None:
        self.root = Path(root).absolute()
        self.mounts = mounts
        self.nodes = nodes
        self.options = options
        self._open: list[TwinLog] = []
        for node in nodes:
            self.log_dir(node).mkdir(parents=True, exist_ok=True)
            if mounts:
                self.peer_dir(node).mkdir(parents=True, exist_ok=True)
        if not mounts:
            self._flags.mkdir(exist_ok=True)

    def other(self, node: str) -> str:
        return self.nodes[1] if node == self.nodes[0] else self.nodes[0]

    def log_dir(self, node: str) -> Path:
        return self.root / node / "log"

    def peer_dir(self, node: str) -> Path:
        """Where ``node`` reaches its peer: the peer's own ``log_dir``, or with ``mounts`` a
        mount point of it."""
        if self.mounts:
            return self.root / node / "peer"
        return self.log_dir(self.other(node))

    def config(self, node: str, **overrides: Any) -> Config:
        options = {**self.options, **overrides}
        if not self.mounts:
            options["require_mount"] = False
        return Config(
            node=node,
            peer=self.other(node),
            log_dir=self.log_dir(node),
            peer_dir=self.peer_dir(node),
            **options,
        )

    def link(self, node: str) -> PeerLink | None:
        """The link ``node`` reaches its peer through (None: the real one, the mount check)."""
        return None if self.mounts else SwitchLink(self._flags / node)

    def open(self, node: str, **overrides: Any) -> TwinLog:
        """A :class:`~twinlog.TwinLog` of ``node`` (another one is as another process of the
        node), closed with the pair."""
        twin = TwinLog(self.config(node, **overrides), link=self.link(node))
        self._open.append(twin)
        return twin

    # -- the link -----------------------------------------------------------------------------
    def cut(self, node: str | None = None) -> None:
        """``node`` can no longer reach its peer; both directions when no node is given. With
        ``mounts``, a lazy unmount (a worker may still hold files open)."""
        for each in self.nodes if node is None else (node,):
            if not self.mounts:
                (self._flags / each).touch()
                continue
            while self.is_connected(each):
                _run("umount", "-l", os.fspath(self.peer_dir(each)))

    def connect(self, node: str | None = None) -> None:
        """``node`` reaches its peer again (both when no node is given); nothing is delivered
        until the next write or reconcile."""
        for each in self.nodes if node is None else (node,):
            if not self.mounts:
                with contextlib.suppress(FileNotFoundError):
                    (self._flags / each).unlink()
            elif not self.is_connected(each):
                source = self.log_dir(self.other(each))
                _run("mount", "--bind", os.fspath(source), os.fspath(self.peer_dir(each)))

    def is_connected(self, node: str) -> bool:
        if not self.mounts:
            return not (self._flags / node).exists()
        return os.fspath(self.peer_dir(node)) in mount_points()

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close every instance opened here; with ``mounts``, unmount."""
        for twin in self._open:
            twin.close()
        self._open.clear()
        if self.mounts:
            self.cut()

    @property
    def _flags(self) -> Path:
        return self.root / "cut"


class LocalPair(TwoNodes):
    """Nodes ``a`` and ``b`` under ``root``, connected, with one :class:`~twinlog.TwinLog`
    each (:attr:`a`, :attr:`b`); more with :meth:`open`."""

    def __init__(self, root: Path | str, *, mounts: bool = False, **options: Any) -> None:
        super().__init__(root, mounts=mounts, **options)
        self.a = self.open("a")
        self.b = self.open("b")
        self.connect()

    def heal(self) -> ReconcileResult:
        """Reconnect both directions, then ``a.reconcile()``: both caches drain."""
        self.connect()
        return self.a.reconcile()

    def __enter__(self) -> LocalPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)
