"""Shared pieces of the mesh benchmarks (reload, reconnect, scale, datapath).

- `machine()`: cores, CPU model, Python, Envoy and kubectl versions;
- `SandboxProcess`: the sandbox cluster in its own process (its CPU and memory never count
  as localmesh's), driven over stdin/stdout JSON lines: list pods (with readiness), set
  its termination/ready delays, replace a pod and report when the replacement turned
  Ready (timestamped inside the sandbox, CLOCK_MONOTONIC is system-wide so the timestamps
  compare with this process's);
- `MeshProcess`: `localmesh up` as a subprocess with a private runtime directory;
- kubectl port-forward, a small asyncio HTTP/1.1 client, percentiles, the JSON line.

Run as a script only as the sandbox child: `python bench/common.py --serve-sandbox ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCALMESH = str(BIN / "localmesh")
ENVOY = str(BIN / "envoy")


# -- machine ----------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def envoy_version() -> str:
    out = subprocess.run([ENVOY, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def kubectl_version(kubeconfig: str | None = None) -> str:
    """The kubectl that actually runs (the dispatcher picks it from the server's /version)."""
    env = {**os.environ, "KUBECONFIG": kubeconfig} if kubeconfig else None
    args = ["kubectl", "version"] if kubeconfig else ["kubectl", "version", "--client"]
    out = subprocess.run(args, capture_output=True, text=True, check=False, env=env, timeout=30)
    client = re.search(r"Client Version: (\S+)", out.stdout)
    server = re.search(r"Server Version: (\S+)", out.stdout)
    text = client.group(1) if client else "unknown"
    return f"{text} (server {server.group(1)})" if server else text


def machine(kubeconfig: str | None = None, *, kubectl: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "envoy": envoy_version(),
    }
    if kubectl:
        info["kubectl"] = kubectl_version(kubeconfig)
    return info


def print_machine(info: dict[str, Any]) -> None:
    text = (
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"Envoy {info['envoy']}"
    )
    if "kubectl" in info:
        text += f", kubectl {info['kubectl']}"
    print(text, flush=True)


# -- figures ----------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_s),
        "p50_ms": round(percentile(samples_s, 50) * 1000, 1),
        "p99_ms": round(percentile(samples_s, 99) * 1000, 1),
        "max_ms": round(max(samples_s, default=0.0) * 1000, 1),
    }


def json_line(bench: str, **figures: Any) -> None:
    """The last line every benchmark prints."""
    print(json.dumps({"bench": bench, **figures}, default=str), flush=True)


def free_port() -> int:
    """A loopback port for `up`'s listener: outside the ephemeral range, so no other
    process's bind(0) or outgoing connection takes it before Envoy binds it."""
    from localmesh import ports

    return ports.free_port("127.0.0.1")


