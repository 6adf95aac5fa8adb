"""Logging setup: structlog and stdlib records through one formatter, to one stream."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from localmesh.logs import configure_logging, level_number, use_console


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_format_renders_structlog_and_stdlib_records_alike() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    structlog.get_logger("localmesh.test").info("forwarder up", port=4001)
    logging.getLogger("grpc._server").warning("stream %s closed", 7)
    first, second = json_lines(out)
    assert first["event"] == "forwarder up"
    assert first["port"] == 4001
    assert first["level"] == "info"
    assert first["logger"] == "localmesh.test"
    assert isinstance(first["timestamp"], str) and first["timestamp"].endswith("Z")
    assert second["event"] == "stream 7 closed"
    assert second["level"] == "warning"
    assert second["logger"] == "grpc._server"


def test_level_filters_both_kinds_of_records() -> None:
    out = io.StringIO()
    configure_logging("warn", "json", stream=out)
    log = structlog.get_logger("localmesh.test")
    log.info("hidden")
    log.warning("shown")
    logging.getLogger("localmesh.other").info("hidden too")
    logging.getLogger("localmesh.other").error("shown too")
    assert [r["event"] for r in json_lines(out)] == ["shown", "shown too"]


def test_third_party_loggers_stay_quiet_at_info_and_talk_at_debug() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("kubernetes.client.rest").info("response body")
    assert out.getvalue() == ""
    configure_logging("debug", "json", stream=out)
    logging.getLogger("kubernetes.client.rest").debug("response body")
    structlog.get_logger("localmesh.test").debug("details")
    assert [r["event"] for r in json_lines(out)] == ["response body", "details"]


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("info", "json", stream=second)
    structlog.get_logger("localmesh.test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_console_format_is_human_text() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    structlog.get_logger("localmesh.test").info("envoy ready", admin="127.0.0.1:9901")
    text = out.getvalue()
    assert "envoy ready" in text
    assert "admin=127.0.0.1:9901" in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_json_exceptions_are_structured_without_locals() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    secret = "hunter2"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("localmesh.test").exception("failed")
    (record,) = json_lines(out)
    assert record["event"] == "failed"
    assert "RuntimeError" in json.dumps(record["exception"])
    assert secret not in out.getvalue()


def test_auto_picks_console_on_a_terminal_and_json_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_console("auto", TtyStream()) is True
    assert use_console("auto", io.StringIO()) is False
    assert use_console("console", io.StringIO()) is True
    assert use_console("json", TtyStream()) is False
    tty = TtyStream()
    configure_logging("info", "auto", stream=tty)
    structlog.get_logger("localmesh.test").info("hello")
    assert "\x1b[" in tty.getvalue()  # coloured console output


def test_levels() -> None:
    assert [level_number(n) for n in ("debug", "info", "warn", "error")] == [10, 20, 30, 40]
    assert level_number("WARNING") == 30
    with pytest.raises(ValueError, match="unknown log level"):
        level_number("loud")
    with pytest.raises(ValueError, match="unknown log format"):
        use_console("xml", io.StringIO())


def test_no_color_turns_colours_off_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    tty = TtyStream()
    configure_logging("info", "auto", stream=tty)
    structlog.get_logger("localmesh.test").info("hello")
    assert "hello" in tty.getvalue()
    assert "\x1b[" not in tty.getvalue()
