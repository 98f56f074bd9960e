"""The ``twinlog`` command: init, write, tail, status, reconcile, verify, rotate, repair, demo.

Every command is one :class:`Command` in :data:`COMMANDS` (a name, a function adding its
arguments, a function running it); adding one is adding an entry there. ``main(argv)`` returns the
exit status instead of exiting, so tests call it directly. Exit statuses:

* 0: done (``status``/``verify``: in sync);
* 1: degraded (peer unreachable, entries still waiting, logs differ);
* 2: error: bad usage, configuration or a failing local directory. One line on stderr says what
  is wrong and how to fix it; never a traceback. (``status`` follows the Nagios plugin
  convention instead: 2 is CRITICAL, a history conflict or over a ``--critical`` limit,
  and 3, UNKNOWN, is what it cannot tell, with a ``TWINLOG UNKNOWN - ...`` line.
  ``verify --deep`` exits 2 on a broken hash chain: docs/security.md.)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import json
import os
import select
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, TextIO

from twinlog import __version__
from twinlog._api import TwinLog
from twinlog._fileops import LOG_FILE, MARKER_FILE
from twinlog._ingest import BEGIN_MARK, COMMIT_MARK, Item, one_line, parse_json_line
from twinlog._levels import canonical_level
from twinlog._monitor import (
    STATE_NAMES,
    UNKNOWN,
    Limits,
    evaluate,
    lag_seconds,
    parse_limits,
    perfdata,
    prometheus_text,
    restate,
    write_textfile,
)
from twinlog._query import SEVERITY, Query, parse_level, parse_time
from twinlog._read import VerifyResult
from twinlog._status_text import plural, reason_text, status_details, status_summary
from twinlog.config import DEFAULT_CONFIG_PATH, Config
from twinlog.demo import run_demo
from twinlog.entry import RESERVED_FIELDS, Entry, check_entry, decode_line
from twinlog.exceptions import ConfigError, InvalidQueryError, LockTimeoutError, TwinlogError

__all__ = ["COMMANDS", "Command", "LogFollower", "format_entry", "main", "parse_field"]

CONFIG_ENV = "TWINLOG_CONFIG"
DIR_MODE = 0o750
FILE_MODE = 0o640
#: How long ``tail -f`` sleeps when the log has not grown.
FOLLOW_INTERVAL = 0.25
LEVELS = SEVERITY
_LIST_LIMIT = 20  # ids listed per line by ``verify`` before "... and N more"


class UsageError(Exception):
    """A bad command line or argument; ``main`` prints it as one line and returns 2."""


@dataclasses.dataclass
class Console:
    """Where a command writes; resolved when ``main`` starts so tests can swap sys.stdout."""

    out: TextIO
    err: TextIO

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(f"twinlog: {text}\n")
        self.err.flush()


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand. ``run`` returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Console], int]
    needs_config: bool = True


# -- argument parsing ---------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parse_field(text: str) -> tuple[str, Any]:
    """``key=value`` keeps value as a string; ``key:=json`` parses a JSON scalar."""
    if ":=" in text and ("=" not in text or text.index(":=") < text.index("=")):
        key, raw = text.split(":=", 1)
        try:
            value = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
            raise UsageError(
                f"--field {text!r}: {raw!r} is not JSON; quote strings "
                f"(key:='\"text\"') or use key=value for plain text"
            ) from None
        if isinstance(value, dict | list):
            raise UsageError(
                f"--field {text!r}: only JSON scalars (number, true, false, null, string) "
                "are accepted after :="
            )
    elif "=" in text:
        key, value = text.split("=", 1)
    else:
        raise UsageError(
            f"--field {text!r}: expected key=value (text) or key:=json (a number etc.)"
        )
    if not key:
        raise UsageError(f"--field {text!r}: the field name is empty")
    if key in RESERVED_FIELDS:
        names = ", ".join(sorted(RESERVED_FIELDS))
        raise UsageError(f"--field {text!r}: {key!r} is reserved (reserved names: {names})")
    if key == "level":
        raise UsageError(f"--field {text!r}: use --level to set the level")
    return key, value


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _line_count(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _level(text: str) -> str:
    try:
        return canonical_level(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r}; use one of {', '.join(LEVELS)} or a syslog severity 0-7"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    config_help = f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})"
    common = _Parser(add_help=False)
    # SUPPRESS: "--config" is accepted before or after the command without one hiding the other.
    common.add_argument(
        "-c", "--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help
    )
    parser = _Parser(
        prog="twinlog",
        description="Keep the management log of a two-node cluster identical on both nodes.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"twinlog {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(
            command.name, help=command.help, description=command.help, parents=[common]
        )
        command.add_arguments(child)
        child.set_defaults(handler=command)
    return parser


# -- configuration ------------------------------------------------------------------------
def config_path(args: argparse.Namespace) -> tuple[Path, str]:
    """The configuration file to use, and where that choice came from (for error messages)."""
    explicit = getattr(args, "config", None)
    if explicit:
        return Path(explicit), "--config"
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env), f"${CONFIG_ENV}"
    return DEFAULT_CONFIG_PATH, "the default path"


def load_config(args: argparse.Namespace) -> Config:
    path, source = config_path(args)
    try:
        return Config.load(path)
    except ConfigError as exc:
        if source == "the default path":
            hint = f"pass --config PATH or set {CONFIG_ENV}"
        else:
            hint = f"check the file named by {source}"
        raise ConfigError(f"{exc}; {hint}") from None


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, LockTimeoutError):
        return f"{exc}; another twinlog process holds the log's lock: try again"
    if isinstance(exc, TwinlogError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}"
    else:  # pragma: no cover - main only passes the two kinds above
        text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        text += (
            "; log_dir is on a read-only filesystem: tail, status and verify work there, "
            "writing needs it mounted read-write"
        )
    elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        text += "; twinlog needs write access to log_dir: run it as the directory's owner (root)"
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += "; free some space on the log's filesystem"
    return text


# -- output helpers -----------------------------------------------------------------------
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_COLOURS = {
    "DEBUG": "\x1b[2m",
    "NOTICE": "\x1b[36m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


def _printable(text: str) -> str:
    """One line, with no terminal control sequence a log message could smuggle in."""
    return text.translate(_CONTROL)


def use_colour(choice: str, stream: IO[str]) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except ValueError:  # closed stream
        return False


def _field_text(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "='):
        return _printable(value)
    return _printable(json.dumps(value, ensure_ascii=False))


def format_entry(entry: Entry, node_width: int, *, colour: bool) -> str:
    """``time  node  LEVEL     message  key=value ...`` on one line."""
    ts = entry.ts.replace("T", " ")
    level = str(entry.get("level", "-"))
    extras = " ".join(
        f"{key}={_field_text(value)}" for key, value in entry.fields.items() if key != "level"
    )
    msg = _printable(entry.msg)
    node = entry.node.ljust(node_width)
    padded_level = _printable(level).ljust(8)
    if colour:
        ts = f"{_DIM}{ts}{_RESET}"
        if level in _COLOURS:
            padded_level = f"{_COLOURS[level]}{padded_level}{_RESET}"
        if extras:
            extras = f"{_DIM}{extras}{_RESET}"
    line = f"{ts}  {node}  {padded_level} {msg}"
    return f"{line}  {extras}" if extras else line


def _conflict_text(conflict: dict[str, Any], node: str) -> str:
    origin = conflict["origin"]
    where = "here" if origin == node else f"on {origin}"
    return (
        f"history conflict: {origin}'s entries differ between the two logs from "
        f"{conflict['first_id']} on; nothing of them is copied until an operator runs "
        f"'twinlog repair' {where} (see docs/operations.md)"
    )


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:_LIST_LIMIT])
    more = len(ids) - _LIST_LIMIT
    return f"{shown}, ... and {more} more" if more > 0 else shown


# -- init ---------------------------------------------------------------------------------
def _args_init(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def cmd_init(args: argparse.Namespace, con: Console) -> int:
    cfg = load_config(args)
    marker = cfg.log_dir / MARKER_FILE
    dir_existed, marker_existed = cfg.log_dir.is_dir(), marker.exists()
    with TwinLog.init(cfg) as log:
        con.print(f"log_dir {cfg.log_dir}: " + ("exists" if dir_existed else "created"))
        con.print(
            f"identity marker {marker}: "
            + (f"names node {cfg.node}" if marker_existed else f"created for node {cfg.node}")
        )
        changed = _fix_modes(cfg.log_dir)
        for path, old, new in changed:
            con.print(f"mode of {path}: {old:04o} -> {new:04o}")
        if not changed:
            con.print(f"modes: already {DIR_MODE:04o} (directory) and {FILE_MODE:04o} (files)")
        # The first contact: a node whose disk was replaced takes its history back here.
        result = log.reconcile()
        info = log.status()
    node, peer = cfg.node, cfg.peer
    if result.peer_reachable:
        con.print(f"peer {peer} at {cfg.peer_dir}: reachable")
        if result.recovered:
            con.print(
                f"history: took back {plural(result.recovered, 'entry')} of {node} from {peer}"
                f" (this node's own, which its log had lost); new entries continue after them"
            )
    else:
        reason = reason_text(info["peer_reason"], info["peer_reason_text"])
        con.print(f"peer {peer} at {cfg.peer_dir}: not reachable yet ({reason})")
        if not info["last_seq"][node]:
            con.print(
                f"history: {node}'s log is empty; any history of {node} that {peer} holds is "
                f"taken back at the first contact, or reported as a conflict if {node} writes "
                "first (then see 'twinlog repair')"
            )
    for conflict in info["conflicts"]:
        con.print(_conflict_text(conflict, node))
    return 0


def _fix_modes(log_dir: Path) -> list[tuple[Path, int, int]]:
    """Set the directory to DIR_MODE and twinlog's own regular files in it to FILE_MODE."""
    changed = []
    targets = [(log_dir, DIR_MODE)]
    targets += [
        (path, FILE_MODE) for path in sorted(log_dir.iterdir()) if path.name.startswith("twinlog.")
    ]
    for path, mode in targets:
        # O_NOFOLLOW: never change the mode of what a symlink planted in the directory points to.
        flags = (
            os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if path == log_dir else os.O_NOFOLLOW)
        )
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                continue
            raise
        try:
            st = os.fstat(fd)
            if path != log_dir and not stat.S_ISREG(st.st_mode):
                continue
            old = stat.S_IMODE(st.st_mode)
            if old != mode:
                os.fchmod(fd, mode)
                changed.append((path, old, mode))
        finally:
            os.close(fd)
    return changed


