"""The hash chain (issue 22): every tampering class found, with its place; none in a clean pair."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairlib import Pair
from twinlog import TwinLog
from twinlog._chain import GENESIS, seal, split_chain, unsealed
from twinlog.cli import main
from twinlog.testing import LocalPair


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[LocalPair]:
    """A connected pair without mounts (twinlog.testing) with a few entries of each node,
    and each node's reconcile (so each has witnessed the other's head)."""
    with LocalPair(tmp_path, witness=True) as p:
        for i in range(6):
            p.a.write(f"a{i}", volume=i)
            p.b.write(f"b{i}")
        p.a.write_many([f"batch{i}" for i in range(4)])
        p.a.reconcile()
        p.b.reconcile()
        yield p


def log_of(p: LocalPair, node: str) -> Path:
    return Path(getattr(p, node).config.log_dir) / "twinlog.log"


def rewrite(path: Path, change) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(change(lines)))


def index_of(lines: list[bytes], entry_id: str) -> int:
    return next(
        i for i, line in enumerate(lines) if line.startswith(b'{"id":"%s"' % entry_id.encode())
    )


def offset_of(path: Path, entry_id: str) -> int:
    lines = path.read_bytes().splitlines(keepends=True)
    return sum(len(line) for line in lines[: index_of(lines, entry_id)])


def kinds(result) -> list[tuple[str, str, str]]:
    return [(b.node, b.kind, b.id) for b in result.broken]


def test_the_chain_is_sha256_over_the_previous_link_and_the_line(twins: LocalPair) -> None:
    lines = [line for line in log_of(twins, "a").read_bytes().splitlines(keepends=True)]
    prev = GENESIS
    for line in (ln for ln in lines if ln.startswith(b'{"id":"a:')):
        body, chain = split_chain(line)
        assert chain == hashlib.sha256(prev + body).digest()
        assert json.loads(line)["chain"] == chain.hex()
        prev = chain
    # Both nodes hold the same bytes: drains copy lines as they are.
    assert sorted(lines) == sorted(log_of(twins, "b").read_bytes().splitlines(keepends=True))


def test_seal_and_unsealed_round_trip() -> None:
    line = b'{"id":"a:1","node":"a","seq":1,"ts":"2026-01-01T00:00:00.000000Z","msg":"x"}\n'
    sealed, digest = seal(line, GENESIS)
    assert unsealed(sealed) == line
    assert split_chain(sealed) == (line[:-1], digest)
    assert unsealed(line) == line and split_chain(line) is None


def test_a_clean_pair_verifies_deep_without_a_break(twins: LocalPair) -> None:
    for node in (twins.a, twins.b):
        result = node.verify(deep=True)
        assert result.in_sync and result.heads_agree and result.deep
        assert result.broken == [] and result.unchained == {}
        assert result.lines_checked == 2 * result.local_entries


def test_entries_carry_their_chain_but_compare_without_it(twins: LocalPair) -> None:
    entry = twins.a.write("x")
    (read,) = [e for e in twins.b.read() if e.id == entry.id]
    assert read == entry and len(read.chain) == 64 and "chain" not in read.fields


def test_an_edited_byte_is_a_broken_link_at_its_line(twins: LocalPair) -> None:
    path = log_of(twins, "a")
    at = offset_of(path, "a:3")
    rewrite(path, lambda ls: [ln.replace(b'"msg":"a2"', b'"msg":"a7"') for ln in ls])
    result = twins.b.verify(deep=True)
    assert kinds(result) == [("a", "link", "a:3")]
    assert (result.broken[0].file, result.broken[0].offset) == ("twinlog.log", at)
    assert not result.in_sync and result.conflicts == ["a:3"]


def test_a_deleted_line_is_a_gap(twins: LocalPair) -> None:
    path = log_of(twins, "b")
    rewrite(path, lambda ls: [ln for ln in ls if not ln.startswith(b'{"id":"a:4"')])
    result = twins.a.verify(deep=True)
    assert ("b", "gap", "a:5") in kinds(result)
    assert result.missing_on_peer == ["a:4"]


def test_an_inserted_line_is_found(twins: LocalPair) -> None:
    path = log_of(twins, "a")

    def insert(lines: list[bytes]) -> list[bytes]:
        i = index_of(lines, "b:3")
        forged = lines[i].replace(b'"msg":"b2"', b'"msg":"forged"')
        return [*lines[: i + 1], forged, *lines[i + 1 :]]

    rewrite(path, insert)
    result = twins.a.verify(deep=True)
    assert ("a", "duplicate", "b:3") in kinds(result)


def test_a_reordered_pair_is_out_of_order(twins: LocalPair) -> None:
    path = log_of(twins, "a")

    def swap(lines: list[bytes]) -> list[bytes]:
        i, j = index_of(lines, "a:2"), index_of(lines, "a:3")
        lines[i], lines[j] = lines[j], lines[i]
        return lines

    rewrite(path, swap)
    assert ("a", "order", "a:2") in kinds(twins.a.verify(deep=True))


def test_a_truncated_tail_is_found_against_the_peer(twins: LocalPair) -> None:
    path = log_of(twins, "a")
    rewrite(path, lambda ls: ls[: index_of(ls, "a:8")])
    result = twins.b.verify(deep=True)
    truncated = [b for b in result.broken if b.kind == "truncated"]
    # a's log lacks entries of its own b holds (a:8 on), and the one b witnessed (a:10).
    assert sorted(b.id for b in truncated) == ["a:10", "a:8"]
    assert {(b.node, b.file, b.offset) for b in truncated} == {
        ("a", "twinlog.log", path.stat().st_size)
    }


def test_a_rewrite_with_the_chain_recomputed_is_caught_by_the_witness(twins: LocalPair) -> None:
    """Root on a rewrites a:2 and recomputes every chain after it: each link holds, but b
    witnessed a's head before, and a's copy no longer carries the chain b saw."""
    witnessed = [e for e in twins.b.read() if e.node == "b" and "witness" in e.fields]
    assert witnessed, "b's reconcile logged a witness of a's head"
    seen = witnessed[-1]["witness"]
    path = log_of(twins, "a")

    def forge(lines: list[bytes]) -> list[bytes]:
        prev = GENESIS
        out = []
        for line in lines:
            new = line
            if line.startswith(b'{"id":"a:'):
                if line.startswith(b'{"id":"a:2"'):
                    new = line.replace(b'"msg":"a1"', b'"msg":"nothing happened"')
                new, prev = seal(unsealed(new), prev)
            out.append(new)
        return out

    assert twins.b.status()["heads_agree"] is True
    rewrite(path, forge)
    status = twins.b.status()
    assert status["heads_agree"] is False
    assert status["chain_heads"]["a"]["a"] != status["chain_heads"]["a"]["b"]
    result = twins.b.verify(deep=True)
    assert not [b for b in result.broken if b.kind == "link"]
    witness_id = f"a:{seen['seq']}"
    assert ("a", "witness", witness_id) in kinds(result)
    assert not [b for b in result.broken if b.node == "b"]
    assert not result.heads_agree


def test_verify_deep_exits_2_and_names_the_place(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair
) -> None:
    """On the bind-mounted pair, through the command."""
    for i in range(3):
        pair.twin("a").write(f"a{i}")
    assert main(["--config", conf["b"], "verify", "--deep"]) == 0
    capsys.readouterr()
    path = pair.log_dir("a") / "twinlog.log"
    at = offset_of(path, "a:2")
    rewrite(path, lambda ls: [ln.replace(b'"msg":"a1"', b'"msg":"a9"') for ln in ls])
    assert main(["--config", conf["b"], "verify", "--deep"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "TAMPERED OR DAMAGED - 1 break in the hash chains"
    assert out[1] == (
        f"  link at a:2 (a:twinlog.log@{at}): its chain does not match its content and the "
        "entry before it"
    )
    assert main(["--config", conf["b"], "verify", "--deep", "--json"]) == 2
    (found,) = json.loads(capsys.readouterr().out)["broken"]
    assert (found["node"], found["id"], found["offset"], found["kind"]) == ("a", "a:2", at, "link")


def test_logs_from_before_the_chain_are_an_unchained_prefix(tmp_path: Path) -> None:
    with LocalPair(tmp_path) as p:
        old = [
            b'{"id":"a:%d","node":"a","seq":%d,"ts":"2026-01-01T00:00:0%d.000000Z","msg":"old"}\n'
            % (i, i, i)
            for i in (1, 2, 3)
        ]
        for node in ("a", "b"):
            log_of(p, node).write_bytes(b"".join(old))
        with TwinLog(p.a.config) as a:
            a.write("new")
        result = p.b.verify(deep=True)
        assert result.broken == [] and result.in_sync
        assert result.unchained == {"a": {"a": 3}, "b": {"a": 3}}


def test_witnesses_only_when_configured_and_never_of_a_witness(tmp_path: Path) -> None:
    with LocalPair(tmp_path, witness=True) as p:
        p.a.write("x")
        p.b.write("y")
        for _ in range(3):  # idle nodes do not witness each other's witnesses
            p.a.reconcile()
            p.b.reconcile()
        witnesses = [e for e in p.a.read() if "witness" in e.fields]
        assert [(e.node, e.msg) for e in witnesses] == [
            ("a", "twinlog witnessed b:1"),
            ("b", "twinlog witnessed a:1"),
        ]
        assert witnesses[0]["level"] == "DEBUG"
        assert (
            witnesses[0]["witness"]["chain"] == next(e for e in p.a.read() if e.id == "b:1").chain
        )
    with LocalPair(tmp_path / "off") as p:
        p.a.write("x")
        p.b.write("y")
        p.a.reconcile()
        assert not [e for e in p.a.read() if "witness" in e.fields]


def test_deep_checks_only_what_is_new_unless_full(twins: LocalPair) -> None:
    first = twins.a.verify(deep=True)
    assert first.lines_checked == 2 * first.local_entries and not first.broken
    for i in range(3):
        twins.a.write(f"new{i}")
    again = twins.a.verify(deep=True)
    assert (again.lines_checked, again.broken) == (6, [])  # the three new lines on each node
    # An old line edited the same way on both nodes since: the copies still agree, and the
    # check of what is new does not see it; --full does.
    for node in ("a", "b"):
        rewrite(
            log_of(twins, node), lambda ls: [ln.replace(b'"msg":"a2"', b'"msg":"a8"') for ln in ls]
        )
    assert twins.a.verify(deep=True).broken == []
    full = twins.a.verify(full=True)
    assert full.deep and full.lines_checked == 2 * full.local_entries
    assert kinds(full) == [("a", "link", "a:3"), ("b", "link", "a:3")]
    # Copies that differ: the whole of both logs, whatever was verified before.
    rewrite(log_of(twins, "b"), lambda ls: [ln.replace(b'"msg":"a8"', b'"msg":"a9"') for ln in ls])
    differ = twins.a.verify(deep=True)
    assert differ.lines_checked == 2 * differ.local_entries and differ.conflicts == ["a:3"]


def test_deep_starts_over_when_the_verified_part_changed(twins: LocalPair) -> None:
    """A rollback or a rewrite of the end of what was verified: all of it again."""
    assert twins.a.verify(deep=True).broken == []
    for node in ("a", "b"):  # the same on both: the copies agree, the heads too
        path = log_of(twins, node)
        rewrite(path, lambda ls: [*ls[:-1], ls[-1].replace(b'"msg":"', b'"msg":"X')])
    result = twins.a.verify(deep=True)
    assert result.conflicts == [] and result.heads_agree
    assert result.lines_checked == 2 * result.local_entries
    assert [(b.node, b.kind) for b in result.broken] == [("a", "link"), ("b", "link")]
