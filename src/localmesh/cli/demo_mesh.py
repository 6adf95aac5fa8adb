"""The mesh part of `localmesh demo`: a small HTTP process on this machine, and a mesh
session of billing/billing-api with the mark `version: demo` that sends the marked requests
to it, through the same session and tunnel `localmesh mesh` uses.

On the sandbox, cluster IPs answer on this machine, which so plays "inside the cluster".
Cancelling `DemoMesh.run` leaves the mesh: the Service is put back and checked against the
copy taken before the session joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import shlex
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

NAMESPACE = "billing"
SERVICE = "billing-api"
SERVICE_PORT = 8080
MARK = "demo"
LOCAL_ANSWER = "served by your machine"
READY_TIMEOUT = 60.0
PROBE_INTERVAL = 0.2  # seconds between marked requests while the router catches up
# Fields the API server changes on every write: not part of "as it was".
SERVER_FIELDS = ("resourceVersion", "managedFields", "generation")


def comparable(service: dict[str, Any]) -> dict[str, Any]:
    """The Service as a user would compare it: spec, labels and annotations."""
    copied = copy.deepcopy(service)
    for name in SERVER_FIELDS:
        copied.get("metadata", {}).pop(name, None)
    copied.pop("status", None)
    return copied


@contextlib.asynccontextmanager
async def local_process() -> AsyncIterator[int]:
    """The developer's process on this machine: answers every request, naming itself."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        mark = request.headers.get("version", "")
        return web.Response(
            text=f"{LOCAL_ANSWER}: {request.method} {request.path} (version: {mark})\n"
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_on_loopback(app) as port:
        yield port


@contextlib.asynccontextmanager
async def serve_on_loopback(app: web.Application) -> AsyncIterator[int]:
    """`app` served on a free loopback port (yielded) until the block ends."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    try:
        yield int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


async def routed_here(http: Any, url: str) -> None:
    """Wait until the router sends a marked request to this machine: the tunnel connects
    before the router has read the session's Lease and seen the shadow Ready, and the
    commands are printed only once they work."""
    import aiohttp

    from localmesh.clustermesh.membership import MeshError

    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=5)
    until = loop.time() + READY_TIMEOUT
    last = "no answer yet"
    while True:
        try:
            async with http.get(url, headers={"version": MARK}, timeout=timeout) as reply:
                body = await reply.text()
            if body.startswith(LOCAL_ANSWER):
                return
            last = f"{reply.status} {body[:80]!r}"
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            last = str(exc) or type(exc).__name__
        if loop.time() >= until:
            raise MeshError(
                f"marked requests to {url} did not reach this machine within "
                f"{READY_TIMEOUT:g}s (last answer: {last})"
            )
        await asyncio.sleep(PROBE_INTERVAL)


def mesh_commands(cluster_ip: str, kubeconfig: Path, localmesh: str) -> str:
    """Lines that work pasted whole into a shell."""
    url = f"http://{cluster_ip}:{SERVICE_PORT}/hello"
    env = f"KUBECONFIG={shlex.quote(str(kubeconfig))}"
    return "\n".join(
        [
            f"# marked: served by the local process ({LOCAL_ANSWER})",
            f"curl -H {shlex.quote(f'version: {MARK}')} {url}",
            "# unmarked: served by the cluster's pods, as before",
            f"curl {url}",
            "# every developer's marks on the cluster, from the Leases:",
            f"{env} {localmesh} mesh list",
        ]
    )


class DemoMesh:
    """Runs until cancelled; `ready(text)` is called with the commands to try once marked
    requests reach the local process, `said(line)` with what the clean-up did."""

    def __init__(
        self,
        kubeconfig: Path,
        localmesh: str,
        ready: Callable[[str], None],
        said: Callable[[str], None],
    ) -> None:
        self.kubeconfig = kubeconfig
        self.localmesh = localmesh
        self.ready = ready
        self.said = said

    async def run(self) -> None:
        from localmesh.kube.objects import KubeObjects

        kube = await asyncio.to_thread(KubeObjects.connect, str(self.kubeconfig))
        try:
            async with local_process() as port:
                await self._mesh(kube, port)
        finally:
            await kube.close()

    async def _mesh(self, kube: Any, port: int) -> None:
        import aiohttp

        from localmesh.clustermesh.marks import parse_expose, parse_version_mark
        from localmesh.clustermesh.membership import MeshError
        from localmesh.clustermesh.session import MeshOptions, MeshSession
        from localmesh.clustermesh.tunnel_laptop import PortForwardDialer, TunnelClient
        from localmesh.forward import Connector

        before = await kube.get("Service", NAMESPACE, SERVICE)
        if before is None:
            raise MeshError(f"the sandbox has no Service {NAMESPACE}/{SERVICE}")
        options = MeshOptions(
            namespace=NAMESPACE,
            service=SERVICE,
            mark=parse_version_mark(MARK),
            exposed=parse_expose(f"{port}:{SERVICE_PORT}"),
            ready_timeout=READY_TIMEOUT,
        )
        session = MeshSession(kube, options)
        joined = await session.join()  # cancelled: it puts back what it changed
        try:
            async with aiohttp.ClientSession() as http:
                dialer = PortForwardDialer(
                    Connector(kube.access, http), NAMESPACE, joined.spec.name
                )
                tunnel = TunnelClient(
                    dialer, joined.secret, {p.target: p.local for p in joined.spec.ports}
                )
                tunnel.start()
                try:
                    try:
                        await asyncio.wait_for(tunnel.wait_ready(), READY_TIMEOUT)
                    except TimeoutError:
                        raise MeshError(
                            f"the tunnel to the shadow pod did not connect within "
                            f"{READY_TIMEOUT:g}s"
                            + (f": {dialer.last_error}" if dialer.last_error else "")
                        ) from None
                    ip = str(before["spec"]["clusterIP"])
                    await routed_here(http, f"http://{ip}:{SERVICE_PORT}/")
                    self.ready(mesh_commands(ip, self.kubeconfig, self.localmesh))
                    await session.lost.wait()
                    raise MeshError(f"the mesh session was lost: {session.lost_reason}")
                finally:
                    await tunnel.stop()
                    await dialer.close()
        finally:
            await asyncio.shield(self._leave(kube, session, before))

    async def _leave(self, kube: Any, session: Any, before: dict[str, Any]) -> None:
        await session.leave()
        after = await kube.get("Service", NAMESPACE, SERVICE)
        if after is not None and comparable(after) == comparable(before):
            self.said(f"mesh: left {NAMESPACE}/{SERVICE}; the Service is as it was before")
        else:
            self.said(
                f"mesh: left {NAMESPACE}/{SERVICE}, but the Service differs from before the "
                "mesh (`localmesh mesh clean` puts it back)"
            )
