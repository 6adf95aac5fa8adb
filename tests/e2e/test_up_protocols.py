"""`localmesh up` on a services.yaml without `type`: the Service port picks the protocol.

The seed calls `type` informational. Without it, gRPC must still work (the port is named
`grpc`, or its `appProtocol` says h2c), and plain HTTP/1.1 must still reach an HTTP
service (no telling name: Envoy speaks the client's protocol).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
import pytest_asyncio

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    UpProcess,
    eventually,
    free_port,
    grpc_greet,
    http_get,
    private_runtime_dir,
    services_yaml,
    start_up,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

# A second Service for the gRPC pods whose port name says nothing; appProtocol does.
RPC_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: users-rpc, namespace: users}
spec:
  selector: {app: users-api}
  ports: [{name: api, port: 50051, targetPort: grpc, appProtocol: kubernetes.io/h2c}]
---
apiVersion: v1
kind: Service
metadata: {name: users-flip, namespace: users}
spec:
  selector: {app: users-api}
  ports: [{name: api, port: 50051, targetPort: grpc}]
"""

ENTRIES = [
    {"host": "users-api.localhost", "namespace": "users", "service": "users-api",
     "port_name": "grpc"},
    {"host": "users-rpc.localhost", "namespace": "users", "service": "users-rpc",
     "port_name": "api"},
    {"host": "billing-api.localhost", "namespace": "billing", "service": "billing-api",
     "port_name": "http"},
    # A single-port Service needs no port_name or port.
    {"host": "admin.localhost", "namespace": "admin", "service": "admin-web"},
    # Entries that cannot resolve: their hosts answer 503 saying why.
    {"host": "broken.localhost", "namespace": "billing", "service": "billing-api",
     "port_name": "web"},
    {"host": "lost.localhost", "namespace": "billng", "service": "billing-api"},
    # The namespace exists, the Service is in another one.
    {"host": "stray.localhost", "namespace": "users", "service": "billing-api"},
    # Its port gains an appProtocol while `up` runs (test_protocol_follows_app_protocol).
    {"host": "users-flip.localhost", "namespace": "users", "service": "users-flip"},
]  # fmt: skip

STRAY = (
    "service 'billing-api' not found in namespace 'users'; "
    "a service 'billing-api' exists in namespace 'billing'"
)


RESOLVED = {
    "users-api.localhost",
    "users-rpc.localhost",
    "billing-api.localhost",
    "admin.localhost",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    up_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[UpProcess, int, Path]]:
    created = await sandbox_fixtures.kubectl(up_sandbox, "apply", "-f", "-", input=RPC_SERVICE)
    created.check()
    tmp = tmp_path_factory.mktemp("up-protocols")
    port = free_port()
    services = tmp / "services.yaml"
    services.write_text(services_yaml(port, ENTRIES))
    hosts = tmp / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    runtime_dir = private_runtime_dir(tmp)
    up = await start_up(
        runtime_dir, services, up_sandbox.kubeconfig_path, "--hosts-file", hosts, "--access-log"
    )
    try:
        yield up, port, runtime_dir
    finally:
        code = await up.stop()
        assert code == 0, up.describe()


async def test_grpc_without_type_by_port_name(mesh: tuple[UpProcess, int, Path]) -> None:
    up, port, _ = mesh
    reply = await grpc_greet(port, "users-api.localhost")
    assert reply.namespace == "users", up.describe()
    assert "grpc.reflection.v1alpha.ServerReflection" in reply.services


async def test_grpc_without_type_by_app_protocol(mesh: tuple[UpProcess, int, Path]) -> None:
    up, port, _ = mesh
    reply = await grpc_greet(port, "users-rpc.localhost")
    assert reply.namespace == "users", up.describe()


async def test_http1_without_type_keeps_the_clients_protocol(
    mesh: tuple[UpProcess, int, Path],
) -> None:
    _, port, _ = mesh
    reply = await http_get(port, "billing-api.localhost", "/hello")
    assert reply.status == 200, reply
    assert reply.json()["namespace"] == "billing"


async def test_status_says_what_was_chosen_and_why(mesh: tuple[UpProcess, int, Path]) -> None:
    _, _, runtime_dir = mesh
    code, status = await status_json(runtime_dir)
    assert code == 1, status  # the hosts that cannot resolve are errors
    types = {h["host"]: h["type"] for h in status["hosts"] if h["host"] in RESOLVED}
    assert types == {
        "users-api.localhost": "grpc (port name grpc)",
        "users-rpc.localhost": "grpc (appProtocol kubernetes.io/h2c)",
        "billing-api.localhost": "downstream (no type, appProtocol or gRPC port name: "
        "the client's protocol)",
        "admin.localhost": "downstream (no type, appProtocol or gRPC port name: "
        "the client's protocol)",
    }


