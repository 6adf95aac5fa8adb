"""Logging a failure that repeats: once when it starts, once when its cause changes or it
ends, each time with how often it happened, never once per request (an outage under load
would otherwise write a line per connection)."""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)


class FailureLog:
    def __init__(self, event: str, **context: Any) -> None:
        self._event = event
        self._context = context
        self._cause: str | None = None
        self._count = 0

    @property
    def failing(self) -> bool:
        return self._cause is not None

    def failed(self, cause: str) -> None:
        if cause == self._cause:
            self._count += 1
            return
        self._close("cause changed")
        self._cause, self._count = cause, 1
        log.warning(self._event, error=cause, **self._context)

    def succeeded(self) -> None:
        self._close("recovered")

    def _close(self, how: str) -> None:
        if self._cause is None:
            return
        log.info(f"{self._event}: {how}", error=self._cause, failures=self._count, **self._context)
        self._cause, self._count = None, 0
