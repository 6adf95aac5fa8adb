"""Turning client exceptions into sentences a user can act on.

An error status comes as the official client's `ApiException`, or as a `StatusError` from
the in-cluster agents' plain requests (localmesh.kube.incluster), which never load the
client (0.3 s and pydantic on a pod's start-up).
"""

from __future__ import annotations

import json
import ssl
import sys
from typing import Any

import urllib3.exceptions


class StatusError(Exception):
    """An error status from the API server (what the client's ApiException carries)."""

    def __init__(self, status: int | None, reason: str | None, body: str | None = None) -> None:
        super().__init__(f"({status}) {reason}")
        self.status = status
        self.reason = reason
        self.body = body


def status_errors() -> tuple[type[Exception], ...]:
    """The exception types that carry an error status: StatusError, and ApiException once
    the official client is loaded (none can exist before)."""
    client = sys.modules.get("kubernetes.client.exceptions")
    return (StatusError,) if client is None else (StatusError, client.ApiException)


def http_status(exc: BaseException) -> Any:
    """`exc` if it carries an error status (`.status`, `.reason`, `.body`), else None."""
    return exc if isinstance(exc, status_errors()) else None


def status_message(exc: Any) -> str:
    """The `message` of the Status object the server sent, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        message = body.get("message") if isinstance(body, dict) else None
    except (TypeError, ValueError):
        message = None
    return str(message or exc.reason or f"HTTP {exc.status}")


def credentials_refused(exc: BaseException) -> bool:
    """A failure new credentials may cure: 401/403, or a TLS handshake that failed (the
    server's certificate no longer matches the kubeconfig's CA)."""
    if (error := http_status(exc)) is not None:
        if error.status in (401, 403):
            return True
        return not error.status and str(error.reason or "").startswith("SSLError")
    reason: BaseException | None = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        reason = exc.reason
    return isinstance(reason, urllib3.exceptions.SSLError | ssl.SSLError)


def describe(exc: BaseException, server: str, context: str | None) -> str:
    """Why a request to the API server failed, with the likely fix."""
    where = f"the Kubernetes API server at {server}" + (f" (context {context})" if context else "")
    error = http_status(exc)
    if error is not None and not error.status:
        # The client wraps TLS failures as a status-0 ApiException: "SSLError\n<reason>".
        reason_text = str(error.reason or "")
        if reason_text.startswith("SSLError"):
            return _tls(where, reason_text.split("\n", 1)[-1])
        return f"request to {where} failed: {reason_text}"
    if error is not None:
        if error.status == 401:
            return (
                f"{where} rejected the credentials (401 Unauthorized): check the token or "
                "client certificate of this context in your kubeconfig"
            )
        if error.status == 403:
            return f"forbidden by RBAC (403): {status_message(error)}"
        return f"{where} answered {error.status}: {status_message(error)}"
    reason: BaseException = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    if isinstance(reason, urllib3.exceptions.SSLError | ssl.SSLError):
        return _tls(where, str(reason))
    if isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionError):
        return f"cannot reach {where}: connection refused or unreachable"
    if isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError):
        return f"cannot reach {where}: timed out"
    return f"request to {where} failed: {reason}"


def _tls(where: str, reason: str) -> str:
    return (
        f"TLS failure talking to {where}: {reason}; check certificate-authority(-data) "
        "and the server address in your kubeconfig"
    )