async def test_a_single_port_service_needs_no_port(mesh: tuple[UpProcess, int, Path]) -> None:
    _, port, _ = mesh
    reply = await http_get(port, "admin.localhost", "/")
    assert reply.status == 200, reply
    assert reply.json()["namespace"] == "admin"


async def test_an_unresolved_host_answers_503_saying_why(
    mesh: tuple[UpProcess, int, Path],
) -> None:
    up, port, _ = mesh
    reply = await http_get(port, "broken.localhost", "/")
    assert (reply.status, reply.body.rstrip("\n")) == (
        503,
        "localmesh: broken.localhost: service billing/billing-api has no port 'web'; "
        "it has: http:8080",
    ), up.describe()
    lost = await http_get(port, "lost.localhost", "/")
    assert lost.status == 503
    assert lost.body.rstrip("\n") == (
        "localmesh: lost.localhost: namespace 'billng' does not exist; "
        "a service 'billing-api' exists in namespace 'billing'"
    )
    # Logged once, however many requests come.
    await http_get(port, "broken.localhost", "/")
    errors = [r for r in up.logs() if r.get("event") == "cannot forward"]
    assert [r["host"] for r in errors].count("broken.localhost") == 1, errors


async def test_access_log_prints_one_line_per_request(mesh: tuple[UpProcess, int, Path]) -> None:
    up, port, _ = mesh
    reply = await http_get(port, "billing-api.localhost", "/access-log-probe?x=1")
    assert reply.status == 200, reply
    pod = reply.json()["pod"]

    def logged() -> list[dict[str, object]]:
        return [
            r
            for r in up.logs()
            if r.get("event") == "request" and r.get("path") == "/access-log-probe?x=1"
        ]

    await up.wait_for(lambda: bool(logged()), seconds=15, what="the request's log line")
    (line,) = logged()
    assert line["host"] == "billing-api.localhost"
    assert (line["method"], line["status"], line["pod"]) == ("GET", 200, pod)
    assert isinstance(line["duration_ms"], int)


async def test_the_namespace_hint_is_everywhere_the_error_is(
    mesh: tuple[UpProcess, int, Path],
) -> None:
    """A Service missing from its namespace but present in another: the 503 body, the
    start-up line, the log line and `status` all name the namespace it is in."""
    up, port, runtime_dir = mesh
    reply = await http_get(port, "stray.localhost", "/")
    assert (reply.status, reply.body.rstrip("\n")) == (503, f"localmesh: stray.localhost: {STRAY}")
    startup = [line for line in up.stdout if line.startswith("pf: stray.localhost ")]
    assert len(startup) == 1 and startup[0].endswith(STRAY), up.describe()
    logged = [r for r in up.logs() if r.get("event") == "cannot forward"]
    assert any(r["host"] == "stray.localhost" and STRAY in r["error"] for r in logged), logged
    _, status = await status_json(runtime_dir)
    (host,) = [h for h in status["hosts"] if h["host"] == "stray.localhost"]
    assert host["error"].endswith(STRAY), host


async def test_protocol_follows_app_protocol(
    up_sandbox: Sandbox, mesh: tuple[UpProcess, int, Path]
) -> None:
    """The Service port gains `appProtocol: grpc` after `up` resolved it: the choice (and
    `status`) follow the Service watch, no restart, and gRPC still answers."""
    up, port, runtime_dir = mesh

    async def flip_type() -> str:
        _, status = await status_json(runtime_dir)
        return str(next(h["type"] for h in status["hosts"] if h["host"] == "users-flip.localhost"))

    assert (await flip_type()).startswith("downstream ("), up.describe()
    patched = await sandbox_fixtures.kubectl(
        up_sandbox,
        "-n", "users", "patch", "service", "users-flip", "--type", "json", "-p",
        '[{"op": "add", "path": "/spec/ports/0/appProtocol", "value": "grpc"}]',
    )  # fmt: skip
    patched.check()
    await eventually(
        lambda: _equals(flip_type(), "grpc (appProtocol grpc)"),
        seconds=20,
        every=0.5,
        what="status to show the protocol chosen from the new appProtocol",
    )
    assert any(
        r.get("event") == "protocol changed" and r.get("host") == "users-flip.localhost"
        for r in up.logs()
    ), up.describe()
    reply = await grpc_greet(port, "users-flip.localhost")
    assert reply.namespace == "users"


async def _equals(value: Awaitable[str], wanted: str) -> bool:
    return await value == wanted
