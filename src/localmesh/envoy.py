"""Envoy process supervision: find the binary, run it, watch it, drain and stop it.

    supervisor = EnvoySupervisor(bootstrap, runtime_dir=run_dir, log_level="info")
    await supervisor.start()       # spawned and LIVE on its admin /ready, or EnvoyError
    try:
        await supervisor.wait_listening(listener_port)  # the LDS listener is bound, or why not
        traffic = cluster_traffic(await supervisor.stats())   # per-cluster request counts
        await supervisor.join()    # returns after stop(); raises if supervision crashed
    finally:
        await supervisor.stop()    # listeners drained, process terminated

Start Envoy once the ADS server is serving: it is LIVE only after its first
CDS and LDS answers. Envoy runs in its own session, so a terminal's Ctrl-C reaches only
localmesh, whose `stop()` (in a finally, or `async with`) drains Envoy before it exits.

Envoy starts once from a static bootstrap; everything else reaches it over xDS. So when it
dies unexpectedly a new process with the same bootstrap is all it takes: it re-syncs from
the control plane's cache. Restarts back off exponentially (capped) so a crash loop does not
spin. Several instances coexist: hot restart is disabled (no shared memory, no base id).

Envoy's admin API (unauthenticated: it can drain listeners, quit Envoy, dump the config)
listens only on `<runtime_dir>/admin.sock`, mode 0600, whatever admin address the
bootstrap names (`--config-yaml` overrides it): nothing on TCP, only the user can connect.
Envoy writes the socket's path to `--admin-address-path` once it is bound.

Envoy's stderr is parsed (`--log-format` below) and re-emitted through structlog: its
warnings and errors as such, everything else (and the goodbyes of a process being stopped)
at debug, where `--log-level debug` shows it. A listener that cannot bind its port shows
up there, whether the listener is static (Envoy exits) or pushed over LDS (Envoy NACKs the
update and keeps running without it): both become a `ListenerBindError` whose message says
how to fix it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from localmesh.envoy_binary import install_hint, locate_envoy
from localmesh.errors import EnvoyError, ListenerBindError
from localmesh.runtime import ENVOY_ADMIN_SOCKET, ENVOY_ADMIN_SOCKET_MODE

log = structlog.get_logger(__name__)

# localmesh's --log-level -> Envoy's --log-level. Envoy's info lines (its start-up
# inventory, every xDS update) are for debugging localmesh: only debug shows them.
LOG_LEVELS: dict[str, str] = {
    "debug": "debug",
    "info": "warning",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}
# Envoy's level names (spdlog %l) -> structlog method names.
_STRUCTLOG_METHOD: dict[str, str] = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
}
# One log line per message (`--log-format-escaped` turns embedded newlines into "\n").
LOG_FORMAT = "[%l][%n] %v"
_LOG_LINE = re.compile(r"^\[(?P<level>[a-z]+)\]\[(?P<logger>[\w.-]*)\] (?P<message>.*)$")
_BIND_ERROR = re.compile(r"cannot bind '(?P<address>[^']*)': (?P<reason>[^\n`'\\]+)")
_ESCAPES = re.compile(r"\\(.)")
_UNESCAPED = {"n": "\n", "t": "\t", "r": "\r"}
# Warnings Envoy prints on every start that say nothing about this run.
_STARTUP_NOISE = ("There is no configured limit to the number of allowed active downstream",)
# protobuf marks its debug text with a link whose spelling varies from run to run.
_DEBUG_LINK = re.compile(r"goo\.gle/debug\w*")
_TAIL_LINES = 30
# sun_path is 108 bytes on Linux and 104 on macOS and the BSDs, with its terminating NUL.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


def parse_log_line(line: str) -> tuple[str, str, str] | None:
    """(level, logger, message) of one line in LOG_FORMAT, or None for anything else."""
    match = _LOG_LINE.match(line)
    if match is None or match["level"] not in _STRUCTLOG_METHOD:
        return None
    message = _ESCAPES.sub(lambda m: _UNESCAPED.get(m[1], m[1]), match["message"])
    return match["level"], match["logger"], message.rstrip()


def parse_bind_error(message: str, binary: Path | None = None) -> ListenerBindError | None:
    """The bind failure an Envoy log message reports, if it reports one."""
    match = _BIND_ERROR.search(message)
    if match is None:
        return None
    return ListenerBindError(match["address"], match["reason"], binary)


@dataclass(frozen=True)
class ClusterTraffic:
    """Request and error counts of one Envoy cluster, from its admin stats."""

    requests: int = 0  # attempts: a retried request counts once per try
    completed: int = 0  # requests answered (by the upstream or, failing, by Envoy)
    active: int = 0
    responses_2xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    connect_failures: int = 0
    retries: int = 0
    healthy_endpoints: int = 0

    @property
    def errors(self) -> int:
        """Requests that failed upstream: 5xx answers and connections that never opened."""
        return self.responses_5xx + self.connect_failures


_TRAFFIC_STATS: dict[str, str] = {
    "upstream_rq_total": "requests",
    "upstream_rq_completed": "completed",
    "upstream_rq_active": "active",
    "upstream_rq_2xx": "responses_2xx",
    "upstream_rq_4xx": "responses_4xx",
    "upstream_rq_5xx": "responses_5xx",
    "upstream_cx_connect_fail": "connect_failures",
    "upstream_rq_retry": "retries",
    "membership_healthy": "healthy_endpoints",
}


def cluster_traffic(stats: Mapping[str, int | float]) -> dict[str, ClusterTraffic]:
    """Per-cluster counts from `EnvoySupervisor.stats()` (cluster names may contain dots)."""
    found: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for name, value in stats.items():
        if not name.startswith("cluster."):
            continue
        cluster, _, leaf = name[len("cluster.") :].rpartition(".")
        attr = _TRAFFIC_STATS.get(leaf)
        if attr and cluster:
            found[cluster][attr] = int(value)
    return {cluster: ClusterTraffic(**counts) for cluster, counts in sorted(found.items())}


def validate_config(path: Path, envoy_path: str | os.PathLike[str] | None = None) -> None:
    """Run `envoy --mode validate -c path`; raise EnvoyError with Envoy's complaint if any."""
    binary = locate_envoy(envoy_path).path
    result = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise EnvoyError(f"Envoy rejects {path}: {' / '.join(detail[-5:])}")


