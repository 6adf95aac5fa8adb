"""Readiness and liveness probes (httpGet, tcpSocket) with the kubelet's timing fields
and failure messages."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from localmesh.sandbox.ips import dial

DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}


@dataclass(frozen=True)
class Probe:
    spec: dict[str, Any]
    host: str
    ports: dict[str, int]  # the container's named ports

    def setting(self, name: str) -> float:
        value = self.spec.get(name)
        return float(value if isinstance(value, int | float) and value > 0 else DEFAULTS[name])

    def _port(self, port: Any) -> int:
        if isinstance(port, str) and not port.isdigit():
            if port not in self.ports:
                raise ValueError(f"port {port!r} is not a named port of the container")
            return self.ports[port]
        return int(port)

    async def run(self) -> tuple[bool, str]:
        """(success, failure message) of one probe."""
        try:
            if "httpGet" in self.spec:
                return await self._http(self.spec["httpGet"])
            if "tcpSocket" in self.spec:
                return await self._tcp(self.spec["tcpSocket"])
        except ValueError as exc:
            return False, str(exc)
        return True, ""  # exec and grpc probes are not run: they count as passing

    async def _http(self, spec: dict[str, Any]) -> tuple[bool, str]:
        timeout = self.setting("timeoutSeconds")
        scheme = str(spec.get("scheme", "HTTP")).lower()
        host = spec.get("host") or self.host
        path = spec.get("path") or "/"
        port = self._port(spec.get("port"))
        url = f"{scheme}://{host}:{port}{path}"
        dial_host, dial_port = dial(host, port)
        target = f"{scheme}://{dial_host}:{dial_port}{path}"  # url itself, unless shared
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/1.32")
        # HTTPS probes do not verify the certificate, as the kubelet's do not.
        ctx: ssl.SSLContext | bool = scheme != "https"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(target, headers=headers, ssl=ctx, allow_redirects=False) as resp,
            ):
                await resp.read()
                if 200 <= resp.status < 400:
                    return True, ""
                return False, f"HTTP probe failed with statuscode: {resp.status}"
        except TimeoutError:
            return False, (
                f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while '
                "awaiting headers)"
            )
        except aiohttp.ClientConnectorError as exc:
            return False, f'Get "{url}": dial tcp {host}:{exc.port}: connect: connection refused'
        except aiohttp.ClientError as exc:
            return False, f'Get "{url}": {exc}'

    async def _tcp(self, spec: dict[str, Any]) -> tuple[bool, str]:
        timeout = self.setting("timeoutSeconds")
        host = spec.get("host") or self.host
        port = self._port(spec.get("port"))
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*dial(host, port)), timeout)
        except TimeoutError:
            return False, f"dial tcp {host}:{port}: i/o timeout"
        except OSError:
            return False, f"dial tcp {host}:{port}: connect: connection refused"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, ""


async def run_probe(
    probe: Probe,
    on_result: Callable[[bool, str], Awaitable[None] | None],
) -> None:
    """Probe every periodSeconds after initialDelaySeconds; report each result.

    The thresholds are applied by the caller's `on_result` bookkeeping (see ProbeState).
    """
    await asyncio.sleep(float(probe.spec.get("initialDelaySeconds") or 0))  # its schedule
    while True:
        ok, message = await probe.run()
        result = on_result(ok, message)
        if result is not None:
            await result
        await asyncio.sleep(probe.setting("periodSeconds"))  # the probe's own schedule


@dataclass
class ProbeState:
    """Consecutive successes and failures against the probe's thresholds."""

    success_threshold: int
    failure_threshold: int
    passing: bool = False
    successes: int = 0
    failures: int = 0

    @classmethod
    def of(cls, probe: Probe, passing: bool = False) -> ProbeState:
        return cls(
            int(probe.setting("successThreshold")), int(probe.setting("failureThreshold")), passing
        )

    def record(self, ok: bool) -> bool:
        """Count one result; True when the verdict (passing) changed."""
        before = self.passing
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.success_threshold:
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.failure_threshold:
                self.passing = False
        return before != self.passing
