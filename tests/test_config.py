from __future__ import annotations

from pathlib import Path

import pytest

from twinlog import Config, ConfigError, TwinLog, TwinlogError


def make(tmp_path: Path, **kw: object) -> Config:
    base: dict[str, object] = {
        "node": "a",
        "peer": "b",
        "log_dir": tmp_path / "log",
        "peer_dir": tmp_path / "peer",
    }
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def test_defaults(tmp_path: Path) -> None:
    c = make(tmp_path)
    assert (c.probe_timeout, c.io_timeout, c.require_mount, c.max_message_bytes, c.fsync) == (
        1.0,
        2.0,
        True,
        65536,
        True,
    )
    assert c.lock_timeout > 10  # longer than the role's NFS lease: a dead peer's lock is waited out
    assert c.log_dir == tmp_path / "log" and isinstance(c.log_dir, Path)


def test_relative_paths_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolved against the current directory, one config file would name a different log for
    # each caller: refused, naming the key (the issue that made it so: #17).
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="log_dir must be an absolute path, got 'log'"):
        Config("a", "b", "log", tmp_path / "peer")
    with pytest.raises(ConfigError, match="peer_dir must be an absolute path, got 'peer'"):
        Config("a", "b", tmp_path / "log", "peer")
    c = Config("a", "b", f"{tmp_path}/x/../log", f"{tmp_path}/peer")
    assert c.log_dir == tmp_path / "log" and c.peer_dir == tmp_path / "peer"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"peer": "a"}, "node and peer are both"),
        ({"node": ""}, "node must be"),
        ({"node": "a b"}, "node must be"),
        ({"peer": "x:y"}, "peer must be"),
        ({"node": 3}, "node must be"),
        ({"probe_timeout": 0}, "probe_timeout must be greater than 0"),
        ({"io_timeout": -1}, "io_timeout"),
        ({"lock_timeout": "5"}, "lock_timeout must be a number"),
        ({"io_timeout": float("nan")}, "io_timeout must be a number"),
        ({"require_mount": "yes"}, "require_mount must be true or false"),
        ({"max_message_bytes": 0}, "max_message_bytes must be between"),
        ({"max_message_bytes": True}, "max_message_bytes must be an integer"),
        ({"rotate_bytes": 10}, "rotate_bytes"),
        ({"retain_segments": 0}, "retain_segments"),
    ],
)
def test_invalid_values(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make(tmp_path, **overrides)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TwinlogError)


def test_peer_dir_resolving_to_log_dir(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="own log_dir"):
        make(tmp_path, peer_dir=tmp_path / "log")
    with pytest.raises(ConfigError, match="own log_dir"):
        make(tmp_path, peer_dir=tmp_path / "alias" / "log")
    with pytest.raises(ConfigError, match="own log_dir"):
        make(tmp_path, peer_dir=str(tmp_path / "x" / ".." / "log"))


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "twinlog.toml"
    path.write_text(text)
    return path


def test_load(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f'node = "a"\npeer = "b"\nlog_dir = "{tmp_path}/log"\npeer_dir = "{tmp_path}/peer"\n'
        "io_timeout = 0.5\nfsync = false\n",
    )
    c = Config.load(path)
    assert c.io_timeout == 0.5 and c.fsync is False and c.log_dir == tmp_path / "log"
    assert Config.from_mapping(c.to_dict()) == c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('node = "a"\n', "missing required key"),
        ('node = "a"\npeer = "b"\nlog_dir = "/x"\npeer_dir = "/y"\ncolour = 1\n', "unknown key"),
        ("node = \n", "not valid TOML"),
        ('node = "a"\npeer = "a"\nlog_dir = "/x"\npeer_dir = "/y"\n', "node and peer"),
    ],
)
def test_load_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(write_toml(tmp_path, text))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.toml")


def test_twinlog_needs_a_config() -> None:
    with pytest.raises(ConfigError):
        TwinLog({"node": "a"})  # type: ignore[arg-type]


def test_log_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "twinlog.node").write_text("b\n")
    with pytest.raises(ConfigError, match="belongs to node 'b'"):
        TwinLog(make(tmp_path))


def test_init_creates_log_dir_and_marker(tmp_path: Path) -> None:
    with TwinLog.init(make(tmp_path, log_dir=tmp_path / "deep" / "log")) as log:
        assert (tmp_path / "deep" / "log" / "twinlog.node").read_text() == "a\n"
        assert log.config.node == "a"
