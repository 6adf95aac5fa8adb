"""List-then-watch one kind of object in one namespace, for ever, in one thread.

The official client is synchronous, so each reflector owns one thread that blocks on its
watch stream; there is one reflector per (namespace, kind), never one per connection or per
service. Events are handed to the event loop with `call_soon_threadsafe`. A `410 Gone`
(resourceVersion too old) relists; a lost API server is retried with capped exponential
backoff and jitter. Stopping shuts the socket down, which wakes the blocked read at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from localmesh.kube.failures import StatusError, credentials_refused, describe, http_status

log = structlog.get_logger(__name__)

JSON = dict[str, Any]

# (kind, payload): ("SYNC", [objects]) after a (re)list, ("ADDED"|"MODIFIED"|"DELETED", obj),
# ("DOWN", reason) when the stream is lost, ("ERROR", reason) when the server refuses it.
Deliver = Callable[[str, Any], None]

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 3.0
WATCH_TIMEOUT_SECONDS = 240  # server side; the client re-watches from the last version
READ_TIMEOUT_SECONDS = WATCH_TIMEOUT_SECONDS + 30  # catches a half-open connection
CONNECT_TIMEOUT_SECONDS = 5.0
JOIN_TIMEOUT_SECONDS = 5.0


class Gone(Exception):
    """The resourceVersion is too old: relist."""


def iter_lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON from a chunked response, read in large pieces."""
    pending = b""
    for chunk in response.stream(65536, decode_content=False):
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


class Reflector:
    """Mirror one list endpoint (`list_fn(namespace, **kw)`) into `deliver` calls."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        namespace: str,
        deliver: Deliver,
        *,
        loop: asyncio.AbstractEventLoop,
        server: str,
        context: str | None,
        refresh: Callable[[int], bool] | None = None,
        generation: Callable[[], int] | None = None,
    ) -> None:
        self.name = name
        # After a 401/403 or a TLS failure: re-read the credentials (True: they changed
        # since the given generation, so retry now).
        self._refresh = refresh
        self._generation = generation or (lambda: 0)
        self._list_fn = list_fn
        self._namespace = namespace
        self._deliver = deliver
        self._loop = loop
        self._server = server
        self._context = context
        self._stop = threading.Event()
        self._response: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            # Best effort: the socket may be closed already.
            with contextlib.suppress(Exception):
                response.shutdown()

    async def join(self) -> None:
        await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            log.warning("watch thread did not stop in time", watch=self.name)

    # -- the thread ----------------------------------------------------------------------
    def _post(self, kind: str, payload: Any) -> None:
        if self._stop.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, kind, payload)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _open(self, **kwargs: Any) -> Any:
        response = self._list_fn(
            self._namespace,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            **kwargs,
        )
        with self._lock:
            self._response = response
        if self._stop.is_set():
            response.shutdown()
        return response

    def _release(self, response: Any) -> None:
        with self._lock:
            self._response = None
        response.release_conn()

    def _list(self) -> str:
        response = self._open()
        try:
            body = json.loads(response.data)
        finally:
            self._release(response)
        self._post("SYNC", list(body.get("items") or []))
        return str(body.get("metadata", {}).get("resourceVersion", ""))

    def _watch(self, version: str) -> str:
        """Follow the stream until it ends; return the last resourceVersion seen."""
        response = self._open(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
        )
        try:
            for line in iter_lines(response):
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise StatusError(obj.get("code"), obj.get("message"))
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(kind, obj)
        finally:
            self._release(response)
        return version

    def _retry_with_new_credentials(self, exc: BaseException, seen: int) -> bool:
        return (
            self._refresh is not None
            and credentials_refused(exc)
            and not self._stop.is_set()
            and self._refresh(seen)
        )

    def _run(self) -> None:
        delay = BACKOFF_INITIAL
        version: str | None = None
        connected = False
        while not self._stop.is_set():
            seen = self._generation()
            try:
                if version is None:
                    version = self._list()
                    if not connected and not self._stop.is_set():
                        log.debug("watch synced", watch=self.name)
                connected = True
                delay = BACKOFF_INITIAL
                version = self._watch(version)
                continue
            except Gone:
                log.debug("watch expired; relisting", watch=self.name)
                version = None
                continue
            except Exception as exc:
                # An error status (the official client's ApiException, or the in-cluster
                # requests' StatusError) or a lost connection.
                error = http_status(exc)
                if error is not None and error.status == 410:
                    version = None
                    continue
                if error is None and self._stop.is_set():
                    break
                if self._retry_with_new_credentials(exc, seen):
                    version = None
                    continue
                reason = describe(exc, self._server, self._context)
                if error is not None:
                    self._post("ERROR", reason)
                else:
                    self._post("DOWN", reason)
                    # The server may have come back with a fresh history: relist, don't resume.
                    version = None
            if connected:
                log.warning("watch lost; reconnecting", watch=self.name, reason=reason)
                connected = False
            self._stop.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, BACKOFF_MAX)
