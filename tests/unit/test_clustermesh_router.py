"""`localmesh agent router`: bad input and missing credentials are one-line errors; the
router's ports come from its own Deployment. (The running router: tests/e2e.)"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from localmesh.cli.main import main
from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.router import RouterAgent, router_listen_ports
from localmesh.errors import KubeError
from localmesh.kube.incluster import SERVICEACCOUNT_DIR_ENV, load_incluster_access
from tests.unit.cli_helpers import logging_restored

BASE = ["agent", "router", "--namespace", "billing", "--service", "billing-api"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--health-port", "0"], "--health-port 0 is not a valid port"),
        (["--health-port", "15021", "--idle-timeout", "0"], "--idle-timeout 0: give a positive"),
        (["--health-port", "15021", "--idle-timeout", "nan"], "--idle-timeout nan: give a"),
        (
            ["--health-port", "15021", "--idle-timeout", "inf"],
            "--idle-timeout inf: give a positive number of seconds",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("localmesh: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_pod_ip_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    assert main([*BASE, "--health-port", "15021"]) == 2
    assert "no listen address: set $POD_IP" in capsys.readouterr().err


def test_no_in_cluster_credentials_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv(SERVICEACCOUNT_DIR_ENV, str(tmp_path))
    with pytest.raises(KubeError, match="no in-cluster credentials: Service host/port is not set"):
        load_incluster_access()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(KubeError, match="token file does not exist"):
        load_incluster_access()
    (tmp_path / "token").write_text("t0k3n")
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(KubeError, match=r"ca.crt: not a usable CA certificate"):
        load_incluster_access()
    (tmp_path / "ca.crt").write_bytes(
        Path(ssl.get_default_verify_paths().cafile or "").read_bytes()
    )
    access = load_incluster_access()
    assert access.server == "https://127.0.0.1:6443"
    assert access.headers_now()["Authorization"].lower() == "bearer t0k3n"
    # A rotated token is used from the next request on.
    (tmp_path / "token.new").write_text("r0t4t3d-and-longer\n")
    (tmp_path / "token.new").replace(tmp_path / "token")
    assert access.headers_now()["Authorization"] == "Bearer r0t4t3d-and-longer"


def test_router_ports_are_the_deployments_ports_without_the_health_port() -> None:
    ports = [m.RouterPort(8080, "http"), m.RouterPort(9090, None)]
    deployment = m.router_deployment("billing", "billing-api", "img:1", ports)
    assert router_listen_ports(deployment) == [8080, 9090]


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: router\r\n\r\n".encode())
        return await reader.read()
    finally:
        writer.close()


class _Parking(asyncio.Event):
    """The router's routed-set event, telling `parked` when a request waits on it."""

    def __init__(self, parked: asyncio.Event) -> None:
        super().__init__()
        self.parked = parked

    async def wait(self) -> Literal[True]:
        self.parked.set()
        return await super().wait()


async def test_routed_answers_once_the_acked_routes_hold_the_session() -> None:
    """GET /routed/<session>?wait=S: 404 when the session is not routed within S, and a
    waiting request answers 200 as soon as the ACKed routes hold it. (What sets the
    routed set, Envoy's ACK of a snapshot routing the mark, runs in the e2e tests:
    `mesh` prints its try line only after this answer.)"""
    agent = RouterAgent("billing", "billing-api", pod_ip="127.0.0.1", health_port=0)
    server = await asyncio.start_server(agent._on_health, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(30):
            assert (await _get(port, "/routed/ana?wait=0")).startswith(b"HTTP/1.1 404")
            assert (await _get(port, "/routed/ana?wait=oops")).startswith(b"HTTP/1.1 404")
            # A short wait that nothing routes ends in 404, not in an answer at once.
            assert (await _get(port, "/routed/ana?wait=0.2")).startswith(b"HTTP/1.1 404")
            # A waiting request is parked on the routed set's change, then answered by it.
            parked = asyncio.Event()
            agent._routed_changed = _Parking(parked)
            waiting = asyncio.create_task(_get(port, "/routed/ana?wait=25"))
            await parked.wait()
            # A change that does not route it: the request parks again, unanswered.
            parked.clear()
            agent._routed = frozenset({"bob"})  # as _track_routes does after an ACK
            agent._routed_changed.set()
            parked_again = asyncio.create_task(parked.wait())
            await asyncio.wait({parked_again, waiting}, return_when=asyncio.FIRST_COMPLETED)
            assert parked_again.done() and not waiting.done()
            agent._routed = frozenset({"bob", "ana"})
            agent._routed_changed.set()
            answer = await waiting
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"routed\n")
            assert (await _get(port, "/routed/bob")).startswith(b"HTTP/1.1 200")
            assert (await _get(port, "/routed/cora?wait=0.1")).startswith(b"HTTP/1.1 404")
    finally:
        server.close()
        await server.wait_closed()


def _slice(name: str, *ips: str) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "ports": [{"port": 8080}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"name": f"pod-{ip}"}}
            for ip in ips
        ],
    }


def test_the_origin_pods_stay_routed_when_the_origin_service_goes() -> None:
    """The origin Service deleted (the mesh is being taken down) takes its EndpointSlices
    along, while a lagging kube-proxy still sends clients here: they keep reaching the pods
    last known. A slice that is still there but empty (no pods) is followed as it is."""
    agent = RouterAgent("billing", "billing-api", pod_ip="127.0.0.1", health_port=0)
    agent.ports = [8080]
    now = datetime.now(UTC)
    for kind in ("Lease", "Pod"):
        agent._deliver(kind)("SYNC", [])
    agent._deliver("EndpointSlice")("SYNC", [_slice("origin-a", "10.0.0.1")])

    def origin() -> list[str]:
        return [e.address for e in agent._publish(now).origin[8080]]

    assert origin() == ["10.0.0.1"]
    agent._deliver("EndpointSlice")("DELETED", _slice("origin-a", "10.0.0.1"))
    assert origin() == ["10.0.0.1"]
    agent._deliver("EndpointSlice")("ADDED", _slice("origin-b", "10.0.0.2"))
    assert origin() == ["10.0.0.2"]
    agent._deliver("EndpointSlice")("MODIFIED", _slice("origin-b"))
    assert origin() == []


async def test_routed_says_who_holds_a_mark_at_once() -> None:
    """A session whose mark an older session holds gets 409 naming the holder, without
    waiting out its ?wait=: waiting would not change it."""
    from tests.unit.test_clustermesh_router_plan import NOW, lease, make, pod

    agent = RouterAgent("billing", "billing-api", pod_ip="127.0.0.1", health_port=0)
    young = lease("a-young", acquired=NOW)
    old = lease("z-old", acquired=NOW - timedelta(seconds=9))
    agent._planned = make([young, old], [pod("a-young", "10.0.1.1")], [])
    server = await asyncio.start_server(agent._on_health, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            answer = await _get(port, "/routed/a-young?wait=25")
            assert answer.startswith(b"HTTP/1.1 409")
            assert answer.endswith(b"mark held by z-old@laptop (session z-old)\n")
            assert (await _get(port, "/routed/z-old?wait=nan")).startswith(b"HTTP/1.1 404")
    finally:
        server.close()
        await server.wait_closed()
