"""Driving `localmesh up` end to end: the real CLI in a subprocess, real curl, real grpcio.

Everything here is async and never blocks the event loop: the sandbox cluster of the tests
runs in that same loop, and `up` port-forwards through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml

from localmesh.api.sandbox.v1 import greeter_pb2, greeter_pb2_grpc
from localmesh.sandbox.greet import list_services

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent  # the virtualenv's bin, where the console scripts live
LOCALMESH = BIN / "localmesh"

T = TypeVar("T")

PF_LINE = re.compile(
    r"^pf: (?P<host>\S+) -> (?P<ns>[^/\s]+)/(?P<svc>[^:\s]+):(?P<port>\d+) "
    r"via (?P<via>127\.0\.0\.1:\d+(?:, 127\.0\.0\.1:\d+)*)$"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_runtime_dir(base: Path) -> Path:
    """A runtime dir like XDG_RUNTIME_DIR: owned by us, 0700."""
    path = base / "xdg-runtime"
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


def seed_services(port: int) -> str:
    """The seed's example services.yaml with only listener_port changed."""
    text = (EXAMPLES / "services.yaml").read_text()
    changed, count = re.subn(r"(?m)^listener_port: 80$", f"listener_port: {port}", text)
    assert count == 1, "examples/services.yaml no longer has `listener_port: 80`"
    return changed


def services_yaml(port: int, entries: Sequence[Mapping[str, object]]) -> str:
    return yaml.safe_dump({"listener_port": port, "services": list(entries)}, sort_keys=False)