# -- write --------------------------------------------------------------------------------
def _args_write(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "message", metavar="MSG", help="the message; '-' reads one per line from stdin"
    )
    parser.add_argument(
        "-l",
        "--level",
        type=_level,
        default=None,
        help=(
            f"entry level: {', '.join(LEVELS)} (any case) or a syslog severity 0-7 "
            "(default: INFO; with --json, for lines without a level)"
        ),
    )
    parser.add_argument(
        "--key",
        default=None,
        help=(
            "idempotency key: if this node logged an entry with this key lately "
            "(dedupe_window), print that entry's id and log nothing new"
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=(
            "with '-': one JSON object per line, msg (required), level, key, and other "
            "members as fields (see docs/ingest.md)"
        ),
    )
    parser.add_argument(
        "--confirm",
        action="store_true",
        help=(
            "with '-': rsyslog omprog's confirmMessages protocol: OK once ready, then a line "
            "per input line, OK once that entry is durable, an error text if not"
        ),
    )
    parser.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "extra field, repeatable: key=text, or key:=json for a number, true, false or null; "
            f"reserved names: {', '.join(sorted(RESERVED_FIELDS))} (and level: use --level)"
        ),
    )


#: ``twinlog write -`` commits what has arrived on stdin together: at most this many lines or
#: bytes per commit, and it waits at most BATCH_WAIT seconds for more once a line is there.
BATCH_LINES = 512
BATCH_BYTES = 1 << 20
BATCH_WAIT = 0.002