# -- processes --------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (a binary's text) divided among their users."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and everything it started (still running)."""
    total = 0.0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(each)
    return total


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(Exception):
        if proc.stdin is not None:
            proc.stdin.close()
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SandboxProcess:
    """The sandbox cluster in a child process (see `serve_sandbox`)."""

    def __init__(
        self, scenario: dict[str, Any], workdir: Path, *, ready_timeout: float = 120.0
    ) -> None:
        self.workdir = workdir
        scenario_path = workdir / "scenario.json"
        scenario_path.write_text(json.dumps(scenario))
        self.kubeconfig = str(workdir / "kubeconfig")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-sandbox",
                str(scenario_path),
                self.kubeconfig,
                str(ready_timeout),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(workdir / "sandbox.log").open("w"),
            text=True,
            cwd=ROOT,
        )
        self.info: dict[str, Any] = {}
        self.started_in = 0.0

    async def start(self) -> SandboxProcess:
        began = time.monotonic()
        self.info = await self._read()
        self.started_in = time.monotonic() - began
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pods(self) -> dict[str, list[dict[str, Any]]]:
        """`namespace/app` -> [{name, ip}] as of start-up."""
        pods: dict[str, list[dict[str, Any]]] = self.info["pods"]
        return pods

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            log = (self.workdir / "sandbox.log").read_text()[-2000:]
            raise RuntimeError(f"sandbox process ended:\n{log}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"sandbox: {reply['error']}")
        return reply

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return await self._read()

    def stop(self) -> None:
        stop_process(self.proc)


async def serve_sandbox(scenario_path: str, kubeconfig: str, ready_timeout: float) -> None:
    """Child process: run the sandbox; answer JSON-line commands on stdin until it closes."""
    from localmesh.sandbox import Sandbox, Scenario
    from localmesh.sandbox.resources import PODS

    data = json.loads(await asyncio.to_thread(Path(scenario_path).read_text))
    if "scale_scenario" in data:  # {"scale_scenario": {"services": N, ...}}
        from localmesh.sandbox import scale_scenario

        scenario = scale_scenario(**data["scale_scenario"])
    else:
        scenario = Scenario.from_dict(data)
    ready_at: dict[tuple[str, str], float] = {}

    def is_ready(pod: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )

    def on_change(ev: Any) -> None:
        # Synchronous store listener: the moment the Ready condition is stored.
        if ev.rtype is PODS and ev.type != "DELETED" and is_ready(ev.obj):
            key = (ev.obj["metadata"]["namespace"], ev.obj["metadata"]["name"])
            ready_at.setdefault(key, time.monotonic())

    def pod_list(sb: Sandbox, ns: str, app: str) -> list[dict[str, Any]]:
        return [
            {
                "name": p["metadata"]["name"],
                "ip": p["status"].get("podIP", ""),
                "ready": is_ready(p),
            }
            for p in sb.pods(ns, {"app": app})
            if not p["metadata"].get("deletionTimestamp")
        ]

    async with Sandbox.start(
        scenario, kubeconfig_path=kubeconfig, ready_timeout=ready_timeout
    ) as sb:
        sb.store.subscribe(on_change)
        pods = {
            f"{d.namespace}/{d.name}": pod_list(sb, d.namespace, d.name)
            for d in scenario.deployments
        }
        out = {"url": sb.url, "version": sb.kube_version, "pods": pods}
        print(json.dumps(out), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            try:
                if cmd["op"] == "pods":
                    reply: dict[str, Any] = {"pods": pod_list(sb, cmd["ns"], cmd["app"])}
                elif cmd["op"] == "faults":  # e.g. {"termination_delay": 4, "ready_delay": 0.5}
                    for name in ("termination_delay", "ready_delay"):
                        if name in cmd:
                            setattr(sb.faults, name, float(cmd[name]))
                    reply = {"ok": True}
                elif cmd["op"] == "replace":
                    ns, old = cmd["ns"], cmd["pod"]
                    sb.faults.ready_delay = float(cmd.get("ready_delay", 0.0))
                    deleted_at = time.monotonic()
                    new = await sb.replace_pod(ns, old, seconds=30)
                    ip = sb.store.get(PODS, ns, new)["status"]["podIP"]
                    reply = {
                        "pod": new,
                        "ip": ip,
                        "deleted_at": deleted_at,
                        "ready_at": ready_at[(ns, new)],
                    }
                else:
                    reply = {"error": f"unknown op {cmd['op']!r}"}
            except Exception as exc:  # reported to the benchmark, which stops
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


class MeshProcess:
    """`localmesh up` in a child process, with its own runtime directory and no hosts edits."""

    def __init__(
        self,
        services: Path,
        kubeconfig: str,
        workdir: Path,
        *,
        watch: bool = False,
        name: str = "bench",
        log_level: str = "warn",
    ) -> None:
        self.services = services
        self.name = name
        self.workdir = workdir
        runtime = workdir / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "KUBECONFIG": kubeconfig}
        args = [LOCALMESH, "--log-level", log_level, "--log-format", "json", "up", "-f"]
        args += [str(services), "--no-edit-hosts", "--name", name]
        if watch:
            args.append("--watch")
        self.log_path = workdir / f"mesh-{name}.log"
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.log_path.open("w"),
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        self.ready_in = 0.0
        self.output: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, seconds: float = 60.0) -> float:
        """Until `up` printed its `listen:` line; returns seconds since the process started."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(seconds):
            while True:
                line = await asyncio.to_thread(self.proc.stdout.readline)
                if not line:
                    raise RuntimeError(f"localmesh up ended:\n{self.log_tail()}")
                self.output.append(line.rstrip("\n"))
                if line.startswith("listen:"):
                    self.ready_in = time.monotonic() - self.started_at
                    # Keep draining stdout so the child never blocks on a full pipe.
                    asyncio.get_running_loop().run_in_executor(None, self._drain)
                    return self.ready_in

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:]

    def forwarder_ports(self) -> dict[str, list[int]]:
        """host -> the local forwarder ports `up` printed (`pf: HOST -> ... via A:P, ...`)."""
        found: dict[str, list[int]] = {}
        for line in self.output:
            match = re.match(r"pf: (\S+) -> \S+ via (.*)$", line)
            if match:
                ports = re.findall(r":(\d+)(?:,|$)", match.group(2))
                found[match.group(1)] = [int(p) for p in ports]
        return found

    def envoy_pid(self) -> int | None:
        for pid in children(self.pid):
            if process_name(pid) == "envoy":
                return pid
            for grandchild in children(pid):  # e.g. under setpriv
                if process_name(grandchild) == "envoy":
                    return grandchild
        return None

    def stop(self) -> int | None:
        stop_process(self.proc, timeout=30)
        return self.proc.returncode


def one_echo_scenario(namespace: str, app: str) -> dict[str, Any]:
    """A sandbox scenario of one http-echo replica behind Service `app` (port 8080): the
    cluster of the benches that measure one path."""
    return {
        "namespaces": [namespace],
        "deployments": [
            {"name": app, "namespace": namespace, "workload": "http-echo", "replicas": 1}
        ],
        "services": [
            {
                "name": app,
                "namespace": namespace,
                "selector": {"app": app},
                "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
            }
        ],
    }


def services_yaml(port: int, entries: Sequence[tuple[str, str, str, int]]) -> str:
    """services.yaml text: entries are (host, namespace, service, port)."""
    lines = [f"listener_port: {port}", "services:"]
    for host, ns, svc, svc_port in entries:
        lines += [
            f"  - host: {host}",
            f"    namespace: {ns}",
            f"    service: {svc}",
            f"    port: {svc_port}",
            "    type: http",
        ]
    if not entries:
        lines[-1] = "services: []"
    return "\n".join(lines) + "\n"


def save_atomically(path: Path, text: str) -> None:
    """Write the way editors save: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def kubectl_port_forward(
    env: dict[str, str], namespace: str, target: str, port: int, timeout: float = 30.0
) -> tuple[subprocess.Popen[str], int]:
    """`kubectl port-forward -n NS TARGET :PORT`; returns the process and its local port.

    Its output goes to a file, never a pipe: kubectl prints "Handling connection for ..."
    per connection and blocks (all forwarding stops) once nobody reads a full pipe.
    """
    log = Path(tempfile.mkstemp(prefix="kubectl-port-forward-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["kubectl", "port-forward", "-n", namespace, target, f":{port}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", log.read_text())
            if match:
                return proc, int(match.group(1))
            time.sleep(0.005)  # polling a file another process writes: no event to wait on
        proc.kill()
        proc.wait()
        raise RuntimeError(f"kubectl port-forward {target} did not start: {log.read_text()}")
    finally:
        log.unlink(missing_ok=True)  # kubectl keeps its descriptor; the name can go


def start_static_envoy(
    config: Path, log: Path, *, concurrency: int | None = None
) -> subprocess.Popen[bytes]:
    """Envoy on a static config file (what the seed tool runs); `concurrency` worker
    threads (Envoy's default: one per core)."""
    argv = [ENVOY, "-c", str(config), "--disable-hot-restart", "-l", "warning"]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def make_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"localmesh-bench-{prefix}-"))


