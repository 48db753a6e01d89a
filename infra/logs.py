"""structlog configuration: JSON lines for machines, readable lines for people.

The format follows where the output goes unless CLOUD_ENGINE_LOG_FORMAT
says otherwise: readable ("console") when both stdout and stderr are
terminals, JSON otherwise (a pipe, a file, a supervisor's journal), so the
same command reads well by hand and parses well under a supervisor.

On a terminal without CLOUD_ENGINE_LOG_LEVEL the output is quiet: warnings,
errors and lifecycle lines (a log call given lifecycle=True: what started,
stopped, became ready) are shown, the per-event info lines are not. Each
event is one line there; a traceback is shortened to its exception unless
the level is debug (JSON keeps it whole, in one line).

Libraries that log through the standard logging module (aiokafka, uvicorn,
asyncio) and Python warnings go through the same renderer, from warning up:
without this their lines (and tracebacks) are printed raw by logging's
last-resort handler, in neither format.

Request and correlation ids are bound with structlog.contextvars by whoever
starts a unit of work (the API per request, consumers per message), so every
line logged below carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
# The key a lifecycle line carries (log.info("ready", lifecycle=True)).
LIFECYCLE = "lifecycle"


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def resolve_format(log_format: LogFormat) -> Literal["json", "console"]:
    """The format "auto" stands for here: console only when a person reads
    both outputs (`up > file` or `up 2> file` is being recorded: JSON)."""
    if log_format != "auto":
        return log_format
    return "console" if _is_terminal(sys.stdout) and _is_terminal(sys.stderr) else "json"


def _quiet(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Let through warnings and above, and lifecycle lines (add_log_level
    ran before: "level" is the name, "exception" already made "error")."""
    if event.pop(LIFECYCLE, False) or event.get("level") not in ("debug", "info", "notset"):
        return event
    raise structlog.DropEvent


def _drop_lifecycle_key(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop(LIFECYCLE, None)
    return event


def _one_line_exception(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A terminal line keeps the exception, not its traceback."""
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event["error"] = f"{exc_info[0].__name__}: {exc_info[1]}"
    return event


def configure_logging(
    log_format: LogFormat = "auto", level: LogLevel | None = None
) -> Literal["json", "console"]:
    """Configure structlog and the standard logging module; return the
    format chosen. level None: info in JSON, quiet on a terminal."""
    chosen = resolve_format(log_format)
    quiet = chosen == "console" and level is None
    numeric = _LEVELS.get(level or "info", logging.ERROR)
    # Lifecycle lines are info: a quiet terminal filters above the bound
    # logger (which drops below its level before any processor runs).
    bound_level = logging.INFO if quiet else numeric
    renderer: Processor
    stamper: Processor
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
        stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
        shape: list[Processor] = [_drop_lifecycle_key, structlog.processors.format_exc_info]
    else:
        colors = _is_terminal(sys.stderr)
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
        stamper = structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
        shape = [_quiet if quiet else _drop_lifecycle_key]
        if numeric > logging.DEBUG:
            shape.append(_one_line_exception)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamper,
        *shape,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(bound_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configure_stdlib(renderer, shared, max(numeric, logging.WARNING))
    return chosen


def _configure_stdlib(renderer: Processor, shared: list[Processor], level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cloud_engine", False)]:
        root.removeHandler(old)
    handler._cloud_engine = True  # type: ignore[attr-defined]  # ours, replaced on reconfigure
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def lifecycle(logger: Any, event: str, **values: Any) -> None:
    """Log a lifecycle line: shown even on a quiet terminal."""
    logger.info(event, **{LIFECYCLE: True}, **values)