def _stdin_batches(wait: float = BATCH_WAIT) -> Iterator[list[tuple[int, str]]]:
    """Numbered stdin lines, in batches of what has arrived together (a burst from a pipe
    becomes one commit; a line typed alone is committed at once). Once a line is there, more
    are waited for ``wait`` seconds at most."""
    raw = getattr(sys.stdin, "buffer", None)
    try:
        fd = raw.fileno() if raw is not None else -1
    except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
        fd = -1
    if fd < 0:  # a stream put in place of stdin (tests, embedding): no waiting to do
        stream: Iterable[str | bytes] = sys.stdin if raw is None else raw
        numbered = [
            (n, x if isinstance(x, str) else x.decode("utf-8", "replace"))
            for n, x in enumerate(stream, 1)
        ]
        for start in range(0, len(numbered), BATCH_LINES):
            yield numbered[start : start + BATCH_LINES]
        return
    number, pending, eof = 0, b"", False
    while not eof:
        data = os.read(fd, 1 << 16)  # waits for the first bytes of a batch
        eof = not data
        pending += data
        deadline = time.monotonic() + wait
        while not eof and pending.count(b"\n") < BATCH_LINES and len(pending) < BATCH_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            data = os.read(fd, 1 << 16)
            eof = not data
            pending += data
        lines = pending.split(b"\n")
        pending = lines.pop() if not eof else b""
        if eof and lines and lines[-1] == b"":
            lines.pop()
        batch = []
        for line in lines:
            number += 1
            batch.append((number, line.decode("utf-8", "replace") + "\n"))
        for start in range(0, len(batch), BATCH_LINES):
            yield batch[start : start + BATCH_LINES]