# -- HTTP/1.1 client --------------------------------------------------------------------------
class HttpError(Exception):
    """A non-200 answer (status in .status) or a broken connection (status 0)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def request_bytes(host: str, path: str = "/bench", *, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 response with a Content-Length body; returns the status."""
    return (await read_body(reader))[0]


async def read_body(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: status and body."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HttpError(0, "connection closed") from exc
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


@dataclass
class Connection:
    """One keep-alive connection that reconnects after any failure."""

    port: int
    address: str = "127.0.0.1"
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def get(self, host: str, path: str = "/bench", seconds: float = 5.0) -> int:
        """Status of one GET; 0 for a connection failure (the connection is then reset)."""
        return (await self.fetch(host, path, seconds))[0]

    async def fetch(
        self, host: str, path: str = "/bench", seconds: float = 5.0
    ) -> tuple[int, bytes]:
        """Status and body of one GET; (0, b"") for a connection failure."""
        try:
            async with asyncio.timeout(seconds):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        self.address, self.port
                    )
                assert self.reader is not None
                self.writer.write(request_bytes(host, path))
                return await read_body(self.reader)
        except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def wait_status(
    conn: Connection,
    host: str,
    want: int,
    *,
    within: float,
    pause: float = 0.002,
) -> float:
    """Poll until a GET for `host` answers `want`; returns time.monotonic() of that answer."""
    deadline = time.monotonic() + within
    while True:
        status = await conn.get(host)
        now = time.monotonic()
        if status == want:
            return now
        if now > deadline:
            raise TimeoutError(f"{host} did not answer {want} within {within}s (last {status})")
        await asyncio.sleep(pause)