def _die_with_parent() -> list[str]:
    """A launcher prefix that kills Envoy when localmesh dies, even by SIGKILL.

    Envoy runs in its own session (Ctrl-C must reach localmesh, which drains it), so nothing
    else would stop an Envoy whose localmesh crashed. `setpriv --pdeathsig` sets the
    parent-death signal and then execs Envoy (same pid): unlike a preexec_fn it runs no
    Python in the forked child, which is unsafe next to grpc's threads.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass(eq=False)
class _Run:
    """One Envoy process and what its log said."""

    proc: asyncio.subprocess.Process
    started: float
    logs: asyncio.Task[None] | None = None
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_TAIL_LINES)
    )
    fatal: str = ""  # last critical/error line: the likely cause if it exits
    warning: str = ""  # last warning or worse: the likely cause if it never gets ready
    bind_errors: dict[int, ListenerBindError] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


class EnvoySupervisor:
    """Runs one Envoy process from a static bootstrap and keeps it running.

    Args:
        bootstrap: the bootstrap as a dict (written to `runtime_dir` as JSON, mode 0600) or
            the path of an existing bootstrap file (JSON or YAML).
        runtime_dir: where the bootstrap and the admin socket live; created 0700.
        envoy_path: an explicit binary; see `localmesh.envoy_binary` for the fallbacks and
            the oldest Envoy accepted.
        log_level: localmesh's level (debug|info|warn|error); sets Envoy's `--log-level`.
        ready_timeout: seconds `start()` waits for admin /ready to say LIVE.
        drain_timeout: seconds `stop()` lets open downstream connections drain.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        backoff_initial, backoff_max: restart delays after unexpected exits (doubling).
        stable_after: seconds of uptime after which the restart delay resets.
        concurrency: Envoy worker threads (Envoy's default: one per core).
        extra_args: appended to Envoy's command line.

    Attributes (read-only): `binary`, `bootstrap_path`, `pid`, `admin_address` (the admin
    socket's path), `running`, `version` (e.g. "1.40.0"), `restart_count` (processes
    started after unexpected exits), `last_exit` (why the last process ended),
    `listener_errors` (bind failures by port).
    """

    def __init__(
        self,
        bootstrap: Mapping[str, Any] | Path,
        *,
        runtime_dir: Path,
        envoy_path: str | os.PathLike[str] | None = None,
        log_level: str = "info",
        ready_timeout: float = 20.0,
        drain_timeout: float = 1.0,
        stop_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        concurrency: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if log_level not in LOG_LEVELS:
            raise EnvoyError(
                f"unknown log level {log_level!r}; use one of debug, info, warn, error"
            )
        found = locate_envoy(envoy_path)
        self.binary = found.path
        self._bootstrap = bootstrap
        self._runtime_dir = runtime_dir
        self._admin_path = runtime_dir / "envoy-admin-address"
        self._admin_socket = runtime_dir / ENVOY_ADMIN_SOCKET
        if len(os.fsencode(self._admin_socket)) > _MAX_SOCKET_PATH:
            raise EnvoyError(
                f"runtime directory {runtime_dir} is too long a path for Envoy's admin socket "
                f"(at most {_MAX_SOCKET_PATH - len(ENVOY_ADMIN_SOCKET) - 1} bytes); "
                "set XDG_RUNTIME_DIR to a shorter directory"
            )
        self._bootstrap_path = (
            bootstrap if isinstance(bootstrap, Path) else runtime_dir / "envoy-bootstrap.json"
        )
        self._log_level = LOG_LEVELS[log_level]
        self._ready_timeout = ready_timeout
        self._drain_timeout = drain_timeout
        self._stop_timeout = stop_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._concurrency = concurrency
        self._extra_args = extra_args

        self.restart_count = 0
        self.last_exit: str | None = None
        self.version = found.version  # "1.40.0"
        self._run: _Run | None = None
        self._admin: str | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Set by restart(): the process was ended on purpose, start the next without backoff.
        self._restart_reason: str | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        run = self._run
        return run.pid if run is not None and run.proc.returncode is None else None

    @property
    def admin_address(self) -> str | None:
        """The path of the current process's admin socket once Envoy has bound it."""
        return self._admin if self.pid is not None else None

    @property
    def bootstrap_path(self) -> Path:
        return self._bootstrap_path

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def listener_errors(self) -> dict[int, ListenerBindError]:
        """Bind failures the current process reported, by port (cleared on success)."""
        return dict(self._run.bind_errors) if self._run is not None else {}

    @property
    def command(self) -> list[str]:
        argv = [
            str(self.binary),
            "-c",
            str(self._bootstrap_path),
            "--disable-hot-restart",  # no shared memory: instances coexist
            "--admin-address-path",
            str(self._admin_path),
            "--config-yaml",
            json.dumps({"admin": self._admin_config()}),
            "--log-level",
            self._log_level,
            "--log-format",
            LOG_FORMAT,
            "--log-format-escaped",
            # `POST /drain_listeners?graceful` then closes connections at once (each gets
            # `Connection: close` / GOAWAY on its next response); stop() bounds the wait.
            "--drain-strategy",
            "immediate",
            "--drain-time-s",
            str(max(1, round(self._drain_timeout))),
        ]
        if self._concurrency is not None:
            argv += ["--concurrency", str(self._concurrency)]
        return argv + list(self._extra_args)

    async def start(self) -> None:
        """Start Envoy and wait until it is LIVE; then keep it running until `stop()`."""
        if self._task is not None:
            raise RuntimeError("EnvoySupervisor.start() called twice")
        self._stopping = False
        self._prepare_runtime_dir()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self._admin_socket)),
            timeout=aiohttp.ClientTimeout(total=5),
        )
        try:
            run = await self._spawn()
            await self._wait_live(run, self._ready_timeout)
        except BaseException:
            await self._shutdown_process(drain=False)
            await self._close_session()
            raise
        self._ready.set()
        log.info("envoy ready", pid=run.pid, admin=self._admin, binary=str(self.binary))
        self._task = asyncio.create_task(self._supervise(), name="envoy-supervisor")
        self._task.add_done_callback(self._supervisor_done)

    async def wait_ready(self, within: float | None = None) -> None:
        """Wait until an Envoy process (the first or a restarted one) is LIVE."""
        try:
            await asyncio.wait_for(self._ready.wait(), within)
        except TimeoutError:
            raise EnvoyError(
                f"Envoy is not ready after {within:g}s (last exit: {self.last_exit or 'none'})"
            ) from None

    async def listening_ports(self) -> set[int] | None:
        """The ports Envoy's listeners are bound to, from its admin API (None: unknown)."""
        if self._admin is None or not self.running:
            return None
        try:
            listeners = await self._admin_json("/listeners?format=json")
        except (aiohttp.ClientError, TimeoutError, ValueError, EnvoyError):
            return None
        return {
            int(status["local_address"]["socket_address"]["port_value"])
            for status in listeners.get("listener_statuses", [])
            if "port_value" in status.get("local_address", {}).get("socket_address", {})
        }

    async def answers(self, within: float) -> bool:
        """Whether the admin API of the current process answers within `within` seconds
        (a stopped or looping Envoy still accepts connections in the kernel, and no more)."""
        if self._admin is None or not self.running:
            return False
        try:
            async with asyncio.timeout(within):
                session, base = self._admin_target()
                async with session.get(base + "/ready") as resp:
                    await resp.read()
                    return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, EnvoyError):
            return False

    async def restart(self, reason: str) -> None:
        """End the current process at once (SIGKILL: it may be stopped or looping) and let
        the supervisor start a new one without backoff; it re-syncs from the control plane.
        Returns once the new process is LIVE."""
        run = self._run
        if self._task is None or run is None or run.proc.returncode is not None:
            raise EnvoyError("Envoy is not supervised")
        log.warning("restarting envoy", pid=run.pid, reason=reason)
        self._restart_reason = reason
        self._ready.clear()
        with contextlib.suppress(ProcessLookupError):
            run.proc.kill()
        await self._ready.wait()

    async def wait_listening(self, port: int, within: float = 10.0) -> None:
        """Wait until Envoy listens on `port` (pushed over LDS), or raise why it cannot.

        A listener that fails to bind is NACKed by Envoy, which keeps running without it;
        this is where that becomes a ListenerBindError naming the port and the fix.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            run = self._run
            if run is not None and port in run.bind_errors:
                raise run.bind_errors[port]
            ports = await self.listening_ports()
            if ports is not None and port in ports:
                if run is not None:
                    run.bind_errors.pop(port, None)
                return
            if loop.time() >= deadline:
                raise EnvoyError(
                    f"Envoy has no listener on port {port} after {within:g}s; "
                    "is the control plane serving it? (see the Envoy log lines above)"
                )
            await asyncio.sleep(0.05)  # polling interval of the admin API

    async def stats(self, pattern: str | None = None) -> dict[str, int | float]:
        """Counters and gauges from admin /stats?format=json (optionally a regex filter)."""
        query = "/stats?format=json"
        if pattern:
            query += "&filter=" + urllib.parse.quote(pattern, safe="")
        data = await self._admin_json(query)
        return {
            item["name"]: item["value"]
            for item in data.get("stats", [])
            if "name" in item and isinstance(item.get("value"), int | float)
        }

    async def admin_get(self, path: str) -> str:
        """GET an admin endpoint of the current process (e.g. "/config_dump")."""
        session, base = self._admin_target()
        async with session.get(base + path) as resp:
            return await resp.text()

    async def stop(self) -> None:
        """Drain listeners, stop Envoy (SIGTERM, then SIGKILL) and stop supervising."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._shutdown_process(drain=True)
        await self._close_session()
        self._ready.clear()
        self._admin = None
        self._remove_admin_files()

    async def join(self) -> None:
        """Wait until supervision ends: returns after `stop()`, raises if it crashed.

        Await it next to the other long-lived tasks so that a supervisor that died takes
        the process down instead of leaving Envoy unsupervised.
        """
        task = self._task
        if task is None:
            return
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            raise EnvoyError(f"Envoy supervision failed: {task.exception()!r}")

    async def __aenter__(self) -> EnvoySupervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- process lifecycle ----------------------------------------------------------------

    def _admin_config(self) -> dict[str, Any]:
        pipe = {"path": str(self._admin_socket), "mode": ENVOY_ADMIN_SOCKET_MODE}
        return {"address": {"pipe": pipe}}

    def _remove_admin_files(self) -> None:
        for path in (self._admin_path, self._admin_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _prepare_runtime_dir(self) -> None:
        self._runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if isinstance(self._bootstrap, Path):
            if not self._bootstrap.is_file():
                raise EnvoyError(f"Envoy bootstrap {self._bootstrap} does not exist")
            return
        # The file says what Envoy runs: the admin socket, not the bootstrap's own address.
        bootstrap = {**self._bootstrap, "admin": self._admin_config()}
        fd = os.open(self._bootstrap_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(bootstrap, out, indent=1)
        os.chmod(self._bootstrap_path, stat.S_IRUSR | stat.S_IWUSR)

    async def _spawn(self) -> _Run:
        self._admin = None
        self._remove_admin_files()
        try:
            proc = await asyncio.create_subprocess_exec(
                *_die_with_parent(),
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: a terminal's Ctrl-C reaches localmesh, which drains
                # Envoy, instead of killing Envoy under it.
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            raise EnvoyError(f"cannot run Envoy {self.binary}: {exc}; {install_hint()}.") from exc
        run = _Run(proc=proc, started=asyncio.get_running_loop().time())
        self._run = run
        run.logs = asyncio.create_task(self._pump_logs(run), name=f"envoy-log-{proc.pid}")
        log.debug("envoy started", pid=proc.pid, argv=self.command)
        return run

    async def _wait_live(self, run: _Run, within: float | None) -> None:
        """Poll admin /ready until LIVE; fail fast if the process exits meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        exited = asyncio.ensure_future(run.proc.wait())
        state = "STARTING"
        try:
            while True:
                if exited.done():
                    if run.logs is not None:
                        await run.logs  # the last lines carry the reason
                    raise self._exit_error(run)
                if self._admin is None and self._admin_path.exists():
                    text = self._admin_path.read_text().strip()
                    self._admin = text or None
                if self._admin is not None:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        session, base = self._admin_target()
                        async with session.get(base + "/ready") as resp:
                            state = (await resp.text()).strip()
                            if resp.status == 200 and state == "LIVE":
                                return
                if deadline is not None and loop.time() >= deadline:
                    raise EnvoyError(
                        f"Envoy (pid {run.pid}) is not ready after {within:g}s "
                        f"(state {state}): it waits for its first configuration from the "
                        "control plane"
                        + (f" (last Envoy warning: {run.warning})" if run.warning else "")
                    )
                # Wake on exit or after the polling interval, whichever comes first.
                await asyncio.wait([exited], timeout=0.05)
        finally:
            if not exited.done():
                exited.cancel()

    def _exit_error(self, run: _Run) -> EnvoyError:
        returncode = run.proc.returncode
        reason = describe_exit(returncode if returncode is not None else -1)
        self.last_exit = f"{reason}: {run.fatal}" if run.fatal else reason
        if run.bind_errors:
            return next(iter(run.bind_errors.values()))
        detail = run.fatal or " / ".join(list(run.tail)[-3:])
        return EnvoyError(f"Envoy {reason} during startup: {detail}")

    async def _supervise(self) -> None:
        """Restart Envoy with capped exponential backoff whenever it exits on its own."""
        loop = asyncio.get_running_loop()
        delay = self._backoff_initial
        while True:
            run = self._run
            if run is not None:
                returncode = await run.proc.wait()
                if run.logs is not None:
                    await run.logs
                reason = describe_exit(returncode)
                self.last_exit = f"{reason}: {run.fatal}" if run.fatal else reason
                self._ready.clear()
                if self._stopping:
                    return
                if loop.time() - run.started >= self._stable_after:
                    delay = self._backoff_initial
                if self._restart_reason is not None:  # restart(): no crash loop to slow down
                    self.last_exit = f"restarted by localmesh: {self._restart_reason}"
                    self._restart_reason = None
                    wait = 0.0
                else:
                    log.error(
                        "envoy exited unexpectedly; restarting",
                        pid=run.pid,
                        reason=self.last_exit,
                        restart_in=round(delay, 2),
                    )
                    wait, delay = delay, min(delay * 2, self._backoff_max)
            else:
                wait, delay = delay, min(delay * 2, self._backoff_max)
            await asyncio.sleep(wait)  # backoff, not synchronisation
            self.restart_count += 1
            try:
                run = await self._spawn()
            except EnvoyError as exc:
                self._run = None
                log.error("envoy restart failed", error=str(exc))
                continue
            try:
                await self._wait_live(run, within=None)
            except EnvoyError:
                continue  # it exited again: logged at the top of the loop
            self._ready.set()
            log.info("envoy restarted", pid=run.pid, admin=self._admin, restarts=self.restart_count)

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("envoy supervisor died", error=repr(exc), exc_info=exc)
        elif not self._stopping:
            log.error("envoy supervisor ended unexpectedly")

    async def _shutdown_process(self, *, drain: bool) -> None:
        run = self._run
        if run is None:
            return
        if run.proc.returncode is None:
            if drain and self._admin is not None:
                await self._drain(run)
            await self._terminate(run)
        if run.logs is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await run.logs
        if self._stopping and run.proc.returncode is not None:
            self.last_exit = f"stopped ({describe_exit(run.proc.returncode)})"

    async def _drain(self, run: _Run) -> None:
        """Stop accepting, let open downstream connections finish, up to drain_timeout.

        The whole drain is bounded: an Envoy that no longer answers its admin API (hung,
        stopped) is terminated after drain_timeout all the same.
        """
        try:
            async with asyncio.timeout(self._drain_timeout):
                session, base = self._admin_target()
                async with session.post(base + "/drain_listeners?graceful") as resp:
                    await resp.read()
                while run.proc.returncode is None:
                    stats = await self.stats(r"^listener\..*downstream_cx_active$")
                    open_cx = sum(
                        value
                        for name, value in stats.items()
                        if not name.startswith("listener.admin.") and ".worker_" not in name
                    )
                    if open_cx == 0:
                        return
                    await asyncio.sleep(0.05)  # polling interval of the admin API
        except TimeoutError:
            log.debug("envoy drain ended by its deadline", pid=run.pid)
        except (aiohttp.ClientError, EnvoyError) as exc:
            log.debug("envoy drain skipped", pid=run.pid, error=str(exc))

    async def _terminate(self, run: _Run) -> None:
        proc = run.proc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self._stop_timeout)
        except TimeoutError:
            log.warning("envoy ignored SIGTERM; killing it", pid=run.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.debug("envoy stopped", pid=run.pid, reason=describe_exit(proc.returncode or 0))

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- admin API and logs ---------------------------------------------------------------

    def _admin_target(self) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None or self._admin is None:
            raise EnvoyError("Envoy is not running")
        return self._session, "http://envoy-admin"  # the host is unused: the socket is fixed

    async def _admin_json(self, path: str) -> dict[str, Any]:
        session, base = self._admin_target()
        async with session.get(base + path) as resp:
            resp.raise_for_status()
            data = json.loads(await resp.text())
        if not isinstance(data, dict):
            raise EnvoyError(f"unexpected answer from Envoy admin {path}")
        return data

    async def _pump_logs(self, run: _Run) -> None:
        """Read Envoy's stderr to the end. Never stops early: a full pipe would block Envoy."""
        stream = run.proc.stderr
        assert stream is not None
        bound = log.bind(envoy_pid=run.pid)
        level = "info"  # lines outside the format (a crash backtrace) keep the last level
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: skip it
                continue
            if not raw:
                return
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                continue
            try:
                level = self._on_log_line(run, bound, text, level)
            except Exception:
                log.exception("envoy log line not handled", line=text[:200])

    def _on_log_line(self, run: _Run, bound: Any, text: str, level: str) -> str:
        parsed = parse_log_line(text)
        if parsed is None:
            component, message = "envoy", text
        else:
            level, component, message = parsed
        run.tail.append(message)
        if level in ("error", "critical"):
            # Envoy decorates config errors with a link and the offending proto text.
            run.fatal = " ".join(_DEBUG_LINK.sub("", message).split())
        method = _STRUCTLOG_METHOD.get(level, "info")
        if method == "info" or message.startswith(_STARTUP_NOISE):
            method = "debug"
        elif method in ("warning", "error", "critical"):
            run.warning = message
        if method == "warning" and self._stopping:
            # A process we are stopping says so ("caught ENVOY_SIGTERM", its xDS stream
            # closing): expected on every Ctrl-C, so not a warning.
            method = "debug"
        getattr(bound, method)(message, envoy=component)
        bind_error = parse_bind_error(message, self.binary)
        if bind_error is not None and bind_error.port not in run.bind_errors:
            run.bind_errors[bind_error.port] = bind_error
            log.error(str(bind_error), port=bind_error.port, envoy_pid=run.pid)
        return level
