"""`localmesh up --watch`: edits of services.yaml are applied live, Envoy is never restarted,
and an invalid edit keeps the previous config serving until the file is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from localmesh.sandbox import Sandbox
from tests.e2e.conftest import UP_LOOP
from tests.e2e.up_helpers import (
    UpProcess,
    envoy_pid,
    eventually,
    free_port,
    http_get,
    read_text,
    routed_to,
    run_cli,
    seed_services,
    services_yaml,
    start_up,
    status_is,
    status_json,
    write_atomically,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, UP_LOOP]

BILLING = {
    "host": "billing-api.localhost",
    "namespace": "billing",
    "service": "billing-api",
    "port_name": "http",
}
ADMIN = {"host": "admin.localhost", "namespace": "admin", "service": "admin-web", "port": 8080}
APPLY_WITHIN = 10.0  # generous for a loaded 2-core machine; typically ~0.2 s


@contextlib.asynccontextmanager
async def watching_up(
    sandbox: Sandbox, runtime_dir: Path, tmp_path: Path, entries: list[dict[str, Any]]
) -> AsyncIterator[tuple[UpProcess, int, Path]]:
    """`up --watch --no-edit-hosts` on a fresh services.yaml with `entries`; yields the
    process, its listener port and the file, and asserts a clean exit afterwards."""
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(port, entries))
    up = await start_up(
        runtime_dir, services, sandbox.kubeconfig_path, "--watch", "--no-edit-hosts"
    )
    try:
        yield up, port, services
    finally:
        assert await up.stop() == 0, up.describe()


async def test_watch_applies_add_remove_edit_and_port_change_without_restarting_envoy(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(port, [BILLING, ADMIN]))
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n")
    up = await start_up(
        up_runtime_dir,
        services,
        up_sandbox.kubeconfig_path,
        "--watch",
        "--hosts-file",
        hosts_file,
    )
    try:
        _, status = await status_json(up_runtime_dir)
        pid = envoy_pid(status)
        assert await routed_to(port, "billing-api.localhost", "billing")
        assert await routed_to(port, "admin.localhost", "admin")
        assert (await http_get(port, "new.localhost")).status == 404

        # Add: a new host (to an existing service) and a new service (gRPC).
        new = {**BILLING, "host": "new.localhost"}
        users = {
            "host": "users-api.localhost",
            "namespace": "users",
            "service": "users-api",
            "port_name": "grpc",
            "type": "grpc",
        }
        write_atomically(services, services_yaml(port, [BILLING, ADMIN, new, users]))
        await eventually(
            lambda: routed_to(port, "new.localhost", "billing"),
            seconds=APPLY_WITHIN,
            what="the added host to be routed",
        )
        code, status = await status_json(up_runtime_dir)
        hosts = {h["host"]: h for h in status["hosts"]}
        assert hosts["users-api.localhost"]["target_port"] == 50051, hosts
        assert "127.0.0.1 new.localhost" in await read_text(hosts_file)

        # Remove: its host gets Envoy's 404, the others keep serving.
        write_atomically(services, services_yaml(port, [BILLING, new, users]))
        await eventually(
            lambda: status_is(port, "admin.localhost", 404),
            seconds=APPLY_WITHIN,
            what="the removed host to get 404",
        )
        reply = await http_get(port, "admin.localhost")
        assert reply.status == 404 and reply.body == "", reply
        assert await routed_to(port, "billing-api.localhost", "billing")

        # Edit: the host now points at another service in another namespace.
        moved = {**ADMIN, "host": "new.localhost"}
        write_atomically(services, services_yaml(port, [BILLING, moved, users]))
        await eventually(
            lambda: routed_to(port, "new.localhost", "admin"),
            seconds=APPLY_WITHIN,
            what="the edited host to reach admin-web",
        )

        # listener_port: the listener moves; Envoy stays.
        port2 = free_port()
        write_atomically(services, services_yaml(port2, [BILLING, moved, users]))
        await eventually(
            lambda: routed_to(port2, "billing-api.localhost", "billing"),
            seconds=APPLY_WITHIN,
            what="the new listener port to serve",
        )
        await eventually(
            lambda: status_is(port, "billing-api.localhost", 0),
            seconds=APPLY_WITHIN,
            what="the old listener port to be closed",
        )

        code, status = await status_json(up_runtime_dir)
        assert code == 0, status
        assert envoy_pid(status) == pid
        assert status["envoy"]["restarts"] == 0
        assert status["listener_port"] == port2
        assert {h["host"] for h in status["hosts"]} == {
            "billing-api.localhost",
            "new.localhost",
            "users-api.localhost",
        }
        assert "127.0.0.1 admin.localhost" not in await read_text(hosts_file)
    finally:
        assert await up.stop() == 0, up.describe()


async def test_watch_applies_an_edit_saved_right_after_start(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    async with watching_up(up_sandbox, up_runtime_dir, tmp_path, [BILLING]) as (
        _up,
        port,
        services,
    ):
        write_atomically(services, services_yaml(port, [BILLING, ADMIN]))  # no pause
        await eventually(
            lambda: routed_to(port, "admin.localhost", "admin"),
            seconds=APPLY_WITHIN,
            what="the edit saved as `up` printed listen: to be applied",
        )


async def test_watch_to_a_port_freed_later_is_applied_when_saved_again(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    """The error for a taken port says "stop it, or choose another listener_port": after
    the other process is stopped, saving services.yaml again must move the listener."""
    async with watching_up(up_sandbox, up_runtime_dir, tmp_path, [BILLING]) as (
        _up,
        _port,
        services,
    ):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            write_atomically(services, services_yaml(taken, [BILLING]))

            async def unhealthy() -> bool:
                return (await status_json(up_runtime_dir))[0] != 0

            await eventually(unhealthy, seconds=APPLY_WITHIN, what="the taken port reported")
        write_atomically(services, services_yaml(taken, [BILLING]) + "# saved again\n")
        await eventually(
            lambda: routed_to(taken, "billing-api.localhost", "billing"),
            seconds=APPLY_WITHIN,
            what="the listener on the freed port",
        )


def _error_logs(entries: list[dict[str, Any]], needle: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("level") == "error" and needle in str(e)]


async def test_invalid_edit_keeps_serving_and_a_fix_applies(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    services = tmp_path / "services.yaml"
    good = seed_services(port)
    services.write_text(good)
    up = await start_up(
        up_runtime_dir, services, up_sandbox.kubeconfig_path, "--watch", "--no-edit-hosts"
    )
    try:
        assert await routed_to(port, "billing-api.localhost", "billing")
        assert "updated successfully" not in up.output  # --no-edit-hosts
        code, _ = await status_json(up_runtime_dir)
        assert code == 0

        # An unknown key in the billing entry, with the admin entry removed in the same edit:
        # none of it may be applied.
        lines = good.splitlines()
        billing_at = lines.index("  - host: billing-api.localhost")
        lines.insert(billing_at + 2, "    bogus_key: 1")
        bad = "\n".join(lines[: lines.index("  - host: admin.localhost")]) + "\n"
        write_atomically(services, bad)
        bad_line = billing_at + 3  # 1-based line number of the inserted key
        where = f"{services}:{bad_line}:"
        await up.wait_log(
            lambda e: bool(_error_logs([e], where)),
            seconds=APPLY_WITHIN,
            what=f"an error log naming {where}",
        )
        assert "bogus_key" in str(_error_logs(up.logs(), where)[0])
        # Each issue is its own readable line, not one escaped string inside another record.
        issues = [e["event"] for e in up.logs() if str(e.get("event", "")).startswith(where)]
        assert len(issues) == 1 and "bogus_key" in issues[0], up.describe()

        for host, ns in (("billing-api.localhost", "billing"), ("admin.localhost", "admin")):
            assert await routed_to(port, host, ns), f"{host} stopped serving after a bad edit"
        text = await run_cli(up_runtime_dir, "status")
        assert text.returncode != 0, text
        assert "bogus_key" in text.stdout + text.stderr, text
        assert "Traceback" not in text.stderr
        code, status = await status_json(up_runtime_dir)
        assert code != 0
        assert "bogus_key" in str(status), status

        # The fix (which also drops admin) is applied, and status is healthy again.
        fixed = "\n".join(line for line in bad.splitlines() if "bogus_key" not in line)
        write_atomically(services, fixed + "\n")
        await eventually(
            lambda: status_is(port, "admin.localhost", 404),
            seconds=APPLY_WITHIN,
            what="the fixed file to be applied",
        )

        async def healthy() -> bool:
            return (await status_json(up_runtime_dir))[0] == 0

        await eventually(healthy, seconds=APPLY_WITHIN, what="status to be healthy again")
        assert await routed_to(port, "billing-api.localhost", "billing")
    finally:
        assert await up.stop() == 0, up.describe()


async def test_watch_to_a_taken_port_keeps_the_old_listener_and_says_why(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    async with watching_up(up_sandbox, up_runtime_dir, tmp_path, [BILLING]) as (
        up,
        port,
        services,
    ):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            write_atomically(services, services_yaml(taken, [BILLING]))

            async def unhealthy() -> str | None:
                result = await run_cli(up_runtime_dir, "status")
                return result.stdout if result.returncode != 0 else None

            try:
                text = await eventually(
                    unhealthy, seconds=APPLY_WITHIN, what="status to report the taken port"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{up.describe()}") from None
            assert f"127.0.0.1:{taken}" in text and "in use" in text, text
            # The listen line names the port Envoy still serves, not the rejected one.
            assert f"listen: 127.0.0.1:{port}\n" in text, text
            assert await routed_to(port, "billing-api.localhost", "billing")


async def test_watch_survives_the_file_going_away_and_coming_back(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    async with watching_up(up_sandbox, up_runtime_dir, tmp_path, [BILLING, ADMIN]) as (
        _up,
        port,
        services,
    ):
        aside = tmp_path / "services.yaml.orig"
        services.rename(aside)

        async def unhealthy() -> bool:
            return (await status_json(up_runtime_dir))[0] != 0

        await eventually(unhealthy, seconds=APPLY_WITHIN, what="status to report the file gone")
        assert await routed_to(port, "admin.localhost", "admin")
        write_atomically(services, services_yaml(port, [BILLING]))
        await eventually(
            lambda: status_is(port, "admin.localhost", 404),
            seconds=APPLY_WITHIN,
            what="the file written again to be applied",
        )
        code, _ = await status_json(up_runtime_dir)
        assert code == 0


async def test_watch_follows_a_symlink_swapped_with_ln_sfn(
    up_sandbox: Sandbox, up_runtime_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(services_yaml(port, [BILLING, ADMIN]))
    v2.write_text(services_yaml(port, [BILLING]))
    services = tmp_path / "services.yaml"
    services.symlink_to(v1.name)
    up = await start_up(
        up_runtime_dir, services, up_sandbox.kubeconfig_path, "--watch", "--no-edit-hosts"
    )
    try:
        assert await routed_to(port, "admin.localhost", "admin")
        proc = await asyncio.create_subprocess_exec("ln", "-sfn", v2.name, str(services))
        assert await proc.wait() == 0
        await eventually(
            lambda: status_is(port, "admin.localhost", 404),
            seconds=APPLY_WITHIN,
            what="the swapped-in file to be applied",
        )
        # Edits of the new target are followed too.
        write_atomically(v2, services_yaml(port, [BILLING, ADMIN]))
        await eventually(
            lambda: routed_to(port, "admin.localhost", "admin"),
            seconds=APPLY_WITHIN,
            what="an edit of the new target to be applied",
        )
        assert await routed_to(port, "billing-api.localhost", "billing")
    finally:
        assert await up.stop() == 0, up.describe()
