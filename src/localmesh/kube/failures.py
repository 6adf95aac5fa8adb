"""Turning client exceptions into sentences a user can act on."""

from __future__ import annotations

import json
import ssl

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException


def status_message(exc: ApiException) -> str:
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
    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return True
        return not exc.status and str(exc.reason or "").startswith("SSLError")
    reason: BaseException | None = exc
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        reason = exc.reason
    return isinstance(reason, urllib3.exceptions.SSLError | ssl.SSLError)


def describe(exc: BaseException, server: str, context: str | None) -> str:
    """Why a request to the API server failed, with the likely fix."""
    where = f"the Kubernetes API server at {server}" + (f" (context {context})" if context else "")
    if isinstance(exc, ApiException) and not exc.status:
        # The client wraps TLS failures as a status-0 ApiException: "SSLError\n<reason>".
        reason_text = str(exc.reason or "")
        if reason_text.startswith("SSLError"):
            return _tls(where, reason_text.split("\n", 1)[-1])
        return f"request to {where} failed: {reason_text}"
    if isinstance(exc, ApiException):
        if exc.status == 401:
            return (
                f"{where} rejected the credentials (401 Unauthorized): check the token or "
                "client certificate of this context in your kubeconfig"
            )
        if exc.status == 403:
            return f"forbidden by RBAC (403): {status_message(exc)}"
        return f"{where} answered {exc.status}: {status_message(exc)}"
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