async def read_text(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


async def read_bytes(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


def write_atomically(path: Path, text: str) -> None:
    """Save like an editor does: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, seconds: float, what: str, every: float = 0.05
) -> T:
    """Poll `check` until it returns something other than None/False, or fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: object = None
    while True:
        try:
            result = await check()
        except (AssertionError, OSError, grpc.RpcError) as exc:
            result, last = None, exc
        else:
            last = result
        if result is not None and result is not False:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(every)


# -- clients ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpReply:
    status: int  # 0: no HTTP reply at all (curl failed: refused, reset, timeout)
    body: str
    curl_exit: int
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


async def curl(
    url: str, *, host: str | None = None, max_time: float = 5.0, extra: Sequence[str] = ()
) -> HttpReply:
    """The real curl; `host` sets the Host header (else curl derives it from the URL)."""
    args = ["curl", "-sS", "--max-time", str(max_time), "-o", "-", "-w", "\n%{http_code}"]
    if host is not None:
        args += ["-H", f"Host: {host}"]
    proc = await asyncio.create_subprocess_exec(
        *args,
        *extra,
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    body, _, code = out.decode().rpartition("\n")
    assert proc.returncode is not None
    return HttpReply(int(code or 0), body, proc.returncode, err.decode())


async def http_get(port: int, host: str, path: str = "/") -> HttpReply:
    return await curl(f"http://127.0.0.1:{port}{path}", host=host)


async def routed_to(port: int, host: str, namespace: str, path: str = "/") -> str | None:
    """The answering pod's name if `host` is served by a pod of `namespace`, else None."""
    reply = await http_get(port, host, path)
    if reply.status != 200:
        return None
    data = reply.json()
    return str(data["pod"]) if data.get("namespace") == namespace else None


async def status_is(port: int, host: str, status: int) -> bool:
    return (await http_get(port, host)).status == status


@dataclass(frozen=True)
class GrpcReply:
    message: str
    namespace: str
    pod: str
    services: list[str]


def _grpc_call(port: int, authority: str, timeout: float) -> GrpcReply:
    options = [("grpc.default_authority", authority)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        services = list_services(channel, timeout)
        stub = greeter_pb2_grpc.GreeterStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.SayHello(greeter_pb2.HelloRequest(name="e2e"), timeout=timeout)
    return GrpcReply(reply.message, reply.namespace, reply.pod, services)


async def grpc_greet(port: int, authority: str, deadline: float = 5.0) -> GrpcReply:
    """A grpcio client (in a thread: grpcio's sync API blocks): reflection list + SayHello."""
    return await asyncio.to_thread(_grpc_call, port, authority, deadline)


@dataclass
class Load:
    """Continuous HTTP requests through the mesh (new connection each), counting outcomes."""

    port: int
    host: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    pods: set[str] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self, workers: int = 2) -> None:
        async def worker() -> None:
            while not self._stop.is_set():
                reply = await http_get(self.port, self.host)
                if reply.status == 200:
                    self.ok += 1
                    self.pods.add(reply.json()["pod"])
                else:
                    self.failures.append(f"{reply.status} {reply.body[:200]} {reply.stderr}")

        async def run() -> None:
            await asyncio.gather(*(worker() for _ in range(workers)))

        self._task = asyncio.create_task(run(), name=f"load on {self.host}")

    async def wait_ok(self, more: int, seconds: float = 10.0) -> None:
        target = self.ok + more

        async def enough() -> bool:
            assert self._task is not None and not self._task.done()
            return self.ok >= target

        await eventually(enough, seconds=seconds, what=f"{more} more good requests")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


# -- the CLI ------------------------------------------------------------------------------
def cli_env(runtime_dir: Path, kubeconfig: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["KUBECONFIG"] = str(kubeconfig) if kubeconfig else os.devnull
    for name in ("PYTHONWARNINGS", "SUDO_UID", "SUDO_GID", "SUDO_USER"):
        env.pop(name, None)
    return env


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def run_cli(
    runtime_dir: Path,
    *args: str | Path,
    kubeconfig: Path | None = None,
    seconds: float = 60,
    cwd: Path | None = None,
) -> CliResult:
    proc = await asyncio.create_subprocess_exec(
        str(LOCALMESH),
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(runtime_dir, kubeconfig),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def status_json(runtime_dir: Path, name: str = "default") -> tuple[int, Any]:
    result = await run_cli(runtime_dir, "status", "--json", "--name", name)
    assert result.stdout, f"status printed nothing (exit {result.returncode}): {result.stderr}"
    return result.returncode, result.json()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped yet) is gone for our purposes.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return False
    return True


class UpProcess:
    """`localmesh up` (or `demo`) as a subprocess, its stdout and stderr collected live."""

    def __init__(self, proc: asyncio.subprocess.Process, runtime_dir: Path) -> None:
        self.proc = proc
        self.runtime_dir = runtime_dir
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.stdout), name="up stdout"),
            asyncio.create_task(self._read(proc.stderr, self.stderr), name="up stderr"),
        ]

    @classmethod
    async def start(
        cls,
        runtime_dir: Path,
        *args: str | Path,
        kubeconfig: Path | None = None,
        command: str = "up",
        cwd: Path | None = None,
    ) -> UpProcess:
        proc = await asyncio.create_subprocess_exec(
            str(LOCALMESH),
            "--log-format",
            "json",
            command,
            *map(str, args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(runtime_dir, kubeconfig),
            start_new_session=True,  # a Ctrl-C in the terminal of pytest is not ours
            cwd=cwd,
        )
        return cls(proc, runtime_dir)

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        async for raw in stream:
            async with self._changed:
                into.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def finished(self) -> bool:
        """Both output streams ended: the process exited (or closed them)."""
        return all(r.done() for r in self._readers)

    @property
    def output(self) -> str:
        return "\n".join(self.stdout)

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    def logs(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def describe(self) -> str:
        return (
            f"exit={self.proc.returncode}\n--- stdout\n{self.output}\n"
            f"--- stderr (last 40 lines)\n" + "\n".join(self.stderr[-40:])
        )

    async def wait_for(self, predicate: Callable[[], bool], *, seconds: float, what: str) -> None:
        """Until `predicate()` holds, re-checked on each new output line."""
        try:
            async with asyncio.timeout(seconds):
                async with self._changed:
                    while not predicate():
                        if self.finished:
                            raise AssertionError(f"`up` exited before {what}\n{self.describe()}")
                        await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {seconds:g}s waiting for {what}\n{self.describe()}"
            ) from None

    async def wait_listening(self, seconds: float = 30.0) -> None:
        await self.wait_for(
            lambda: any(line.startswith("listen: ") for line in self.stdout),
            seconds=seconds,
            what="the `listen:` line",
        )

    async def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], *, seconds: float, what: str
    ) -> dict[str, Any]:
        await self.wait_for(
            lambda: any(predicate(e) for e in self.logs()), seconds=seconds, what=what
        )
        return next(e for e in self.logs() if predicate(e))

    def signal(self, sig: signal.Signals) -> None:
        # Not proc.send_signal(): it polls (reaps) the child first, racing asyncio's child
        # watcher, which then reports exit code 255. Until that watcher has reaped the
        # child, its pid cannot be reused, so a plain kill is safe.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def wait_exit(self, seconds: float = 30.0) -> int:
        try:
            async with asyncio.timeout(seconds):
                code = await self.proc.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            raise AssertionError(
                f"`up` did not exit within {seconds:g}s\n{self.describe()}"
            ) from None
        return code

    async def stop(self, seconds: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL (of the group) if it hangs, so no test leaks it."""
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(seconds)
        except AssertionError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            raise


async def start_up(
    runtime_dir: Path, services: Path, kubeconfig: Path, *args: str | Path
) -> UpProcess:
    """`localmesh up -f services.yaml --kubeconfig ...`, waited on until it listens."""
    up = await UpProcess.start(runtime_dir, "-f", services, "--kubeconfig", kubeconfig, *args)
    try:
        await up.wait_listening()
    except BaseException:
        with contextlib.suppress(AssertionError):
            await up.stop(10)
        raise
    return up


def envoy_pid(status: dict[str, Any]) -> int:
    pid = int(status["envoy"]["pid"])
    assert pid > 0, status["envoy"]
    return pid
