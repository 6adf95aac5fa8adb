"""`up --access-log`: one line per request, through localmesh's own logging.

Envoy appends one JSON object per request (`FORMAT`) to a file in the runtime directory
(mode 0600, created here first); `AccessLogTail` follows it and logs each as a `request`
event with host, method, path, status, duration and the pod that served it (the
forwarder's address is looked up in the published endpoints; `local` for a process on
this machine, "" when no upstream was reached).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("localmesh.access")

POLL_SECONDS = 0.2  # Envoy itself flushes its access log about once a second

FORMAT = {
    "host": "%REQ(:AUTHORITY)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "duration_ms": "%DURATION%",
    "upstream": "%UPSTREAM_HOST%",
    "flags": "%RESPONSE_FLAGS%",
}


def prepare(path: Path) -> None:
    """An empty file only the user can read, before Envoy opens it for appending."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)


def request_fields(line: str, pod_of: Callable[[str], str]) -> dict[str, Any] | None:
    """The fields of one access log line, or None for a line that is not one."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    upstream = str(entry.get("upstream") or "")
    upstream = "" if upstream == "-" else upstream
    status = entry.get("status")
    duration = entry.get("duration_ms")
    return {
        "host": str(entry.get("host") or ""),
        "method": str(entry.get("method") or ""),
        "path": str(entry.get("path") or ""),
        "status": int(status) if isinstance(status, int | float) else 0,
        "duration_ms": int(duration) if isinstance(duration, int | float) else 0,
        "pod": pod_of(upstream) if upstream else "",
    }


class AccessLogTail:
    def __init__(self, path: Path, pod_of: Callable[[str], str]) -> None:
        self.path = path
        self._pod_of = pod_of
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """The requests appended since the last call (a half-written line waits)."""
        try:
            with self.path.open("rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        found = []
        for raw in lines:
            fields = request_fields(raw.decode("utf-8", "replace"), self._pod_of)
            if fields is not None:
                found.append(fields)
        return found

    async def run(self) -> None:
        while True:
            for fields in await asyncio.to_thread(self.read_new):
                log.info("request", **fields)
            await asyncio.sleep(POLL_SECONDS)


__all__ = ["FORMAT", "AccessLogTail", "prepare", "request_fields"]
