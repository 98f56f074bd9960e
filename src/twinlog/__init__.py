"""twinlog: one management log, kept identical on both nodes of an active-active pair.

>>> from twinlog import Config, TwinLog
>>> log = TwinLog(Config.load("/etc/twinlog/twinlog.toml"))   # doctest: +SKIP
>>> log.write("failover started", level="WARNING")             # doctest: +SKIP
"""

from __future__ import annotations

from importlib import metadata

from twinlog._api import ReconcileResult, TwinLog
from twinlog._read import VerifyResult
from twinlog._repair import RepairResult
from twinlog.config import Config
from twinlog.entry import Entry
from twinlog.exceptions import (
    ConfigError,
    InvalidEntryError,
    InvalidQueryError,
    InvalidTypeError,
    LockTimeoutError,
    MessageTooLargeError,
    NotInitialisedError,
    PeerError,
    ReservedFieldError,
    StorageError,
    TwinlogError,
)

__all__ = [
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
try:
    # The installed distribution's version (pyproject.toml), so `twinlog --version` cannot drift.
    __version__ = metadata.version("twinlog")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
