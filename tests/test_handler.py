"""twinlog.handler.TwinlogHandler: records become entries, from many threads, failures contained."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pairlib import Pair, assert_converged
from twinlog import ConfigError
from twinlog.handler import TwinlogHandler, record_fields


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"test.twinlog.{os.urandom(4).hex()}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable>"


def test_record_becomes_entry(pair: Pair, logger: logging.Logger) -> None:
    handler = TwinlogHandler(pair.config("a"))
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.warning(
        "vip %s moved",
        "10.0.0.1",
        extra={
            "vip": "10.0.0.1",
            "count": 3,
            "tags": ("a", "b"),
            "obj": Unserialisable(),
            "nan": math.nan,
            "id": "clash",
            "ts": "clash too",
            "level": "mine",
        },
    )
    [entry] = list(pair.twin("b").read())
    assert entry.msg == f"{logger.name}: vip 10.0.0.1 moved"
    assert entry.fields == {
        "level": "WARNING",
        "logger": logger.name,
        "vip": "10.0.0.1",
        "count": 3,
        "tags": ["a", "b"],
        "obj": "<Unserialisable>",
        "nan": "nan",
        "extra_id": "clash",
        "extra_ts": "clash too",
        "extra_level": "mine",
    }


def test_exception_is_its_own_field(pair: Pair, logger: logging.Logger) -> None:
    handler = TwinlogHandler(pair.config("a"))
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(handler)
    # Another handler of the same record still gets the traceback in its text.
    other = io.StringIO()
    logger.addHandler(logging.StreamHandler(other))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed", extra={"exc": "mine"})
    logger.info("with stack", stack_info=True)
    logger.warning("plain")
    failed, stacked, plain = list(pair.twin("a").read())
    assert failed.msg == f"{logger.name}: failed"  # one line, no traceback appended
    assert failed["exc"].startswith("Traceback (most recent call last):\n")
    assert failed["exc"].endswith("RuntimeError: boom")
    assert failed["level"] == "ERROR" and failed["extra_exc"] == "mine"
    assert stacked.msg == f"{logger.name}: with stack" and "exc" not in stacked.fields
    assert stacked["stack"].startswith("Stack (most recent call last):\n")
    assert "exc" not in plain.fields and "stack" not in plain.fields
    assert "Traceback (most recent call last)" in other.getvalue()
    assert "RuntimeError: boom" in other.getvalue()


def test_a_dict_message_is_stored_as_fields(pair: Pair, logger: logging.Logger) -> None:
    """Structured logging hands logging an event dict (structlog's wrap_for_formatter):
    its event is the message, its keys fields; private names (a leading _) are not stored."""
    logger.addHandler(TwinlogHandler(pair.config("a")))
    other = io.StringIO()
    logger.addHandler(logging.StreamHandler(other))
    logger.warning(
        {"event": "vip moved", "vip": "10.0.0.10", "level": "x", "_logger": object()},
        extra={"_name": "warning", "attempt": 2},
    )
    [entry] = list(pair.twin("a").read())
    assert entry.msg == "vip moved"
    assert dict(entry.fields) == {
        "level": "WARNING",
        "logger": logger.name,
        "attempt": 2,
        "vip": "10.0.0.10",
        "extra_level": "x",
    }
    assert "'event': 'vip moved'" in other.getvalue()  # other handlers get the record as it was


def test_a_long_traceback_is_shortened_to_fit(pair: Pair, logger: logging.Logger) -> None:
    logger.addHandler(TwinlogHandler(pair.config("a", max_message_bytes=300)))
    try:
        raise ValueError('"quoted"\n' * 200)  # grows when JSON-escaped
    except ValueError:
        logger.exception("deep")
    [entry] = list(pair.twin("a").read())
    assert entry.msg == "deep" and entry["exc"].endswith("[...]")
    extra = json.dumps(dict(entry.fields), ensure_ascii=False, separators=(",", ":"))
    assert 250 < len(extra.encode()) <= 300


@pytest.mark.parametrize("how", ["dictConfig", "fileConfig"])
def test_a_failed_configuration_leaves_nothing_at_exit(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "missing.toml"
    if how == "dictConfig":
        setup = (
            "logging.config.dictConfig({'version': 1, 'handlers': {'t': {"
            f"'class': 'twinlog.handler.TwinlogHandler', 'config': {str(missing)!r}}}}}}})"
        )
    else:
        ini = tmp_path / "logging.ini"
        ini.write_text(
            "[loggers]\nkeys=root\n[handlers]\nkeys=t\n[formatters]\nkeys=\n"
            "[logger_root]\nhandlers=t\n"
            f"[handler_t]\nclass=twinlog.handler.TwinlogHandler\nargs=({str(missing)!r},)\n"
        )
        setup = f"logging.config.fileConfig({str(ini)!r})"
    # Uncaught, as in a program whose logging set-up fails: the traceback keeps the half-made
    # handler alive until logging's atexit callback closes it.
    proc = subprocess.run(
        [sys.executable, "-c", f"import logging.config\n{setup}\n"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1 and "does not exist" in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr and "_close_guard" not in proc.stderr


def test_record_fields_prefix_until_unique() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.__dict__.update({"seq": 1, "extra_seq": 2})
    fields = record_fields(record)
    assert fields["extra_seq"] == 2 and fields["extra_extra_seq"] == 1
    assert list(fields) == ["level", "logger", "extra_seq", "extra_extra_seq"]


def test_many_threads(pair: Pair, logger: logging.Logger) -> None:
    handler = TwinlogHandler(pair.config("a"))
    logger.addHandler(handler)
    errors: list[BaseException] = []
    handler.handleError = lambda record: errors.append(RuntimeError(record))  # type: ignore[method-assign]
    threads, per_thread = 8, 25

    def work(n: int) -> None:
        for i in range(per_thread):
            logger.info("thread %d record %d", n, i, extra={"thread_no": n, "i": i})

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    entries = list(pair.twin("a").read())
    assert len(entries) == threads * per_thread
    assert {e.seq for e in entries} == set(range(1, threads * per_thread + 1))
    for n in range(threads):  # each thread's records in its own order
        mine = [e["i"] for e in entries if e["thread_no"] == n]
        assert mine == list(range(per_thread))
    assert_converged(pair)


def test_threads_on_both_nodes_while_partitioned(pair: Pair) -> None:
    handlers = {node: TwinlogHandler(pair.config(node)) for node in ("a", "b")}
    loggers = {}
    for node, handler in handlers.items():
        log = logging.getLogger(f"test.twinlog.pair.{node}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        loggers[node] = log
    try:
        pair.partition()

        def work(node: str, n: int) -> None:
            for i in range(10):
                loggers[node].info("%s-%d-%d", node, n, i)

        workers = [
            threading.Thread(target=work, args=(node, n)) for node in ("a", "b") for n in range(3)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        pair.heal()
        handlers["a"]._log.reconcile()  # type: ignore[union-attr]
        assert_converged(pair)
        assert len(list(pair.twin("a").read())) == 60
    finally:
        for node, handler in handlers.items():
            loggers[node].removeHandler(handler)
            handler.close()


def test_dict_config_with_class_and_factory(pair: Pair, tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in pair.config_dict("a").items()))
    name = "test.twinlog.dictconfig"
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "[%(levelname)s] %(message)s"}},
        "handlers": {
            "by_class": {
                "class": "twinlog.handler.TwinlogHandler",
                "config": os.fspath(path),
                "level": "INFO",
                "formatter": "plain",
            },
            "by_factory": {
                "()": "twinlog.handler.TwinlogHandler",
                "config": pair.config("b"),
                "level": "ERROR",
            },
        },
        "loggers": {name: {"handlers": ["by_class", "by_factory"], "level": "DEBUG"}},
    }
    logging.config.dictConfig(config)
    log = logging.getLogger(name)
    try:
        log.debug("dropped by both handlers")
        log.info("only a")
        log.error("both")
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    msgs = [(e.node, e.msg) for e in pair.twin("a").read()]
    assert msgs == [("a", "[INFO] only a"), ("a", "[ERROR] both"), ("b", "both")]


def test_bad_config_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TwinlogHandler(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text('node = "a"\n')
    with pytest.raises(ValueError, match="Unable to configure handler 't'") as info:
        logging.config.dictConfig(
            {
                "version": 1,
                "handlers": {
                    "t": {
                        "class": "twinlog.handler.TwinlogHandler",
                        "config": f"{tmp_path}/bad.toml",
                    }
                },
            }
        )
    assert isinstance(info.value.__cause__, ConfigError)
    assert "missing required key" in str(info.value.__cause__)


def test_failures_go_to_handle_error(
    pair: Pair, logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = TwinlogHandler(pair.config("a", max_message_bytes=100))
    logger.addHandler(handler)
    logger.info("x", extra={"blob": "y" * 200})  # fields too large: reported, not raised
    assert "MessageTooLargeError" in capsys.readouterr().err
    pair.cut("a")
    logger.info("peer gone: cached, no error")
    assert capsys.readouterr().err == ""
    handler.close()
    handler.close()  # idempotent
    logger.info("after close")
    assert "TwinlogHandler is closed" in capsys.readouterr().err
    assert [e.msg for e in pair.twin("a").read()] == ["peer gone: cached, no error"]


def test_raise_exceptions_off_is_silent(
    pair: Pair,
    logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)
    handler = TwinlogHandler(pair.config("a", max_message_bytes=10))
    logger.addHandler(handler)
    logger.info("far too long for the limit")
    assert capsys.readouterr().err == ""
    assert "a -> b" in repr(handler)


def test_filters_still_apply(pair: Pair, logger: logging.Logger) -> None:
    handler = TwinlogHandler(pair.config("a"))
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    logger.addHandler(handler)
    logger.info("public")
    logger.info("secret stuff")
    assert [e.msg for e in pair.twin("a").read()] == ["public"]


def test_emit_is_not_serialised_by_the_handler_lock(pair: Pair, logger: logging.Logger) -> None:
    """Concurrent records reach TwinLog.write together, so its group commit can batch them."""
    handler = TwinlogHandler(pair.config("a"))
    logger.addHandler(handler)
    log = handler._log
    assert log is not None
    real_write = log.write
    inside, most = 0, 0
    guard = threading.Lock()
    all_inside = threading.Barrier(4, timeout=5)

    def counting_write(msg: str, **fields: Any) -> Any:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        try:
            all_inside.wait()  # breaks (and reports) if writes were serialised
            return real_write(msg, **fields)
        finally:
            with guard:
                inside -= 1

    log.write = counting_write  # type: ignore[method-assign]
    workers = [threading.Thread(target=logger.info, args=(f"r{n}",)) for n in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert most == 4
    assert sorted(e.msg for e in pair.twin("a").read()) == ["r0", "r1", "r2", "r3"]


def test_an_oversized_record_is_logged_shortened_not_dropped(tmp_path: Path) -> None:
    from twinlog import Config, TwinLog
    from twinlog.handler import TwinlogHandler, fit_message

    config = Config(
        "a", "b", tmp_path / "log", tmp_path / "peer", require_mount=False, max_message_bytes=100
    )
    config.log_dir.mkdir()
    handler = TwinlogHandler(config)
    logger = logging.getLogger("twinlog-test-oversized")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("é" * 400)
    finally:
        logger.removeHandler(handler)
        handler.close()
    with TwinLog(config) as log:
        (entry,) = list(log.read())
    assert len(entry.msg.encode()) <= 100 and entry.msg.endswith("[...]")
    assert entry.fields["truncated_bytes"] == 800 - len(entry.msg[:-6].encode())
    assert fit_message("short", 100) == ("short", 0)
