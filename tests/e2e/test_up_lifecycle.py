"""`localmesh up` start and stop: SIGTERM and `down` clean up everything, `status`/`down`
without a mesh and start-up mistakes are clear errors, and `localmesh demo` end to end."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from localmesh.sandbox import Sandbox
from tests import sandbox_fixtures
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    UpProcess,
    curl,
    envoy_pid,
    eventually,
    free_port,
    grpc_greet,
    pid_alive,
    read_bytes,
    routed_to,
    run_cli,
    seed_services,
    services_yaml,
    start_up,
    status_is,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

# CRLF lines, a comment, a tab, a byte that is not UTF-8, an entry of one of the seed's
# hosts (it needs no other), and no final newline.
ODD_HOSTS = (
    b"# hosts of a machine with history\r\n127.0.0.1\tlocalhost\r\n"
    b"::1 localhost ip6-localhost # v6\r\n127.0.0.1 admin.localhost # mine\r\n"
    b"\r\n10.1.2.3 caf\xe9.lan\r\n192.168.0.7 printer"
)
SEED_HOSTS = ("users-api.localhost", "billing-api.localhost", "admin.localhost")


def mesh_dir(runtime_dir: Path, name: str = "default") -> Path:
    return runtime_dir / "localmesh" / name


def seed_files(tmp_path: Path) -> tuple[int, Path, Path]:
    """A free listener port, the seed's services.yaml on it, and an odd hosts file."""
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(port))
    hosts_file = tmp_path / "hosts"
    hosts_file.write_bytes(ODD_HOSTS)
    return port, services, hosts_file


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


async def assert_cleaned_up(
    runtime_dir: Path, envoy: int, port: int, name: str = "default"
) -> None:
    leftover = mesh_dir(runtime_dir, name)
    assert not leftover.exists() or not any(leftover.iterdir()), list(leftover.iterdir())
    assert not pid_alive(envoy), f"Envoy {envoy} outlived `up`"
    assert await status_is(port, "billing-api.localhost", 0), "the listener is still open"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_leaves_the_hosts_file_byte_identical(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    port, services, hosts_file = seed_files(tmp_path)
    up = await start_up(
        up_runtime_dir, services, up_sandbox.kubeconfig_path, "--hosts-file", hosts_file
    )
    try:
        assert up.stdout[0] == f"{hosts_file} updated successfully"
        during = await read_bytes(hosts_file)
        for host in SEED_HOSTS:
            assert during.count(f"127.0.0.1 {host}".encode()) == 1, during
        assert await routed_to(port, "billing-api.localhost", "billing")
        _, status = await status_json(up_runtime_dir)
        envoy = envoy_pid(status)
        argv = (await read_bytes(Path(f"/proc/{envoy}/cmdline"))).split(b"\0")
        assert argv[argv.index(b"--concurrency") + 1] == b"1"  # --envoy-workers' default
    finally:
        up.signal(sig)
        code = await up.wait_exit()
    assert code == 0, up.describe()
    assert await read_bytes(hosts_file) == ODD_HOSTS
    await assert_cleaned_up(up_runtime_dir, envoy, port)
    assert_no_traceback(up.log)


async def test_down_stops_a_running_instance(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port, services, hosts_file = seed_files(tmp_path)
    up = await start_up(
        up_runtime_dir,
        services,
        up_sandbox.kubeconfig_path,
        "--name",
        "side",
        "--hosts-file",
        hosts_file,
    )
    try:
        code, status = await status_json(up_runtime_dir, "side")
        assert code == 0 and status["name"] == "side"
        envoy = envoy_pid(status)
        down = await run_cli(up_runtime_dir, "down", "--name", "side")
    finally:
        exited = await up.stop()
    assert down.returncode == 0, down
    assert down.stdout.strip() == f"localmesh 'side' (pid {up.proc.pid}) stopped"
    assert exited == 0, up.describe()
    assert await read_bytes(hosts_file) == ODD_HOSTS
    await assert_cleaned_up(up_runtime_dir, envoy, port, "side")


@pytest.mark.parametrize("command", ["down", "status"])
async def test_without_a_running_instance_is_a_clear_error(
    up_runtime_dir: Path, command: str
) -> None:
    result = await run_cli(up_runtime_dir, command)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.startswith("localmesh: error:"), result.stderr
    assert "not running" in result.stderr or "no " in result.stderr, result.stderr
    assert_no_traceback(result.stderr)


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (
            "listener_port: {port}\nservices:\n  - host: a.localhost\n"
            "    namespace: billing\n    service: billing-api\n    port: 8080\n    prot: 1\n",
            "7:5",
            "unknown key",
        ),
        (
            "listener_port: {port}\nservices:\n  - host: a.localhost\n    namespace: [billing\n",
            "5:1",
            "YAML",
        ),
        (
            "listener_port: {port}\nservices:\n  - {{host: a.localhost, namespace: billing,"
            " service: billing-api, port: 8080}}\n  - {{host: a.localhost, namespace: admin,"
            " service: admin-web, port: 8080}}\n",
            "4:12",
            "duplicate host 'a.localhost'",
        ),
    ],
    ids=["unknown-key", "yaml-syntax", "duplicate-host"],
)
async def test_invalid_services_yaml_exits_2_with_file_line_column(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path, *, text: str, where: str, words: str
) -> None:
    services = tmp_path / "services.yaml"
    services.write_text(text.format(port=free_port()))
    hosts_file = tmp_path / "hosts"
    hosts_file.write_bytes(ODD_HOSTS)
    result = await run_cli(
        up_runtime_dir,
        "up",
        services,
        "--hosts-file",
        hosts_file,
        kubeconfig=up_sandbox.kubeconfig_path,
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"localmesh: error: {services}:"), result.stderr
    line, column = first.removeprefix(f"localmesh: error: {services}:").split(":")[:2]
    assert line.isdigit() and column.isdigit(), first
    if where:
        assert first.startswith(f"localmesh: error: {services}:{where}: "), result.stderr
    assert words in first
    assert_no_traceback(result.stderr)
    assert await read_bytes(hosts_file) == ODD_HOSTS
    assert not mesh_dir(up_runtime_dir).exists()


