"""The public surface other work relies on: names, error tree, signatures."""

from __future__ import annotations

import inspect

import twinlog
from twinlog import exceptions


def test_all_is_pinned_and_sorted() -> None:
    assert twinlog.__all__ == [
        "Config",
        "ConfigError",
        "Entry",
        "InvalidEntryError",
        "InvalidQueryError",
        "InvalidTypeError",
        "LockTimeoutError",
        "MessageTooLargeError",
        "NotInitialisedError",
        "PeerError",
        "ReconcileResult",
        "RepairResult",
        "ReservedFieldError",
        "StorageError",
        "TwinLog",
        "TwinlogError",
        "VerifyResult",
    ]
    for name in twinlog.__all__:
        assert getattr(twinlog, name) is not None


def test_every_error_is_a_twinlog_error_and_a_builtin() -> None:
    builtins = {
        "ConfigError": ValueError,
        "InvalidEntryError": ValueError,
        "InvalidQueryError": ValueError,
        "MessageTooLargeError": ValueError,
        "ReservedFieldError": ValueError,
        "InvalidTypeError": TypeError,
        "LockTimeoutError": TimeoutError,
        "StorageError": OSError,
        "PeerError": OSError,
        "NotInitialisedError": FileNotFoundError,
    }
    assert set(builtins) | {"TwinlogError"} == set(exceptions.__all__)
    for name, builtin in builtins.items():
        cls = getattr(exceptions, name)
        assert issubclass(cls, twinlog.TwinlogError) and issubclass(cls, builtin), name


def test_config_signature() -> None:
    params = inspect.signature(twinlog.Config).parameters
    assert list(params)[:4] == ["node", "peer", "log_dir", "peer_dir"]
    for name in ("probe_timeout", "io_timeout", "lock_timeout", "require_mount"):
        assert params[name].default is not inspect.Parameter.empty
    assert params["max_message_bytes"].default == 65536
    assert params["fsync"].default is True


def test_init_is_the_one_way_a_log_directory_comes_into_being() -> None:
    assert inspect.signature(twinlog.TwinLog.init).parameters.keys() == {"config"}


def test_twinlog_methods() -> None:
    for name in (
        "write",
        "write_many",
        "reconcile",
        "read",
        "status",
        "verify",
        "rotate",
        "repair",
        "close",
    ):
        assert callable(getattr(twinlog.TwinLog, name))
