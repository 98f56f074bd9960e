"""Configuration: one frozen dataclass, loadable from a flat TOML file with the same keys."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from twinlog.exceptions import ConfigError

__all__ = ["DEFAULT_CONFIG_PATH", "NODE_NAME_PATTERN", "Config"]

#: Where the CLI and the Ansible role put the configuration.
DEFAULT_CONFIG_PATH = Path("/etc/twinlog/twinlog.toml")

#: Node names appear in entry ids (``"<node>:<seq>"``) and file contents: keep them plain.
NODE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

MAX_MESSAGE_BYTES_CEILING = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a node needs to know about itself and its peer.

    ``log_dir`` is this node's directory (exported to the peer); ``peer_dir`` is where the
    peer's ``log_dir`` is mounted here. Timeouts are in seconds:

    * ``probe_timeout`` bounds the reachability check of the peer (identity + lock);
    * ``io_timeout`` bounds every other single peer operation (append, fsync, read a chunk);
    * ``lock_timeout`` bounds the wait for this node's own lock. It is longer than the NFS lease
      the Ansible role configures (10 s), so a lock left behind by a peer that died is waited out
      rather than turned into a failed write.

    ``group_commit`` lets the processes of this node that write at the same time share one
    lock hold and one fsync per file (one of them commits for all; see ``twinlog._group``).

    ``dedupe_window`` is how many of this node's own latest entries a write's idempotency
    ``key`` is looked up among (0: keys are stored but never looked up).

    ``witness``: each reconcile that reaches the peer logs the peer's chain head as an entry of
    this node (docs/security.md). Off in the library, so a log holds only what its programs
    write; the Ansible role turns it on, and its minute timer's reconciles witness.
    """

    node: str
    peer: str
    log_dir: Path
    peer_dir: Path
    probe_timeout: float = 1.0
    io_timeout: float = 2.0
    lock_timeout: float = 30.0
    require_mount: bool = True
    max_message_bytes: int = 65536
    fsync: bool = True
    group_commit: bool = True
    rotate_bytes: int = 64 * 1024 * 1024
    retain_segments: int | None = None
    retain_days: float | None = None
    dedupe_window: int = 10_000
    witness: bool = False

    def __post_init__(self) -> None:
        for name in ("node", "peer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not NODE_NAME_PATTERN.fullmatch(value):
                raise ConfigError(
                    f"{name} must be a name of letters, digits, '.', '_' or '-' "
                    f"(at most 64, starting with a letter or digit), got {value!r}"
                )
        if self.node == self.peer:
            raise ConfigError(
                f"node and peer are both {self.node!r}: the peer must be the other node"
            )
        for name in ("log_dir", "peer_dir"):
            value = getattr(self, name)
            if not isinstance(value, str | os.PathLike) or not os.fspath(value):
                raise ConfigError(f"{name} must be a path, got {value!r}")
            if not os.path.isabs(os.fspath(value)):
                # Resolved against the current directory, the same config would name a
                # different log for every caller (a shell, a systemd unit, a cron job).
                raise ConfigError(f"{name} must be an absolute path, got {os.fspath(value)!r}")
            # abspath only: resolving peer_dir itself would stat a possibly dead mount.
            object.__setattr__(self, name, Path(os.path.abspath(os.fspath(value))))
        if _resolve_without_touching_leaf(self.peer_dir) == self.log_dir.resolve():
            raise ConfigError(
                f"peer_dir {self.peer_dir} is this node's own log_dir: it must be the mount of the "
                "peer's log directory"
            )
        for name in ("probe_timeout", "io_timeout", "lock_timeout"):
            _check_number(name, getattr(self, name), positive=True)
        for name in ("require_mount", "fsync", "group_commit", "witness"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_int("max_message_bytes", self.max_message_bytes, 1, MAX_MESSAGE_BYTES_CEILING)
        _check_int("rotate_bytes", self.rotate_bytes, 4096, None)
        _check_int("dedupe_window", self.dedupe_window, 0, None)
        if self.retain_segments is not None:
            _check_int("retain_segments", self.retain_segments, 1, None)
        if self.retain_days is not None:
            _check_number("retain_days", self.retain_days, positive=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        """Read a flat TOML file whose keys are this class's fields."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)} does not exist") from None
        except PermissionError:
            raise ConfigError(f"config file {os.fspath(path)} is not readable") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {os.fspath(path)} is a directory") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {os.fspath(path)} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=os.fspath(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "configuration") -> Config:
        """Build a Config from a mapping, rejecting unknown and missing keys by name."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}"
            )
        required = [
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as TOML/JSON-friendly values (paths as strings, None left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = os.fspath(value) if isinstance(value, Path) else value
        return out


def _resolve_without_touching_leaf(path: Path) -> Path:
    return path.parent.resolve() / path.name


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
