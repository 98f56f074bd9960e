"""``twinlog write --json -``: one JSON object per line, as any program (or rsyslog) sends it.

``msg`` (a string) is the message, ``level`` a level name or syslog severity 0-7, ``key`` the
idempotency key; every other member is a field. See docs/ingest.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["BEGIN_MARK", "COMMIT_MARK", "Item", "one_line", "parse_json_line"]

#: omprog's transaction marks (its beginTransactionMark and commitTransactionMark defaults).
BEGIN_MARK = "BEGIN TRANSACTION"
COMMIT_MARK = "COMMIT TRANSACTION"
#: What ``TwinLog.write_many`` takes for one line: message, fields and idempotency key.
Item = tuple[str, dict[str, Any], str | None]


def parse_json_line(
    text: str, defaults: Mapping[str, Any]
) -> tuple[str, dict[str, Any], str | None]:
    """``(msg, fields, key)`` of one input line, the line's members over ``defaults``.
    Raises ValueError saying what is wrong with the line (level and fields are checked by
    :func:`twinlog.entry.check_entry` when the entry is)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if "msg" not in data:
        raise ValueError('no "msg" member')
    msg = data.pop("msg")
    if not isinstance(msg, str):
        raise ValueError(f'"msg" must be a string, got {type(msg).__name__}')
    key = data.pop("key", None)
    if key is not None and not isinstance(key, str):
        raise ValueError(f'"key" must be a string, got {type(key).__name__}')
    return msg, {**defaults, **data}, key


def one_line(text: str) -> str:
    """``text`` on one line (an answer to rsyslog is one line per message)."""
    return " ".join(text.split()) or "error"
