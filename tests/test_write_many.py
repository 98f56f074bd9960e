"""write_many(): a batch is one commit, with write()'s promise for every entry; and
``twinlog write -`` commits what arrives on stdin together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pairlib import Pair, assert_converged, log_ids
from twinlog import InvalidEntryError, InvalidTypeError, MessageTooLargeError, ReservedFieldError


def test_a_batch_is_one_commit_with_ids_in_order(pair: Pair) -> None:
    a = pair.twin("a")
    a.write("before")
    entries = a.write_many(["one", ("two", {"level": "WARNING", "n": 2}), "three"])
    assert [e.id for e in entries] == ["a:2", "a:3", "a:4"]
    assert [e.msg for e in entries] == ["one", "two", "three"]
    assert entries[1].fields == {"level": "WARNING", "n": 2}
    assert a.write_many([]) == []
    assert log_ids(pair.log_dir("b")) == ["a:1", "a:2", "a:3", "a:4"]
    assert_converged(pair, ["a:1", "a:2", "a:3", "a:4"])


def test_a_batch_with_the_peer_away_is_cached(pair: Pair) -> None:
    pair.cut("a")
    entries = pair.twin("a").write_many([f"m{i}" for i in range(50)])
    assert [e.seq for e in entries] == list(range(1, 51))
    cache = (pair.log_dir("a") / "twinlog.cache").read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in cache] == [e.id for e in entries]
    pair.heal()
    assert pair.twin("a").reconcile().pushed == 50
    assert_converged(pair, [e.id for e in entries])


@pytest.mark.no_mounts
@pytest.mark.parametrize(
    ("items", "error", "words"),
    [
        (["ok", 42], InvalidTypeError, "item 1: expected a message"),
        (["ok", ("x", {"seq": 1})], ReservedFieldError, "item 1: field name(s) seq"),
        ([("x" * 200, {})], MessageTooLargeError, "item 0: msg is 200 bytes"),
        (["ok", ("x", {"v": float("nan")})], InvalidEntryError, "item 1:"),
        (["ok", ("x", {"v": object()})], InvalidTypeError, "item 1:"),
        (["ok", ("x",)], InvalidTypeError, "item 1:"),
    ],
)
def test_one_bad_item_rejects_the_batch_before_anything_is_written(
    pair: Pair, items: list[object], error: type[Exception], words: str
) -> None:
    a = pair.twin("a", max_message_bytes=100)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        a.write_many(items)  # type: ignore[arg-type]
    assert log_ids(pair.log_dir("a")) == []
    assert a.write("next").id == "a:1"


def test_batches_of_threads_keep_their_ids_together(pair: Pair) -> None:
    a = pair.twin("a")
    got: dict[int, list[int]] = {}

    def batch(k: int) -> None:
        got[k] = [e.seq for e in a.write_many([f"t{k}-{i}" for i in range(20)])]

    threads = [threading.Thread(target=batch, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seqs in got.values():
        assert seqs == list(range(seqs[0], seqs[0] + 20))
    assert sorted(s for seqs in got.values() for s in seqs) == list(range(1, 81))
    assert_converged(pair, [f"a:{i}" for i in range(1, 81)])


def test_stdin_lines_that_arrive_together_share_a_commit(pair: Pair, tmp_path: Path) -> None:
    """Through a real pipe: 300 lines written at once are committed in a few batches (one
    fsync each), where one commit per line would take 300; a bad line is reported alone."""
    config = tmp_path / "a.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in pair.config_dict("a").items()))
    lines = [f"line {i}" for i in range(300)]
    lines[150] = "x" * 70000  # over max_message_bytes
    script = (
        "import sys, twinlog._election as election\n"
        "commits = []\n"
        "real = election.Election.commit\n"
        "def counted(self, batch):\n"
        "    commits.append(len(batch))\n"
        "    return real(self, batch)\n"
        "election.Election.commit = counted\n"
        "from twinlog.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('commits', len(commits), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "--config", str(config), "write", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "stdin line 151 not logged" in proc.stderr
    assert proc.stdout.split() == [f"a:{i}" for i in range(1, 300)]
    commits = int(proc.stderr.rsplit("commits ", 1)[1].split()[0])
    assert 1 <= commits <= 10, proc.stderr
    assert_converged(pair, [f"a:{i}" for i in range(1, 300)])


@pytest.mark.no_mounts
def test_a_line_alone_on_stdin_is_committed_without_waiting_for_more(
    pair: Pair, tmp_path: Path
) -> None:
    config = tmp_path / "a.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in pair.config_dict("a").items()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinlog", "--config", str(config), "write", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for i in range(3):
            proc.stdin.write(f"typed {i}\n")
            proc.stdin.flush()
            # Its id comes back while stdin stays open: the batch did not wait for more.
            assert proc.stdout.readline().strip() == f"a:{i + 1}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == 0
