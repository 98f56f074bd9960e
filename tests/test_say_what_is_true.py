"""What twinlog says: verify reports only what it compared, and error texts name the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pairlib import Pair, write_toml
from test_cli import run
from twinlog import InvalidEntryError, MessageTooLargeError
from twinlog.entry import RESERVED_FIELDS


def test_verify_without_the_peer_claims_no_comparison(
    capsys: pytest.CaptureFixture[str], conf: dict[str, str], pair: Pair
) -> None:
    pair.twin("a").write("only here")
    pair.cut("a")
    code, out, _ = run(capsys, "verify", "--json", config=conf["a"])
    data = json.loads(out)
    assert code == 1 and data["peer_reachable"] is False and data["in_sync"] is False
    assert data["note"] == "nothing compared: peer b not reachable (not_mounted)"
    assert "in full" not in out
    for key in ("local_entries", "peer_entries", "missing_on_local", "missing_on_peer"):
        assert data[key] is None, key  # not 0 or []: nothing was counted
    result = pair.twin("a").verify()
    assert result.note.startswith("nothing compared")
    code, out, _ = run(capsys, "verify", config=conf["a"])
    assert out == "CANNOT VERIFY - peer b not reachable: peer_dir is not a mount point\n"


def test_verify_text_says_when_one_side_expired_entries(
    capsys: pytest.CaptureFixture[str], pair: Pair, tmp_path: Path
) -> None:
    pair.options["retain_segments"] = 2
    a, b = pair.twin("a"), pair.twin("b")
    for i in range(5):
        a.write(f"a{i}")
        b.write(f"b{i}")
        a.rotate()
    conf_b = os.fspath(write_toml(tmp_path / "b.toml", pair.config_dict("b")))
    code, out, _ = run(capsys, "verify", config=conf_b)
    expired = b.verify().expired_on_peer
    assert code == 0 and expired > 0
    first, note = out.splitlines()
    assert first.startswith("IN SYNC - b and a hold the same ")
    assert note == (f"compared over the retained window: {expired} older entries expired on a only")
    # From a's side too (a is the side that expired them); with nothing expired, verify says
    # one line (test_cli.test_verify).
    conf_a = os.fspath(write_toml(tmp_path / "a.toml", pair.config_dict("a")))
    code, out, _ = run(capsys, "verify", config=conf_a)
    assert code == 0 and out.splitlines()[1] == note


def test_a_message_over_the_limit_names_the_key(
    capsys: pytest.CaptureFixture[str], pair: Pair, tmp_path: Path
) -> None:
    log = pair.twin("a", max_message_bytes=10)
    with pytest.raises(MessageTooLargeError) as info:
        log.write("x" * 11)
    text = str(info.value)
    assert "msg is 11 bytes, more than max_message_bytes=10" in text
    assert "max_message_bytes key of twinlog.toml" in text and "Config(max_message_bytes" in text
    with pytest.raises(MessageTooLargeError, match=r"extra fields are .* raise the limit"):
        log.write("x", note="y" * 20)
    data = pair.config_dict("a") | {"max_message_bytes": 10}
    conf = os.fspath(write_toml(tmp_path / "small.toml", data))
    code, _, err = run(capsys, "write", "x" * 11, config=conf)
    assert code == 2 and "max_message_bytes key of twinlog.toml" in err and err.count("\n") == 1


def test_text_that_is_not_utf8_says_which_byte(pair: Pair) -> None:
    log = pair.twin("a")
    with pytest.raises(InvalidEntryError) as info:
        log.write(b"caf\xe9 ok".decode("utf-8", "surrogateescape"))
    assert "msg is not valid UTF-8: byte 0xe9 at character 4" in str(info.value)
    assert "iconv" in str(info.value)
    with pytest.raises(InvalidEntryError, match="field 'k' is not valid UTF-8: byte 0xff"):
        log.write("ok", k=b"\xff".decode("utf-8", "surrogateescape"))
    with pytest.raises(InvalidEntryError, match="lone surrogate U\\+D800 at character 2"):
        log.write("x\ud800")


def test_an_argument_in_another_encoding(conf: dict[str, str], pair: Pair) -> None:
    """As a shell passes it: raw bytes in argv, not UTF-8."""
    base = [sys.executable.encode(), b"-m", b"twinlog", b"--config", conf["a"].encode(), b"write"]
    for extra, words in (
        ([b"caf\xe9"], "msg is not valid UTF-8: byte 0xe9 at character 4"),
        ([b"ok", b"--field", b"who=Andr\xe9"], "field 'who' is not valid UTF-8: byte 0xe9"),
    ):
        proc = subprocess.run([*base, *extra], capture_output=True, check=False, timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and words in err, err
        assert "lone surrogate" not in err and err.count("\n") == 1
    assert list(pair.twin("a").read()) == []


def test_write_help_lists_levels_and_reserved_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "write", "--help")
    flat = " ".join(out.split())
    assert code == 0
    assert "DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL" in flat
    assert ", ".join(sorted(RESERVED_FIELDS)) in flat
