"""localmesh.forward against the sandbox: one forwarder per ready pod, events, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmesh.config import ServiceEntry
from localmesh.desired import Protocol
from localmesh.errors import TargetError
from localmesh.forward import (
    ForwarderEvent,
    ForwardManager,
    ForwardOptions,
    multiplex as multiplexed_session,
)
from localmesh.kube import Cluster
from localmesh.sandbox import Sandbox, Scenario

pytestmark = pytest.mark.integration

SCENARIO: dict[str, Any] = {
    "namespaces": ["shop"],
    "deployments": [
        {
            "name": "web",
            "namespace": "shop",
            "workload": "http-echo",
            "replicas": 3,
            "ports": [{"name": "http", "containerPort": 8080}],
        },
        {"name": "echo", "namespace": "shop", "workload": "tcp-echo", "replicas": 1},
    ],
    "services": [
        {
            "name": "web",
            "namespace": "shop",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
        {
            "name": "echo",
            "namespace": "shop",
            "selector": {"app": "echo"},
            "ports": [{"name": "tcp", "port": 9000, "targetPort": 9000}],
        },
    ],
}

WAIT = 10.0
COUNT = 300


def entry(service: str = "web", port_name: str = "http") -> ServiceEntry:
    return ServiceEntry(
        host=f"{service}.localhost",
        namespace="shop",
        service=service,
        protocol=Protocol.HTTP,
        port_name=port_name,
    )


class Events:
    """The one consumer of forwarder events: the live endpoints, as a reconciler keeps them."""

    def __init__(self) -> None:
        self.log: list[ForwarderEvent] = []
        self.live: dict[str, ForwarderEvent] = {}  # pod -> its up event
        self._changed = asyncio.Event()

    def __call__(self, event: ForwarderEvent) -> None:
        self.log.append(event)
        if event.up:
            assert event.pod not in self.live, "two live forwarders for one pod"
            self.live[event.pod] = event
        else:
            assert self.live.pop(event.pod).port == event.port
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; events: {self.log}") from None


def ready_pods(sandbox: Sandbox, service: str = "web") -> set[str]:
    return {
        p["metadata"]["name"]
        for p in sandbox.service_pods("shop", service)
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    }


async def http_get(port: int, path: str = "/") -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    result: dict[str, Any] = json.loads(body)
    return result


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.start(Scenario.from_dict(SCENARIO)) as sb:
        yield sb


FORWARD_TASKS = ("forward ", "spdy", "tunnel-", "reserve ", "session ", "withdraw ", "close ")


def leftovers() -> list[str]:
    """Tasks and watch threads of localmesh still alive (a clean shutdown leaves none)."""
    tasks = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
    threads = [t.name for t in threading.enumerate() if t.name.startswith("watch-")]
    return [n for n in tasks if n.startswith(FORWARD_TASKS)] + threads


@pytest.fixture
async def cluster(sandbox: Sandbox) -> AsyncIterator[Cluster]:
    connected = await asyncio.to_thread(Cluster.connect, str(sandbox.kubeconfig_path))
    yield connected
    await connected.close()
    assert not leftovers(), "left running after close"


@pytest.fixture
async def events() -> Events:
    return Events()


@pytest.fixture(params=["spdy", "websocket"])
def multiplex(request: pytest.FixtureRequest) -> bool:
    """Both transports: one SPDY-in-websocket session per pod, one v4 websocket per connection."""
    return bool(request.param == "spdy")


@pytest.fixture
async def manager(
    cluster: Cluster, events: Events, multiplex: bool
) -> AsyncIterator[ForwardManager]:
    options = ForwardOptions(grace=0.5, multiplex=multiplex)
    async with ForwardManager(cluster, events, options) as started:
        yield started
    assert not events.live, "every up event must be followed by a down event on close"
    assert not [n for n in leftovers() if not n.startswith("watch-")], "tasks left running"


async def test_three_replicas_are_forwarded_to_each_pod(
    sandbox: Sandbox, manager: ForwardManager, events: Events
) -> None:
    await manager.add(entry())
    pods = ready_pods(sandbox)
    assert len(pods) == 3
    await events.until(lambda: set(events.live) == pods, "a forwarder per pod")
    for pod, event in events.live.items():
        assert event.address == "127.0.0.1"
        assert event.endpoint.port == event.port
        assert (await http_get(event.port))["pod"] == pod


async def test_deleted_pod_is_withdrawn_and_its_replacement_added(
    sandbox: Sandbox, manager: ForwardManager, events: Events
) -> None:
    await manager.add(entry())
    await events.until(lambda: set(events.live) == ready_pods(sandbox), "all pods forwarded")
    victim = sorted(events.live)[0]
    old = events.live[victim]
    replacement = await sandbox.replace_pod("shop", victim)
    await events.until(lambda: victim not in events.live and replacement in events.live, "the swap")
    down = next(i for i, e in enumerate(events.log) if not e.up and e.pod == victim)
    assert down < len(events.log)
    assert (await http_get(events.live[replacement].port))["pod"] == replacement
    # The withdrawn listener closes once its grace period is over.
    await wait_refused(old.port)


async def wait_refused(port: int) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return
            writer.close()
            await asyncio.sleep(0.05)  # poll the listener: closing it has no event to wait on


async def test_unready_pod_is_withdrawn_while_open_connections_finish(
    sandbox: Sandbox, manager: ForwardManager, events: Events
) -> None:
    await manager.add(entry())
    await events.until(lambda: len(events.live) == 3, "three forwarders")
    pod, event = sorted(events.live.items())[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", event.port)
    request = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
    writer.write(request)
    assert b'"pod": "' + pod.encode() in await reader.readuntil(b"}")
    await reader.readuntil(b"}")  # the rest of the JSON body (headers map)

    sandbox.faults.set_ready("shop", pod, False)
    await events.until(lambda: pod not in events.live, "the unready pod withdrawn")
    # The open keep-alive connection still works during the grace period.
    writer.write(request)
    assert b'"pod": "' + pod.encode() in await reader.readuntil(b"}")
    writer.close()
    sandbox.faults.set_ready("shop", pod, None)
    await events.until(lambda: pod in events.live, "the pod back once Ready")


async def test_apiserver_restart_is_survived(
    sandbox: Sandbox, manager: ForwardManager, events: Events
) -> None:
    await manager.add(entry())
    await events.until(lambda: len(events.live) == 3, "three forwarders")
    await sandbox.faults.restart_apiserver(0.3)
    for event in list(events.live.values()):
        assert (await http_get(event.port))["pod"] == event.pod
    victim = sorted(events.live)[0]
    replacement = await sandbox.replace_pod("shop", victim)
    await events.until(lambda: replacement in events.live, "the replacement after the restart")


async def test_error_channel_failure_is_reported(
    sandbox: Sandbox, manager: ForwardManager, events: Events
) -> None:
    service = await manager.add(entry("echo", "tcp"))
    await events.until(lambda: len(events.live) == 1, "the echo forwarder")
    pod, event = next(iter(events.live.items()))
    await sandbox.faults.kill_listener("shop", pod)
    reader, writer = await asyncio.open_connection("127.0.0.1", event.port)
    writer.write(b"ping")
    assert await reader.read() == b""  # the forward failed: the connection is closed
    writer.close()
    stats = next(iter(service.forwarders.values())).stats
    assert stats.errors >= 1
    assert stats.last_error is not None and "9000" in stats.last_error


async def test_three_hundred_concurrent_connections_past_1024_descriptors(
    manager: ForwardManager, events: Events
) -> None:
    await manager.add(entry("echo", "tcp"))
    await events.until(lambda: len(events.live) == 1, "the echo forwarder")
    port = next(iter(events.live.values())).port
    streams = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(COUNT))
    )
    # All are open at once; each gets its own bytes back.
    for index, (_, writer) in enumerate(streams):
        writer.write(f"connection {index:03d};".encode())
    async with asyncio.timeout(30):
        answers = await asyncio.gather(
            *(reader.readexactly(len("connection 000;")) for reader, _ in streams)
        )
    assert answers == [f"connection {i:03d};".encode() for i in range(COUNT)]
    # Client, forwarder, sandbox and backend sockets all live in this process: past select().
    assert len(os.listdir("/proc/self/fd")) > 1024
    for _, writer in streams:
        writer.close()


async def idle_echo(
    cluster: Cluster, multiplex: bool, heartbeat: float | None, idle: float
) -> bytes:
    """Echo once, stay idle for `idle` seconds, echo again; returns the second answer."""
    seen = Events()
    options = ForwardOptions(heartbeat=heartbeat, spares=0, multiplex=multiplex)
    async with ForwardManager(cluster, seen, options) as manager:
        await manager.add(entry("echo", "tcp"))
        await seen.until(lambda: len(seen.live) == 1, "the echo forwarder")
        port = next(iter(seen.live.values())).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        await asyncio.sleep(idle)  # the subject of the test: time without traffic
        try:
            writer.write(b"again")
            async with asyncio.timeout(WAIT):
                return await reader.read(5)
        finally:
            writer.close()


async def test_idle_connection_outlives_the_idle_timeout(
    sandbox: Sandbox, cluster: Cluster, multiplex: bool
) -> None:
    sandbox.faults.portforward_idle_timeout = 0.5
    assert await idle_echo(cluster, multiplex, heartbeat=0.15, idle=1.5) == b"again"
    # Without keepalives the same idle period ends the connection.
    assert await idle_echo(cluster, multiplex, heartbeat=None, idle=1.5) == b""


async def test_half_close_still_gets_the_answer_when_multiplexed(
    sandbox: Sandbox, cluster: Cluster, events: Events
) -> None:
    # SPDY streams can half-close: the client's FIN reaches the pod, the answer comes back.
    async with ForwardManager(cluster, events, ForwardOptions(multiplex=True)) as manager:
        service = await manager.add(entry("echo", "tcp"))
        await events.until(lambda: len(events.live) == 1, "the echo forwarder")
        port = next(iter(events.live.values())).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = bytes(range(256)) * 4096  # 1 MiB
        writer.write(payload)
        writer.write_eof()
        async with asyncio.timeout(WAIT):
            assert await reader.read() == payload  # complete, then EOF
        writer.close()
        stats = next(iter(service.forwarders.values())).stats
        assert stats.tunnels == 1  # one session carried it


async def test_wrong_token_and_bad_entries_fail_alone(
    sandbox: Sandbox, manager: ForwardManager, events: Events, tmp_path: Path
) -> None:
    with pytest.raises(TargetError, match="it has: tcp:9000"):
        await manager.add(entry("echo", "nope"))
    with pytest.raises(TargetError, match="service 'ghost' not found"):
        await manager.add(entry("ghost"))
    await manager.add(entry())
    await events.until(lambda: len(events.live) == 3, "the good entry forwarded")

    document = yaml.safe_load(sandbox.kubeconfig_path.read_text())
    document["users"][0]["user"]["token"] = "wrong"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    wrong = Cluster.connect(str(path))
    try:
        async with ForwardManager(wrong, events) as other:
            with pytest.raises(TargetError, match=r"401 Unauthorized"):
                await other.add(entry())
    finally:
        await wrong.close()


async def test_exec_plugin_credentials_reach_rest_and_port_forward(
    sandbox: Sandbox, events: Events, tmp_path: Path
) -> None:
    credential = json.dumps(
        {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "kind": "ExecCredential",
            "status": {"token": sandbox.token},
        }
    )
    document = yaml.safe_load(sandbox.kubeconfig_path.read_text())
    document["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": ["-c", f"print({credential!r})"],
            "interactiveMode": "Never",
        }
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    cluster = await asyncio.to_thread(Cluster.connect, str(path))
    try:
        async with ForwardManager(cluster, events) as manager:
            await manager.add(entry())
            await events.until(lambda: len(events.live) == 3, "three forwarders")
            pod, event = sorted(events.live.items())[0]
            assert (await http_get(event.port))["pod"] == pod
    finally:
        await cluster.close()


async def test_client_that_stops_reading_does_not_stall_the_session(
    cluster: Cluster, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multiplexed_session, "STALL_SECONDS", 0.3)
    async with ForwardManager(cluster, events, ForwardOptions(multiplex=True)) as manager:
        service = await manager.add(entry("echo", "tcp"))
        await events.until(lambda: len(events.live) == 1, "the echo forwarder")
        port = next(iter(events.live.values())).port
        stats = next(iter(service.forwarders.values())).stats
        stuck_reader, stuck = await asyncio.open_connection("127.0.0.1", port)
        stuck.write(b"x" * (32 << 20))  # echoed back to a client that does not read
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(4) == b"ping"
            for _ in range(int(WAIT / 0.05)):
                if stats.stalled:
                    break
                await asyncio.sleep(0.05)  # poll a counter: the cut-off has no event to await
            assert stats.stalled == 1
            # The stuck connection was cut off rather than holding up the session.
            with contextlib.suppress(ConnectionError):
                while await stuck_reader.read(1 << 20):
                    pass
            writer.write(b"pong")
            assert await reader.readexactly(4) == b"pong"
        for w in (stuck, writer):
            w.close()