@dataclass
class Load:
    """Continuous requests to one host on one keep-alive connection: every failure counts
    (a refused connect, a reset, or any status but 200). Paced at `interval` seconds."""

    port: int
    host: str
    interval: float = 0.002
    address: str = "127.0.0.1"
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    max_latency: float = 0.0  # seconds, the slowest request (a stalled data path shows here)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run(), name=f"load {self.host}")
        return self

    async def _run(self) -> None:
        conn = Connection(self.port, self.address)
        try:
            while True:
                began = time.monotonic()
                status = await conn.get(self.host, seconds=2.0)
                self.max_latency = max(self.max_latency, time.monotonic() - began)
                if status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.failures) < 20:
                        self.failures.append(str(status))
                await asyncio.sleep(self.interval)
        finally:
            conn.close()

    def counts(self) -> tuple[int, int]:
        return self.ok, self.failed

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- throughput ---------------------------------------------------------------------------------
REQUEST_TIMEOUT = 5.0  # a request that takes longer counts as an error (a wedged path)


@dataclass
class Rate:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def keepalive_rate(
    address: str, port: int, host: str, *, seconds: float, concurrency: int, max_requests: int
) -> Rate:
    """`concurrency` keep-alive connections, one request at a time each, for `seconds`."""
    result = Rate()
    request = request_bytes(host)
    began = time.perf_counter()
    deadline = began + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(address, port)
        try:
            while (start := time.perf_counter()) < deadline and result.requests < max_requests:
                writer.write(request)
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        status = await read_response(reader)
                except (HttpError, OSError, asyncio.IncompleteReadError, TimeoutError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(address, port)
                    continue
                if status != 200:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - start)
                result.requests += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


async def newconn_rate(
    address: str, port: int, host: str, *, seconds: float, concurrency: int, max_requests: int
) -> Rate:
    """`concurrency` workers, each: connect, one request (Connection: close), close."""
    result = Rate()
    request = request_bytes(host, close=True)
    began = time.perf_counter()
    deadline = began + seconds

    async def worker() -> None:
        while (start := time.perf_counter()) < deadline and result.requests < max_requests:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    reader, writer = await asyncio.open_connection(address, port)
                    try:
                        writer.write(request)
                        status = await read_response(reader)
                    finally:
                        writer.close()
            except (HttpError, OSError, asyncio.IncompleteReadError, TimeoutError):
                result.errors += 1
                await asyncio.sleep(0.001)
                continue
            if status != 200:
                result.errors += 1
                continue
            result.latencies.append(time.perf_counter() - start)
            result.requests += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-sandbox", nargs=3, metavar=("SCENARIO", "KUBECONFIG", "TIMEOUT"))
    args = parser.parse_args()
    if not args.serve_sandbox:
        parser.error("this module is imported by the benchmarks; run bench/<name>.py")
    from localmesh.logs import configure_logging

    configure_logging("warn", stream=sys.stderr)
    scenario, kubeconfig, timeout = args.serve_sandbox
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_sandbox(scenario, kubeconfig, float(timeout)))


if __name__ == "__main__":
    main()
