"""Logging: structlog for localmesh, stdlib loggers (grpc, kubernetes, aiohttp, asyncio) alike.

Only the CLI calls `configure_logging`; every module just does
`log = structlog.get_logger(__name__)`. All records, structlog's and the standard library's,
go through one `ProcessorFormatter` on one stderr handler: a coloured console renderer when
stderr is a terminal, one JSON object per line otherwise (or as `fmt` says).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LEVEL_NAMES = ("debug", "info", "warn", "error")  # what the CLI offers
FORMATS = ("auto", "console", "json")
LogFormat = Literal["auto", "console", "json"]

# Third-party loggers that are chatty at their own INFO/DEBUG: kept one step quieter than
# localmesh unless debug is asked for.
_NOISY = ("grpc", "kubernetes", "urllib3", "aiohttp", "asyncio")


def level_number(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; use one of {', '.join(LEVEL_NAMES)}"
        ) from None


def use_console(fmt: str, stream: TextIO) -> bool:
    """Whether `fmt` means the human console renderer on this stream."""
    if fmt == "auto":
        return _isatty(stream)
    if fmt in ("console", "json"):
        return fmt == "console"
    raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to `stream` (stderr) at `level`, rendered as `fmt`.

    Safe to call more than once (tests, `--watch` reloads): it replaces the previous setup.
    """
    number = level_number(level)
    out = stream if stream is not None else sys.stderr
    console = use_console(fmt, out)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        timestamper,
    ]
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors(out))
    else:
        renderer = structlog.processors.JSONRenderer()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *(() if console else (_json_tracebacks,)),
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("localmesh")

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for name in _NOISY:
        logging.getLogger(name).setLevel(
            number if number <= logging.DEBUG else max(number, logging.WARNING)
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


# Structured tracebacks without local variables (they may hold secrets, and are long).
_json_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _colors(stream: TextIO) -> bool:
    # https://no-color.org: any non-empty NO_COLOR turns colours off.
    return _isatty(stream) and not os.environ.get("NO_COLOR")
