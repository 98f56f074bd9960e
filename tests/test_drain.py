"""Draining a large cache: the writer judges each block of the local cache by its edges and its
line count, and the peer's worker copies it from the cache into the peer's log; a block that is
not exactly the next run (a gap) goes the slow way: read and checked by the writer, sent through
the worker's pipe, and what the cache lacks taken from the log."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

import twinlog._store
from pairlib import Pair, assert_converged, log_ids
from twinlog import _drain
from twinlog._fileops import DirOps
from twinlog._peer import RemoteOps
from twinlog.exceptions import PeerError, StorageError


def _fill_cache(pair: Pair, count: int) -> list[str]:
    a = pair.twin("a")
    pair.cut("a")
    acked = []
    for i in range(0, count, 50):
        # threads of one process share one commit: a quick way to a big cache
        acked += [a.write(f"entry {j} " + "x" * 150).id for j in range(i, min(i + 50, count))]
    a.close()
    return acked


@pytest.mark.parametrize("path", ["counted", "piped"])
def test_big_drain_is_copied_by_the_worker_block_by_block(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """``counted``: the writer counts each block's lines and the worker copies it from the cache.
    ``piped``: the writer reads and checks each block and sends it through the worker's pipe
    (what a block that failed the count gets)."""
    monkeypatch.setattr(twinlog._store, "DRAIN_CHUNK", 4096)  # many blocks, torn at the edges
    acked = _fill_cache(pair, 600)
    cache = (pair.log_dir("a") / "twinlog.cache").read_bytes()
    assert len(cache) > 20 * 4096
    copies: list[tuple[int, int]] = []
    real = RemoteOps.append_from_later

    def spy(self: RemoteOps, target: str, *copy: Any) -> Callable[[], int]:
        copies.append((copy[1], copy[2]))  # (offset, length)
        return real(self, target, *copy)

    if path == "counted":
        monkeypatch.setattr(RemoteOps, "append_from_later", spy)
    else:
        # The plain drain only: the counted one moves nothing, and the lines go one by one.
        monkeypatch.setattr(_drain, "_counted_runs", lambda *a: (0, a[3], 0))
    pair.connect("a")
    a = pair.twin("a")
    result = a.reconcile()
    assert result.pushed == 600
    if path == "counted":  # every byte of the cache went by copy, in order, as whole lines
        assert copies[0][0] == 0
        assert all(o2 == o1 + n1 for (o1, n1), (o2, _) in itertools.pairwise(copies))
        assert sum(n for _, n in copies) == len(cache)
    assert (pair.log_dir("b") / "twinlog.log").read_bytes() == cache
    assert not (pair.log_dir("a") / "twinlog.cache").exists()
    # the store's idea of the peer's log matches the file: the next write follows on
    e = a.write("after the drain")
    assert e.seq == 601
    assert log_ids(pair.log_dir("b"))[-1] == e.id
    assert_converged(pair, [*acked, e.id])


def test_a_gap_inside_a_block_fails_the_count_and_is_filled_from_the_log(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the log append and the cache append leaves the cache without an entry;
    the block around the gap has the right first and last seqs but one line too few. The writer
    counts it before any of it is copied: the worker never gets it (a worker killed while
    copying could otherwise have left the peer a log with a gap), and it goes the slow way."""
    monkeypatch.setattr(twinlog._store, "DRAIN_CHUNK", 4096)
    acked = _fill_cache(pair, 300)
    cache_file = pair.log_dir("a") / "twinlog.cache"
    lines = cache_file.read_bytes().splitlines(keepends=True)
    gap_at = sum(map(len, lines[:150]))  # the byte where a:151 was
    del lines[150]  # a:151, in the middle of some block
    cache_file.write_bytes(b"".join(lines))
    copies: list[tuple[int, int]] = []
    real = RemoteOps.append_from_later

    def spy(self: RemoteOps, target: str, *copy: Any) -> Callable[[], int]:
        copies.append((copy[1], copy[2]))  # (offset, length)
        return real(self, target, *copy)

    monkeypatch.setattr(RemoteOps, "append_from_later", spy)
    pair.connect("a")
    a = pair.twin("a")
    assert a.reconcile().pushed == 300
    assert copies, "no block was copied by the worker"
    assert all(offset + length <= gap_at for offset, length in copies), (
        "the worker was given the block with the gap, or one after it"
    )
    assert log_ids(pair.log_dir("b")) == acked  # all, once, in order
    assert_converged(pair, acked)


def test_drain_copy_that_fails_half_way_is_finished_by_the_next_write(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fifth deferred copy fails (seen when the transfer waits for it): the reconcile reports
    the peer unreachable, the peer holds a clean prefix, and the next write completes it."""
    monkeypatch.setattr(twinlog._store, "DRAIN_CHUNK", 4096)
    acked = _fill_cache(pair, 300)
    calls = 0

    def copy_in_process(self: RemoteOps, name: str, *copy: Any) -> Callable[[], int]:
        """The worker's copy, run here so that it can be made to fail."""
        nonlocal calls
        calls += 1
        if calls == 5:

            def fail() -> int:
                raise PeerError("io_error", "injected")

            return fail
        ops = DirOps(os.fspath(pair.peer_dir("a")))
        ops.open_dir("b", None, False)
        try:
            size = ops.append_from(name, *copy)
        finally:
            ops.close()
        return lambda: size

    monkeypatch.setattr(RemoteOps, "append_from_later", copy_in_process)
    pair.connect("a")
    a = pair.twin("a")
    first = a.reconcile()
    assert (first.peer_reachable, first.reason) == (False, "io_error")
    peer_ids = log_ids(pair.log_dir("b"))
    assert 0 < len(peer_ids) < len(acked)
    assert peer_ids == acked[: len(peer_ids)], "a prefix, in order, whole lines"
    assert (pair.log_dir("a") / "twinlog.cache").exists()
    e = a.write("next")
    assert a.last_reason == "ok"
    assert log_ids(pair.log_dir("b")) == [*acked, e.id]
    assert_converged(pair, [*acked, e.id])


def test_a_local_read_error_while_pushing_the_cache_is_a_storage_error_and_loses_nothing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own disk failing a read of the cache mid-drain: reconcile() and write() raise the
    documented StorageError (not a bare OSError), nothing is removed, and once the disk reads
    again the next reconcile delivers everything once."""
    acked = _fill_cache(pair, 120)
    pair.connect("a")
    a = pair.twin("a")

    def failing(self: DirOps, name: str, start: int, end: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(DirOps, "count_lines", failing)
        with pytest.raises(StorageError, match="cannot read the local cache or log"):
            a.reconcile()
        with pytest.raises(StorageError):
            a.write("while the disk fails")
    assert (pair.log_dir("a") / "twinlog.cache").exists()
    assert a.reconcile().pushed == 120
    e = a.write("after")
    assert_converged(pair, [*acked, e.id])