def cmd_write(args: argparse.Namespace, con: Console) -> int:
    fields: dict[str, Any] = {} if args.level is None else {"level": args.level}
    for text in args.field:
        key, value = parse_field(text)
        if key in fields:
            raise UsageError(f"--field {text!r}: field {key!r} given twice")
        fields[key] = value
    if args.message != "-" and (args.json or args.confirm):
        raise UsageError("--json and --confirm read stdin: give '-' as the message")
    if args.message == "-" and args.key is not None:
        raise UsageError("--key names one entry: with '-', give each line a key with --json")
    cfg = load_config(args)
    status = 0
    with TwinLog(cfg) as log:
        if args.message != "-":
            con.print(log.write(args.message, key=args.key, **fields).id)
        else:
            status = _write_stdin(log, fields, args.json, args.confirm, con)
        if log.last_reason != "ok":
            con.error(
                f"note: peer {cfg.peer} not reachable ({reason_text(log.last_reason)}); "
                "the local cache keeps what it missed until the peer is back"
            )
    return status


def _write_stdin(
    log: TwinLog, defaults: dict[str, Any], as_json: bool, confirm: bool, con: Console
) -> int:
    """Log stdin's lines (text, or JSON objects), a commit per batch that arrived together;
    print each entry's id, or with ``confirm`` rsyslog omprog's answers: ``OK`` once ready,
    then per line ``OK`` once its entry is durable, an error text otherwise. In omprog's
    transactions (``useTransactions``) a line gets ``DEFER_COMMIT`` and the commit mark the
    ``OK`` once the transaction's entries are durable, in one commit."""
    writer = _StdinWriter(log, defaults, as_json, confirm, con)
    if confirm:
        con.print("OK")
        con.out.flush()
    # A sender that waits for each answer (omprog) sends nothing more meanwhile: don't wait.
    for batch in _stdin_batches(0.0 if confirm else BATCH_WAIT):
        writer.batch(batch)
        con.out.flush()
    return writer.status


class _StdinWriter:
    """The state of one ``twinlog write -``: its exit status and omprog's open transaction."""

    def __init__(
        self, log: TwinLog, defaults: dict[str, Any], as_json: bool, confirm: bool, con: Console
    ) -> None:
        self.log, self.defaults, self.as_json, self.confirm, self.con = (
            log,
            defaults,
            as_json,
            confirm,
            con,
        )
        self.status = 0
        self.transaction: list[Item] | None = None  # lines since omprog's begin mark

    def batch(self, batch: list[tuple[int, str]]) -> None:
        """One commit for the good lines of ``batch``; their ids, or omprog's answers."""
        good: list[Item] = []
        answers: list[str | None] = []  # per answered line; None: OK once ``good`` is durable
        for number, line in batch:
            text = line.rstrip("\r\n")
            if not text and not self.confirm:
                continue
            if self.confirm and text in (BEGIN_MARK, COMMIT_MARK):
                answers.append(self._mark(text))
                continue
            answers.append(self._line(number, text, good))
        if not self.confirm:
            for entry in self.log.write_many(good):  # storage failures stop the whole run
                self.con.print(entry.id)
            return
        failed = self._commit(good) if good else None
        for answer in answers:
            self.con.print(answer or failed or "OK")

    def _mark(self, text: str) -> str:
        """omprog's transaction marks: begin opens one, commit makes it durable."""
        if text == BEGIN_MARK:
            self.transaction = []
            return "OK"
        answer = self._commit(self.transaction or []) or "OK"
        self.transaction = None
        return answer

    def _line(self, number: int, text: str, good: list[Item]) -> str | None:
        """Check one line: its error answer, ``DEFER_COMMIT`` in a transaction, or None (it
        joins ``good``, answered once they are durable)."""
        try:  # each line on its own: a bad one must not reject its batch
            if not text:
                raise ValueError("an empty line")
            if self.as_json:
                msg, fields, key = parse_json_line(text, self.defaults)
            else:
                msg, fields, key = text, self.defaults, None
            check_entry(msg, fields, self.log.config.max_message_bytes, key)
        except (TwinlogError, ValueError, TypeError) as exc:
            self.con.error(f"stdin line {number} not logged: {exc}")
            self.status = 2
            return one_line(f"error: line {number} not logged: {exc}")
        if self.transaction is not None:
            self.transaction.append((msg, fields, key))
            return "DEFER_COMMIT"
        good.append((msg, fields, key))
        return None

    def _commit(self, items: list[Item]) -> str | None:
        """None once ``items`` are durable, else the answer to give instead of OK."""
        try:
            self.log.write_many(items)
        except TwinlogError as exc:  # not durable: say so, and rsyslog sends them again
            self.con.error(f"{len(items)} line(s) not logged: {exc}")
            self.status = 2
            return one_line(f"error: not logged: {exc}")
        return None