async def test_taken_listener_port_is_a_clear_error(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    services = tmp_path / "services.yaml"
    hosts_file = tmp_path / "hosts"
    hosts_file.write_bytes(ODD_HOSTS)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        services.write_text(seed_services(port))
        result = await run_cli(
            up_runtime_dir,
            "up",
            "-f",
            services,
            "--hosts-file",
            hosts_file,
            kubeconfig=up_sandbox.kubeconfig_path,
        )
    assert result.returncode != 0, result
    assert "localmesh: error:" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr, result.stderr
    assert "listener_port" in result.stderr  # the fix
    assert_no_traceback(result.stderr)
    assert await read_bytes(hosts_file) == ODD_HOSTS
    assert not mesh_dir(up_runtime_dir).exists() or not any(mesh_dir(up_runtime_dir).iterdir())


async def test_port_of_another_mesh_is_a_clear_error(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    """A second mesh on the port of a running one must not share it (Envoy listeners bind
    with SO_REUSEPORT unless told otherwise: the kernel would split connections)."""
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(seed_services(port))
    first = await start_up(up_runtime_dir, services, up_sandbox.kubeconfig_path, "--no-edit-hosts")
    try:
        second = await UpProcess.start(
            up_runtime_dir,
            "-f",
            services,
            "--no-edit-hosts",
            "--name",
            "second",
            "--kubeconfig",
            up_sandbox.kubeconfig_path,
        )
        try:
            await second.wait_for(
                lambda: second.finished or any(x.startswith("listen: ") for x in second.stdout),
                seconds=30,
                what="the second mesh to fail or listen",
            )
        finally:
            code = await second.stop()
        assert not second.stdout, f"a second mesh shares port {port}:\n{second.describe()}"
        assert code == 1, second.describe()
        assert f"127.0.0.1:{port}" in second.log and "in use" in second.log, second.log
        assert_no_traceback(second.log)
        assert await routed_to(port, "billing-api.localhost", "billing")
    finally:
        assert await first.stop() == 0, first.describe()


async def test_demo_serves_and_stops_on_ctrl_c(up_runtime_dir: Path) -> None:
    port = free_port()
    demo = await UpProcess.start(up_runtime_dir, "--port", str(port), command="demo")
    try:
        await demo.wait_for(
            lambda: any(line.startswith("Ctrl-C stops the demo") for line in demo.stdout),
            seconds=40,
            what="the demo's try-commands",
        )
        out = demo.output
        assert f"listen: 127.0.0.1:{port}" in out
        assert f"curl http://billing-api.localhost:{port}/hello" in out
        assert f"curl http://admin.localhost:{port}/health" in out
        assert f"--authority users-api.localhost 127.0.0.1:{port}" in out
        assert "localmesh status --name demo" in out
        assert await routed_to(port, "billing-api.localhost", "billing")
        health = await curl(f"http://admin.localhost:{port}/health")
        assert health.status == 200 and health.json()["status"] == "ok", health
        assert (await grpc_greet(port, "users-api.localhost")).namespace == "users"
        code, status = await status_json(up_runtime_dir, "demo")
        assert code == 0, status
        envoy = envoy_pid(status)
    finally:
        demo.signal(signal.SIGINT)
        exited = await demo.wait_exit()
    assert exited == 0, demo.describe()
    await assert_cleaned_up(up_runtime_dir, envoy, port, "demo")
    assert_no_traceback(demo.log)


async def test_a_killed_up_leaves_no_envoy_and_the_next_start_cleans_the_hosts_file(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port, services, hosts_file = seed_files(tmp_path)
    args = ("--hosts-file", hosts_file)
    crashed = await start_up(up_runtime_dir, services, up_sandbox.kubeconfig_path, *args)
    _, status = await status_json(up_runtime_dir)
    envoy = envoy_pid(status)
    crashed.signal(signal.SIGKILL)
    assert await crashed.wait_exit() == -signal.SIGKILL

    async def envoy_gone() -> bool:
        return not pid_alive(envoy)

    await eventually(envoy_gone, seconds=10, what="Envoy to die with its `up`")
    left = await read_bytes(hosts_file)
    assert b"billing-api.localhost" in left  # nobody could remove the block

    again = await start_up(up_runtime_dir, services, up_sandbox.kubeconfig_path, *args)
    try:
        now = await read_bytes(hosts_file)
        assert now.count(b"127.0.0.1 billing-api.localhost") == 1, now
        assert await routed_to(port, "billing-api.localhost", "billing")
    finally:
        assert await again.stop() == 0, again.describe()
    assert await read_bytes(hosts_file) == ODD_HOSTS


async def test_a_missing_service_is_reported_and_served_once_created(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    services = tmp_path / "services.yaml"
    late = {"host": "late.localhost", "namespace": "admin", "service": "late-web", "port": 8080}
    billing = {
        "host": "billing-api.localhost",
        "namespace": "billing",
        "service": "billing-api",
        "port_name": "http",
    }
    services.write_text(services_yaml(port, [billing, late]))
    up = await start_up(up_runtime_dir, services, up_sandbox.kubeconfig_path, "--no-edit-hosts")
    created = False
    try:
        line = next(x for x in up.stdout if x.startswith("pf: late.localhost"))
        assert line.startswith(
            f"pf: late.localhost -> admin/late-web:8080 not forwarded: {services}:"
        )
        assert "late-web" in line and "not found" in line, line
        assert await routed_to(port, "billing-api.localhost", "billing")
        code, status = await status_json(up_runtime_dir)
        assert code != 0
        entry = next(h for h in status["hosts"] if h["host"] == "late.localhost")
        assert "not found" in entry["error"], entry

        manifest = (
            "apiVersion: v1\nkind: Service\nmetadata: {name: late-web, namespace: admin}\n"
            "spec:\n  selector: {app: admin-web}\n  ports: [{port: 8080, targetPort: 8080}]\n"
        )
        (await sandbox_fixtures.kubectl(up_sandbox, "apply", "-f", "-", input=manifest)).check()
        created = True
        await eventually(
            lambda: routed_to(port, "late.localhost", "admin"),
            seconds=15,
            what="the created service to be served",
            every=0.2,
        )
        code, status = await status_json(up_runtime_dir)
        assert code == 0, status
    finally:
        if created:
            await sandbox_fixtures.kubectl(
                up_sandbox, "delete", "service", "-n", "admin", "late-web"
            )
        assert await up.stop() == 0, up.describe()


async def test_two_meshes_side_by_side_share_the_hosts_file(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_bytes(ODD_HOSTS)
    meshes = []
    for name in ("one", "two"):
        port = free_port()
        services = tmp_path / f"{name}.yaml"
        services.write_text(
            services_yaml(
                port,
                [
                    {
                        "host": f"{name}.localhost",
                        "namespace": "billing",
                        "service": "billing-api",
                        "port_name": "http",
                    }
                ],
            )
        )
        up = await start_up(
            up_runtime_dir,
            services,
            up_sandbox.kubeconfig_path,
            "--name",
            name,
            "--hosts-file",
            hosts_file,
        )
        meshes.append((up, port, name))
    try:
        both = await read_bytes(hosts_file)
        assert b"127.0.0.1 one.localhost" in both and b"127.0.0.1 two.localhost" in both
        for _, port, name in meshes:
            assert await routed_to(port, f"{name}.localhost", "billing")
        first, second = meshes
        assert await first[0].stop() == 0, first[0].describe()
        left = await read_bytes(hosts_file)
        assert b"one.localhost" not in left and b"127.0.0.1 two.localhost" in left, left
        assert await routed_to(second[1], "two.localhost", "billing")
    finally:
        for up, _, _ in meshes:
            assert await up.stop() == 0, up.describe()
    assert await read_bytes(hosts_file) == ODD_HOSTS
