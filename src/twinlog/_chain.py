"""The hash chain of each origin: what makes an edited, deleted or inserted line show.

Every entry's line ends with a ``"chain"`` field, the last one: SHA-256 over the previous
entry of the same origin's chain (32 raw bytes; 32 zero bytes for an origin's first chained
entry) followed by the entry's line without that field (it then ends in ``}``, no newline).
The origin seals its lines under its lock, in seq order; drains, recovery and repair copy
lines byte for byte, so both nodes hold the same chain. docs/security.md says what it catches.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "GENESIS",
    "SUFFIX_LEN",
    "chain_at_end",
    "chain_suffix",
    "expected_chain",
    "seal",
    "split_chain",
    "unsealed",
]

#: The "previous chain" of an origin's first chained entry.
GENESIS = bytes(32)
_FIELD = b',"chain":"'
_HEX_LEN = 64
#: ``,"chain":"<64 hex>"}\n``: how many bytes the chain adds at a line's end.
SUFFIX_LEN = len(_FIELD) + _HEX_LEN + 3


def seal(line: bytes, prev: bytes) -> tuple[bytes, bytes]:
    """``line`` (an encoded entry ending in ``}\\n``) with its chain field, and the chain."""
    body = line[:-1]
    digest = hashlib.sha256(prev + body).digest()
    return body[:-1] + _FIELD + digest.hex().encode() + b'"}\n', digest


def split_chain(line: bytes) -> tuple[bytes, bytes] | None:
    """A sealed line's body as it was hashed and its chain (raw); None if it has none."""
    if not chain_suffix(line):
        return None
    try:
        digest = bytes.fromhex(line[-_HEX_LEN - 3 : -3].decode("ascii"))
    except ValueError:
        return None
    return line[:-SUFFIX_LEN] + b"}", digest


def unsealed(line: bytes) -> bytes:
    """``line`` as it was before :func:`seal` (itself when it has no chain)."""
    return line[:-SUFFIX_LEN] + b"}\n" if chain_suffix(line) else line


def chain_suffix(data: bytes) -> bool:
    """Whether ``data`` ends with a line's chain field (and its newline)."""
    return data.endswith(b'"}\n') and data[-SUFFIX_LEN : -SUFFIX_LEN + len(_FIELD)] == _FIELD


def chain_at_end(data: bytes) -> str | None:
    """The chain (hex) of the line ``data`` ends with, if it has one."""
    if not chain_suffix(data):
        return None
    return data[-_HEX_LEN - 3 : -3].decode("ascii", "replace")


def expected_chain(prev: bytes, body: bytes) -> bytes:
    """What the chain of a line with ``body`` (see :func:`split_chain`) must be."""
    return hashlib.sha256(prev + body).digest()
