"""DirOps appends: our own log and cache kept open between appends and never a stale file;
the counted copy a drain uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import twinlog._fileops
from twinlog._fileops import DirOps


@pytest.fixture
def ops(tmp_path: Path) -> DirOps:
    (tmp_path / "twinlog.node").write_text("a\n")
    ops = DirOps(os.fspath(tmp_path), keep_open=frozenset({"f"}))
    assert ops.open_dir("a", None, True) == "ok"
    return ops


def test_kept_file_follows_the_name_across_rename_and_unlink(ops: DirOps, tmp_path: Path) -> None:
    assert ops.append("f", [b"1\n"], True) == 2
    assert ops.append("f", [b"2\n"], True) == 4
    os.rename(tmp_path / "f", tmp_path / "f.1")  # a rotation by another process
    assert ops.append("f", [b"3\n"], True) == 2
    assert (tmp_path / "f.1").read_bytes() == b"1\n2\n"
    os.unlink(tmp_path / "f")  # a drain by the peer
    assert ops.append("f", [b"4\n"], True) == 2
    assert (tmp_path / "f").read_bytes() == b"4\n"
    (tmp_path / "f").unlink()
    (tmp_path / "f").write_bytes(b"other\n")  # a new file by that name: a new inode
    assert ops.append("f", [b"5\n"], True) == 8
    assert (tmp_path / "f").read_bytes() == b"other\n5\n"
    ops.close()


def test_only_named_files_stay_open_and_close_lets_go(ops: DirOps, tmp_path: Path) -> None:
    def open_names() -> set[str]:
        names = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                names.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        return names

    ops.append("f", [b"x\n"], True)
    ops.append("g", [b"y\n"], True)
    assert os.fspath(tmp_path / "f") in open_names()
    assert os.fspath(tmp_path / "g") not in open_names()
    ops.unlink("f")
    assert not any(name.startswith(os.fspath(tmp_path / "f")) for name in open_names())
    ops.append("f", [b"x\n"], True)
    ops.close()
    assert os.fspath(tmp_path / "f") not in open_names()


def test_failed_append_to_a_kept_file_cuts_back_and_reopens(
    ops: DirOps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops.append("f", [b"1\n"], True)
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        ops.append("f", [b"2\n"], True)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "f").read_bytes() == b"1\n"
    assert ops.append("f", [b"3\n"], True) == 4
    assert (tmp_path / "f").read_bytes() == b"1\n3\n"
    ops.close()


def test_forked_child_appends_through_its_own_descriptor(ops: DirOps, tmp_path: Path) -> None:
    ops.append("f", [b"parent\n"], True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            ops.append("f", [b"child\n"], True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ops.append("f", [b"parent again\n"], True)
    assert (tmp_path / "f").read_bytes() == b"parent\nchild\nparent again\n"
    ops.close()


def _log_and_source(tmp_path: Path, source: bytes) -> str:
    """A log holding ``one`` and a source file for the counted copy; the source's path."""
    (tmp_path / "twinlog.log").write_bytes(b"one\n")
    src = tmp_path / "src"
    src.write_bytes(source)
    return os.fspath(src)


def test_append_from_a_short_source_is_refused_and_leaves_the_target_as_it_was(
    ops: DirOps, tmp_path: Path
) -> None:
    src = _log_and_source(tmp_path, b"two\nthree\n")
    assert ops.append_from("twinlog.log", src, 4, 6, True) == 10
    assert (tmp_path / "twinlog.log").read_bytes() == b"one\nthree\n"
    assert ops.append_from("twinlog.log", src, 4, 100, False) == -1
    assert (tmp_path / "twinlog.log").read_bytes() == b"one\nthree\n"
    ops.close()


def test_append_from_refuses_a_run_that_does_not_end_a_line(ops: DirOps, tmp_path: Path) -> None:
    src = _log_and_source(tmp_path, b"two\nthree\nfour")
    assert ops.append_from("twinlog.log", src, 0, 14, False) == -1  # torn
    assert ops.append_from("twinlog.log", src, 0, 0, False) == -1
    assert (tmp_path / "twinlog.log").read_bytes() == b"one\n"
    assert ops.append_from("twinlog.log", src, 0, 10, True) == 14
    assert (tmp_path / "twinlog.log").read_bytes() == b"one\ntwo\nthree\n"
    ops.close()


def test_append_from_copies_through_a_buffer_smaller_than_the_run(
    ops: DirOps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(twinlog._fileops, "_COPY_BUFFER", 7)
    lines = b"".join(f"line {i}\n".encode() for i in range(100))
    src = _log_and_source(tmp_path, b"head\n" + lines)
    assert ops.append_from("twinlog.log", src, 5, len(lines), False) == 4 + len(lines)
    assert (tmp_path / "twinlog.log").read_bytes() == b"one\n" + lines
    ops.close()


@pytest.mark.parametrize("buffer", [1, 3, 64, 1 << 18])
def test_count_lines_counts_the_newlines_of_a_range_whatever_the_buffer(
    ops: DirOps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer: int
) -> None:
    monkeypatch.setattr(twinlog._fileops, "_COPY_BUFFER", buffer)
    data = b"".join(f"{'x' * (i % 9)}\n".encode() for i in range(50))
    (tmp_path / "twinlog.cache").write_bytes(data)
    assert ops.count_lines("twinlog.cache", 0, len(data)) == 50
    assert ops.count_lines("twinlog.cache", 1, len(data)) == 49  # without the first line
    assert ops.count_lines("twinlog.cache", 0, len(data) - 1) == 49  # without the last
    assert ops.count_lines("twinlog.cache", 5, 5) == 0
    with pytest.raises(OSError):
        ops.count_lines("twinlog.cache", 0, len(data) + 1)
    ops.close()