# -- tail ---------------------------------------------------------------------------------
def _args_tail(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--lines",
        type=_line_count,
        default=10,
        metavar="N",
        help="show the last N entries, or 'all' (default: 10)",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new entries until interrupted"
    )
    parser.add_argument("--json", action="store_true", help="JSON Lines, one entry per line")
    _add_filter_arguments(parser)
    parser.add_argument(
        "--color",
        "--colour",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output (default: auto: on a terminal, unless NO_COLOR is set)",
    )


def _query_arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a query parser: its InvalidQueryError becomes a usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InvalidQueryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__  # argparse names the type in its messages
    return convert


def _filter_field(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidQueryError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """tail's filters: the same meaning as ``TwinLog.read``'s keyword arguments."""
    group = parser.add_argument_group(
        "filters",
        "all given must hold; times are RFC 3339 (2026-12-04T02:00:00Z) or a duration back "
        "from now (15m, 2h, 1d)",
    )
    group.add_argument(
        "--since", type=_query_arg(parse_time), metavar="TIME", help="entries at or after TIME"
    )
    group.add_argument(
        "--until", type=_query_arg(parse_time), metavar="TIME", help="entries before TIME"
    )
    group.add_argument(
        "--level",
        type=_query_arg(parse_level),
        metavar="LEVEL",
        help=f"LEVEL and more severe ({', '.join(SEVERITY)}; no level counts as INFO)",
    )
    group.add_argument("--node", metavar="NODE", help="entries written on NODE")
    group.add_argument(
        "--grep",
        type=_query_arg(lambda text: Query.build(grep=text).grep),
        metavar="REGEX",
        help="entries whose message matches REGEX (Python syntax, searched anywhere)",
    )
    group.add_argument(
        "--field",
        type=_query_arg(_filter_field),
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="entries with field KEY equal to VALUE (80 matches a number too); repeatable",
    )


def _query(args: argparse.Namespace) -> Query:
    fields: dict[str, str] = {}
    for key, value in args.field:
        if fields.get(key, value) != value:
            raise UsageError(f"--field {key}: given twice with different values")
        fields[key] = value
    return Query.build(
        since=args.since,
        until=args.until,
        level=args.level,
        node=args.node,
        grep=args.grep,
        fields=fields,
    )


class LogFollower:
    """Complete lines appended to one log file, across rename (rotation) and truncation.

    Polls by size and inode; starts at the end of the last complete line present now.
    """

    CHUNK = 1 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino = 0
        self._offset = 0
        self._partial = b""
        self._open(at_end=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self, *, at_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        st = os.fstat(fd)
        self._fd, self._ino, self._partial = fd, st.st_ino, b""
        self._offset = self._last_line_end(st.st_size) if at_end else 0

    def _last_line_end(self, size: int) -> int:
        assert self._fd is not None
        pos = size
        while pos > 0:
            start = max(0, pos - self.CHUNK)
            newline = os.pread(self._fd, pos - start, start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            pos = start
        return 0

    def poll(self) -> list[bytes]:
        """Lines completed since the last call (without their newlines)."""
        if self._fd is None:
            self._open(at_end=False)
            if self._fd is None:
                return []
        lines = self._read_new()
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return lines  # renamed away, the new file not created yet
        if ino != self._ino:
            lines += self._read_new()  # the rest of the old file first
            self.close()
            self._open(at_end=False)
            if self._fd is not None:
                lines += self._read_new()
        return lines

    def _read_new(self) -> list[bytes]:
        fd = self._fd
        assert fd is not None
        if self._partial:
            # A torn last line is cut off by the next writer (and new lines may follow it at
            # once): start again where the partial line began if its bytes are gone.
            begin = self._offset - len(self._partial)
            if os.pread(fd, len(self._partial), begin) != self._partial:
                self._offset, self._partial = begin, b""
        size = os.fstat(fd).st_size
        if size < self._offset:
            self._offset, self._partial = size, b""
        lines: list[bytes] = []
        while True:
            data = os.pread(fd, self.CHUNK, self._offset)
            if not data:
                return lines
            self._offset += len(data)
            *complete, self._partial = (self._partial + data).split(b"\n")
            lines += (line for line in complete if line)


def cmd_tail(args: argparse.Namespace, con: Console) -> int:
    cfg = load_config(args)
    colour = not args.json and use_colour(args.color, con.out)
    node_width = max(len(cfg.node), len(cfg.peer))

    def show(entry: Entry) -> None:
        if args.json:
            con.print(json.dumps(entry.to_dict(), ensure_ascii=False))
        else:
            con.print(format_entry(entry, node_width, colour=colour))

    query = _query(args)
    with TwinLog(cfg) as log:
        # Start watching before reading, so nothing written in between is missed; what both
        # see is printed once thanks to the per-origin sequence numbers.
        follower = LogFollower(cfg.log_dir / LOG_FILE) if args.follow else None
        last_seq = {cfg.node: 0, cfg.peer: 0}
        recent: collections.deque[Entry] = collections.deque(maxlen=args.lines)
        for entry in log.read(last=args.lines, **query.as_read_arguments()):
            last_seq[entry.node] = max(last_seq[entry.node], entry.seq)
            recent.append(entry)
    for entry in recent:
        show(entry)
    con.out.flush()
    if follower is None:
        return 0
    try:
        while True:
            shown = False
            for line in follower.poll():
                new = decode_line(line)
                # Drains append the peer's entries late, with their older timestamps: they are
                # printed as they arrive. Anything already shown (or a duplicate) is skipped.
                if new is None or new.seq <= last_seq.get(new.node, new.seq):
                    continue
                last_seq[new.node] = new.seq
                if query.matches(new):
                    show(new)
                shown = True
            if shown:
                con.out.flush()
            else:
                time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return 0
    finally:
        follower.close()


# -- status -------------------------------------------------------------------------------
def _args_status(parser: argparse.ArgumentParser) -> None:
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the status as one JSON object")
    fmt.add_argument(
        "--prometheus",
        action="store_true",
        help="metrics in the Prometheus text format (node_exporter textfile collector)",
    )
    parser.add_argument(
        "--textfile",
        metavar="PATH",
        type=Path,
        help="with --prometheus: replace PATH atomically instead of printing",
    )
    limits = (
        "LIMITS is a comma-separated list: a duration (15m, 4h, 2d) limits the lag (the age of "
        "the oldest undelivered entry; while the peer is away, at least the time since the last "
        "complete sync), a whole number the entries waiting in the caches"
    )
    parser.add_argument(
        "--warning",
        type=_query_arg(parse_limits),
        default=Limits(),
        metavar="LIMITS",
        help=f"exit 1 (WARNING) over these limits; {limits}",
    )
    parser.add_argument(
        "--critical",
        type=_query_arg(parse_limits),
        default=Limits(),
        metavar="LIMITS",
        help="exit 2 (CRITICAL) over these limits (as --warning)",
    )


def status_exit(info: dict[str, Any]) -> int:
    """0 in sync, 1 degraded, 2 (CRITICAL) a history conflict: it never heals by itself."""
    if info.get("conflict"):
        return 2
    return 0 if info["in_sync"] else 1


def cmd_status(args: argparse.Namespace, con: Console) -> int:
    if args.textfile is not None and not args.prometheus:
        raise UsageError("--textfile needs --prometheus")
    try:
        cfg = load_config(args)
        with TwinLog(cfg) as log:
            info = log.status()
    except (TwinlogError, OSError) as exc:
        return status_unknown(con, _describe_error(exc), plain=not (args.json or args.prometheus))
    state, why = evaluate(info, args.warning, args.critical)
    code = max(status_exit(info), state)
    if args.json:
        info["check"] = {
            "state": STATE_NAMES[code],
            "reason": why,
            "lag_seconds": lag_seconds(info),
        }
        con.print(json.dumps(info, indent=2))
    elif args.prometheus:
        text = prometheus_text(info, __version__)
        if args.textfile is None:
            con.out.write(text)
        else:
            try:
                write_textfile(args.textfile, text)
            except OSError as exc:
                return status_unknown(con, _describe_error(exc), plain=False)
    else:
        con.print(restate(status_summary(info, args.warning, args.critical), code, why))
        for line in status_details(info):
            con.print(line)
    return code


def status_unknown(con: Console, text: str, *, plain: bool) -> int:
    """Exit 3, UNKNOWN: the check could not tell the state. A monitoring check reads the first
    line of stdout (with the usual performance data, all unknown); JSON and Prometheus readers
    get nothing half-made on stdout, and the error on stderr."""
    if plain:
        con.print(f"TWINLOG UNKNOWN - {text} | {perfdata(None)}")
    else:
        con.error(text)
    return UNKNOWN


# -- reconcile ----------------------------------------------------------------------------
def _args_json(parser: argparse.ArgumentParser) -> None:
    """The one option of reconcile, rotate and verify."""
    parser.add_argument("--json", action="store_true", help="the result as one JSON object")


def cmd_reconcile(args: argparse.Namespace, con: Console) -> int:
    cfg = load_config(args)
    with TwinLog(cfg) as log:
        result = log.reconcile()
    if args.json:
        con.print(json.dumps(result.to_dict()))
    elif result.peer_reachable:
        con.print(
            f"reconciled {cfg.node} with {cfg.peer}: "
            f"pushed {plural(result.pushed, 'entry')} to {cfg.peer}, "
            f"pulled {plural(result.pulled, 'entry')} from {cfg.peer}"
        )
    else:
        con.print(
            f"peer {cfg.peer} not reachable ({reason_text(result.reason)}): nothing moved; "
            "cached entries are delivered once it is back"
        )
    return 0 if result.peer_reachable else 1


# -- rotate -------------------------------------------------------------------------------
def cmd_rotate(args: argparse.Namespace, con: Console) -> int:
    cfg = load_config(args)
    with TwinLog(cfg) as log:
        result = log.rotate()
    if args.json:
        con.print(json.dumps(result.to_dict()))
        return 0
    if result.rotated:
        con.print(f"rotated {cfg.log_dir / 'twinlog.log'} -> {result.rotated}")
    else:
        con.print("nothing to rotate: the active log is empty")
    if result.expired:
        con.print(f"expired (retention): {', '.join(result.expired)}")
    elif not result.peer_reachable and (cfg.retain_segments or cfg.retain_days):
        con.print(
            f"retention skipped: peer {cfg.peer} not reachable ({reason_text(result.reason)}); "
            "old segments are kept until it has every entry"
        )
    return 0


# -- verify -------------------------------------------------------------------------------
def _args_verify(parser: argparse.ArgumentParser) -> None:
    _args_json(parser)
    parser.add_argument(
        "--deep",
        action="store_true",
        help="also re-check the links of both nodes' hash chains and every witness, from "
        "where the last --deep ended (exit 2 on any break)",
    )
    parser.add_argument("--full", action="store_true", help="--deep from the start of both logs")


def cmd_verify(args: argparse.Namespace, con: Console) -> int:
    cfg = load_config(args)
    with TwinLog(cfg) as log:
        result = log.verify(deep=args.deep, full=args.full)
    if args.json:
        con.print(json.dumps(result.to_dict(), indent=2))
    else:
        _verify_text(con, cfg, result)
    if result.broken:
        return 2
    return 0 if result.in_sync else 1


def _verify_text(con: Console, cfg: Config, result: VerifyResult) -> None:
    """The plain-words report of :func:`cmd_verify`."""
    if result.broken:
        con.print(f"TAMPERED OR DAMAGED - {plural(len(result.broken), 'break')} in the hash chains")
        for found in result.broken[:_LIST_LIMIT]:
            con.print(f"  {found}")
        if len(result.broken) > _LIST_LIMIT:
            con.print(f"  ... and {len(result.broken) - _LIST_LIMIT} more (--json lists all)")
        con.print("see docs/security.md: what each kind of break means and what to do")
    for node, origins in result.unchained.items():
        for origin, seq in origins.items():
            con.print(f"note: {node}'s entries of {origin} up to {seq} predate the chain")
    if not result.peer_reachable:
        con.print(f"CANNOT VERIFY - peer {cfg.peer} not reachable: {reason_text(result.reason)}")
    elif result.in_sync:
        con.print(
            f"IN SYNC - {cfg.node} and {cfg.peer} hold the same "
            f"{plural(result.local_entries, 'entry')}"
        )
        _expiry_note(con, result)
    else:
        con.print(
            f"NOT IN SYNC - {cfg.node} holds {plural(result.local_entries, 'entry')}, "
            f"{cfg.peer} holds {result.peer_entries}"
        )
        _expiry_note(con, result)
        for label, ids in (
            (f"missing on {cfg.node} (this node)", result.missing_on_local),
            (f"missing on {cfg.peer} (peer)", result.missing_on_peer),
            (f"duplicated on {cfg.node}", result.duplicates_local),
            (f"duplicated on {cfg.peer}", result.duplicates_peer),
            ("different entries under one id (history conflict)", result.conflicts),
        ):
            if ids:
                con.print(f"{label}: {_ids(ids)}")
        if (result.missing_on_local or result.missing_on_peer) and not result.conflicts:
            con.print("run 'twinlog reconcile' to deliver what is missing")
        if result.conflicts:
            origin = result.conflicts[0].split(":", 1)[0]
            con.print(f"run 'twinlog repair' on {origin} to re-log its conflicting entries")


def _expiry_note(con: Console, result: VerifyResult) -> None:
    """Say so when one side expired (retention) entries the other still keeps: the counts
    are of each side's own log, and those entries were not compared."""
    if result.expired_on_local or result.expired_on_peer:
        con.print(result.note)


# -- repair -------------------------------------------------------------------------------
def cmd_repair(args: argparse.Namespace, con: Console) -> int:
    cfg = load_config(args)
    with TwinLog(cfg) as log:
        result = log.repair()
    if args.json:
        con.print(json.dumps(result.to_dict()))
    elif result.repaired:
        con.print(
            f"repaired {cfg.node}'s history from {result.first_id} on: "
            f"{cfg.peer}'s copy kept, {plural(result.taken_back, 'entry')} taken back from it"
        )
        for old, new in result.relogged:
            con.print(f"re-logged {old} as {new}")
        if result.kept:
            con.print(
                f"kept {plural(result.kept, 'later entry')} of {cfg.node} "
                + ("under its id" if result.kept == 1 else "under their ids")
            )
        con.print(f"the replaced files are in {cfg.log_dir / (result.archive or '')}")
    elif result.reason == "no_conflict":
        con.print(f"nothing to repair: {cfg.node}'s history is the same on both nodes")
    elif result.reason == "peer_history":
        con.print(
            f"the conflict is in {result.origin}'s history (from {result.first_id}): "
            f"run 'twinlog repair' on {result.origin}"
        )
    else:
        con.print(
            f"cannot repair: peer {cfg.peer} not reachable ({reason_text(result.reason)}); "
            "repair needs both logs"
        )
    return 0 if result.repaired or result.reason == "no_conflict" else 1


# -- demo ---------------------------------------------------------------------------------
def _args_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-mount",
        action="store_true",
        help="use symlinks instead of bind mounts (what happens anyway without root)",
    )


def cmd_demo(args: argparse.Namespace, con: Console) -> int:
    return run_demo(con.out, use_mounts=not args.no_mount)


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("init", "create this node's log directory and marker, fix modes", _args_init, cmd_init),
    Command(
        "write", "write an entry (or one per stdin line) and print its id", _args_write, cmd_write
    ),
    Command("tail", "show the merged log of both nodes", _args_tail, cmd_tail),
    Command(
        "status",
        "peer reachability, caches, delivery lag (0 ok, 1 warning, 2 critical, 3 unknown)",
        _args_status,
        cmd_status,
    ),
    Command(
        "reconcile",
        "deliver waiting entries in both directions now",
        _args_json,
        cmd_reconcile,
    ),
    Command(
        "verify",
        "compare both nodes' logs entry by entry (0 in sync; --deep: 2 on a broken chain)",
        _args_verify,
        cmd_verify,
    ),
    Command(
        "rotate",
        "make the active log a segment, then apply retention",
        _args_json,
        cmd_rotate,
    ),
    Command(
        "repair",
        "resolve a history conflict of this node's entries: re-log them after the peer's",
        _args_json,
        cmd_repair,
    ),
    Command(
        "demo",
        "run a two-node pair in a temporary directory and show it at work",
        _args_demo,
        cmd_demo,
        needs_config=False,
    ),
)


# -- entry point --------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``twinlog`` command line; return the exit status."""
    for stream in (sys.stdout, sys.stderr):
        # A message in an unusual script on a non-UTF-8 terminal must not end the command.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    con = Console(sys.stdout, sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            names = ", ".join(c.name for c in COMMANDS)
            raise UsageError(f"choose a command: {names} (see 'twinlog --help')")
        command: Command = args.handler
        return command.run(args, con)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        if _command_of(sys.argv[1:] if argv is None else argv) == "status":
            return status_unknown(con, str(exc), plain=True)
        con.error(str(exc))
        return 2
    except KeyboardInterrupt:
        con.error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``twinlog tail | head``): stop quietly.
        _silence_stdout()
        return 0
    except (TwinlogError, OSError) as exc:
        con.error(_describe_error(exc))
        return 2
    finally:
        try:
            con.out.flush()
        except (BrokenPipeError, ValueError):
            _silence_stdout()


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (when parsing failed and argparse cannot say)."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in ("-c", "--config"):
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        fileno = sys.stdout.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)
