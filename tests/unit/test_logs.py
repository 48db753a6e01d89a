"""infra.logs: the format follows where output goes, a terminal is quiet
unless a level is asked for, and library logs share the format."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import structlog

from cloud_engine.infra.logs import configure_logging, lifecycle, resolve_format


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminals(monkeypatch: pytest.MonkeyPatch) -> tuple[io.StringIO, io.StringIO]:
    """stdout and stderr as terminals. Called in the test itself: pytest's
    capture puts its own streams back between a fixture and its test."""
    out, err = Tty(), Tty()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return out, err


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_cloud_engine", False)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)


def test_auto_is_console_only_when_both_outputs_are_terminals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = terminals(monkeypatch)
    assert resolve_format("auto") == "console"
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # `up > file`
    assert resolve_format("auto") == "json"
    assert resolve_format("console") == "console"
    monkeypatch.setattr(sys, "stdout", streams[0])
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # `up 2> file`
    assert resolve_format("auto") == "json"


def test_a_quiet_terminal_shows_lifecycle_and_warnings_in_one_line_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = terminals(monkeypatch)
    assert configure_logging("auto") == "console"
    log = structlog.get_logger("t")
    log.info("per event noise", n=1)
    log.debug("debug noise")
    lifecycle(log, "ready", took_s=1.5)
    log.warning("drift", kind="x")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    text = re.sub(r"\x1b\[[0-9;]*m", "", streams[1].getvalue())  # coloured: a terminal
    assert "noise" not in text
    lines = text.splitlines()
    assert len(lines) == 3, text
    assert "ready" in lines[0] and "took_s=1.5" in lines[0] and "lifecycle" not in lines[0]
    assert "drift" in lines[1]
    assert "failed" in lines[2] and "ValueError: boom" in lines[2]
    assert "Traceback" not in text


def test_an_asked_level_shows_info_lines_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = terminals(monkeypatch)
    configure_logging("auto", "info")
    structlog.get_logger("t").info("per event", n=1)
    assert "per event" in streams[1].getvalue()


def test_json_keeps_info_and_the_whole_traceback_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = terminals(monkeypatch)
    assert configure_logging("json") == "json"
    log = structlog.get_logger("t")
    lifecycle(log, "ready")
    log.info("per event", n=1)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    records = [json.loads(x) for x in streams[1].getvalue().splitlines()]
    assert [r["event"] for r in records] == ["ready", "per event", "failed"]
    assert "lifecycle" not in records[0]
    assert "Traceback" in records[2]["exception"]


def test_library_logs_and_warnings_take_the_same_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = terminals(monkeypatch)
    configure_logging("json")
    logging.getLogger("aiokafka").info("chatty")
    logging.getLogger("aiokafka").error("Unable connect to node with id %s", 111)
    logging.getLogger("py.warnings").warning("coroutine was never awaited")
    records = [json.loads(x) for x in streams[1].getvalue().splitlines()]
    assert [(r["logger"], r["level"], r["event"]) for r in records] == [
        ("aiokafka", "error", "Unable connect to node with id 111"),
        ("py.warnings", "warning", "coroutine was never awaited"),
    ]
