"""Port-forward data path: one localmesh forwarder vs `kubectl port-forward`, same pod.

    .venv/bin/python bench/forward.py [--seconds 2] [--rounds 2] [--megabytes 64]

Starts the sandbox cluster in its own process (an http-echo pod and a tcp-echo pod),
localmesh `PodForwarder`s per pod in a second process (`localmesh`: the default, one
multiplexed SPDY-in-websocket session per pod; `localmesh-v4`: one `v4.channel.k8s.io`
websocket per connection, for API servers without the former) and `kubectl port-forward
pod/...` per pod, then drives each path with the same small asyncio client from this process:
keep-alive requests per second (one connection, one request at a time), new-connection
requests per second (connect, one request, close) and bulk MB/s (bytes echoed through the
tcp-echo pod). Direct-to-backend (the pod's own loopback IP) is the limit. Paths alternate
within each round, metric by metric; the best round counts. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIO: dict[str, Any] = {
    "namespaces": ["bench"],
    "deployments": [
        {"name": "web", "namespace": "bench", "workload": "http-echo", "replicas": 1},
        {"name": "echo", "namespace": "bench", "workload": "tcp-echo", "replicas": 1},
    ],
    "services": [],
}
REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n"
REQUEST_TIMEOUT = 5.0  # a request without an answer by then counts as an error
REQUEST_CLOSE = b"GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


# -- the load client --------------------------------------------------------------------------
@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def read_response(reader: asyncio.StreamReader) -> None:
    """One HTTP/1.1 response with a Content-Length body."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await _read_response(reader)
    except TimeoutError:
        raise ConnectionError("no response") from None


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)


async def keepalive(port: int, seconds: float, host: str = "127.0.0.1") -> Result:
    result = Result()
    reader, writer = await asyncio.open_connection(host, port)
    began = time.perf_counter()
    deadline = began + seconds
    try:
        while (start := time.perf_counter()) < deadline:
            writer.write(REQUEST)
            try:
                await read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies.append(time.perf_counter() - start)
            result.requests += 1
    finally:
        writer.close()
    result.seconds = time.perf_counter() - began
    return result


async def new_connections(port: int, seconds: float, host: str = "127.0.0.1") -> Result:
    result = Result()
    began = time.perf_counter()
    deadline = began + seconds
    while (start := time.perf_counter()) < deadline:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(REQUEST_CLOSE)
            await read_response(reader)
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            result.errors += 1
            continue
        result.latencies.append(time.perf_counter() - start)
        result.requests += 1
    result.seconds = time.perf_counter() - began
    return result


async def bulk(port: int, megabytes: int, host: str = "127.0.0.1") -> float:
    """MB/s of `megabytes` sent through an echo backend while reading them back."""
    total = megabytes * 1_000_000
    chunk = b"\xa5" * 262_144
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)

    async def send() -> None:
        left = total
        while left > 0:
            piece = chunk if left >= len(chunk) else chunk[:left]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()

    start = time.perf_counter()
    sender = asyncio.create_task(send())
    received = 0
    try:
        async with asyncio.timeout(60):
            while received < total:
                data = await reader.read(1 << 20)
                if not data:
                    raise ConnectionError(f"echo closed after {received} of {total} bytes")
                received += len(data)
    finally:
        sender.cancel()
        writer.close()
    return total / (time.perf_counter() - start) / 1e6


# -- the processes ----------------------------------------------------------------------------
async def serve_sandbox(kubeconfig: str) -> None:
    """Child process: run the sandbox until stdin closes; print the pods as JSON."""
    from localmesh.sandbox import Sandbox, Scenario

    async with Sandbox.start(Scenario.from_dict(SCENARIO), kubeconfig_path=kubeconfig) as sb:
        pods = {
            d["name"]: {
                "pod": (pod := sb.pods("bench", {"app": d["name"]})[0])["metadata"]["name"],
                "ip": pod["status"]["podIP"],
                "port": 8080 if d["workload"] == "http-echo" else 9000,
            }
            for d in SCENARIO["deployments"]
        }
        print(json.dumps({"pods": pods, "version": sb.kube_version}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def serve_forwarder(kubeconfig: str, targets: list[str]) -> None:
    """Child process: one localmesh PodForwarder per `pod:port`; print the local ports."""
    import aiohttp

    from localmesh.forward import Connector, PodForwarder, raise_open_files_limit
    from localmesh.kube import Target, load_access

    raise_open_files_limit()
    access = load_access(kubeconfig)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=access.ssl_context or True)
    ) as session:
        connector = Connector(access, session)
        forwarders = []
        for multiplex in (True, False):
            for spec in targets:
                pod, port = spec.rsplit(":", 1)
                target = Target(pod, "", int(port))
                forwarder = PodForwarder(connector, "bench", target, multiplex=multiplex)
                await forwarder.start()
                forwarders.append(forwarder)
        print(json.dumps([f.address[1] for f in forwarders]), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for forwarder in forwarders:
            await forwarder.stop()


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def kubectl_forward(kubeconfig: str, pod: str, port: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        ["kubectl", "port-forward", "-n", "bench", f"pod/{pod}", f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A private discovery cache: kubectl caches per host:port across servers.
        env={**os.environ, "KUBECONFIG": kubeconfig, "KUBECACHEDIR": tempfile.mkdtemp()},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
        if match:
            # kubectl prints a line per connection and stops forwarding once nobody reads
            # a full pipe: keep draining it for the rest of the run.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError("kubectl port-forward did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(Exception):
        if proc.stdin is not None:
            proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (kubectl's dispatcher runs a child)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child_pid in (task / "children").read_text().split():
                total += cpu_seconds(int(child_pid))
    except (OSError, IndexError, ValueError):
        pass
    return total


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    kubectl = subprocess.run(
        ["kubectl", "version", "--client"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kubectl": kubectl.replace("Client Version: ", ""),
    }


# -- the run ----------------------------------------------------------------------------------
async def measure(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="localmesh-bench-"))
    kubeconfig = str(workdir / "kubeconfig")
    procs: list[subprocess.Popen[str]] = []
    try:
        sandbox = child("--serve-sandbox", kubeconfig)
        procs.append(sandbox)
        assert sandbox.stdout is not None
        started = json.loads(await asyncio.to_thread(sandbox.stdout.readline))
        web, echo = started["pods"]["web"], started["pods"]["echo"]
        info["sandbox_kube_version"] = started["version"]
        forwarder = child(
            "--serve-forwarder",
            kubeconfig,
            f"{web['pod']}:{web['port']}",
            f"{echo['pod']}:{echo['port']}",
        )
        procs.append(forwarder)
        assert forwarder.stdout is not None
        lm_web, lm_echo, v4_web, v4_echo = json.loads(
            await asyncio.to_thread(forwarder.stdout.readline)
        )
        kc_web_proc, kc_web = kubectl_forward(kubeconfig, web["pod"], web["port"])
        kc_echo_proc, kc_echo = kubectl_forward(kubeconfig, echo["pod"], echo["port"])
        procs += [kc_web_proc, kc_echo_proc]
        paths: dict[str, tuple[str, int, int]] = {
            "direct": (web["ip"], web["port"], echo["port"]),
            "localmesh": ("127.0.0.1", lm_web, lm_echo),
            "localmesh-v4": ("127.0.0.1", v4_web, v4_echo),
            "kubectl": ("127.0.0.1", kc_web, kc_echo),
        }
        echo_hosts = {name: "127.0.0.1" for name in paths} | {"direct": echo["ip"]}
        # The forwarding process of each path, for its CPU cost per request / per MB.
        pids: dict[str, tuple[int, int]] = {
            "localmesh": (forwarder.pid, forwarder.pid),
            "localmesh-v4": (forwarder.pid, forwarder.pid),
            "kubectl": (kc_web_proc.pid, kc_echo_proc.pid),
        }
        best: dict[str, dict[str, Any]] = {name: {} for name in paths}

        def keep(name: str, metric: str, value: float, extra: dict[str, Any]) -> None:
            if value >= best[name].get(metric, -1.0):
                best[name][metric] = value
                best[name].update(extra)

        def cost(name: str, which: int, before: float, units: float, metric: str) -> str:
            """CPU of the forwarding process per unit; the lowest round is kept."""
            if name not in pids or units <= 0:
                return ""
            per_unit = (cpu_seconds(pids[name][which]) - before) / units * 1e6
            if per_unit < best[name].get(metric, float("inf")):
                best[name][metric] = round(per_unit, 1)
            return f" forwarder CPU {per_unit:.0f} us/{'MB' if 'mb' in metric else 'req'}"

        def cpu_now(name: str, which: int) -> float:
            return cpu_seconds(pids[name][which]) if name in pids else 0.0

        for host, web_port, _ in paths.values():
            await keepalive(web_port, 0.3, host)  # warm up: connections, sessions, caches
        # Metric by metric, all paths back to back, so load from elsewhere hits them alike.
        for round_ in range(args.rounds):
            for metric, label, run in (
                ("keepalive", "keep-alive", keepalive),
                ("newconn", "new-conn", new_connections),
            ):
                for name, (host, web_port, _) in paths.items():
                    before = cpu_now(name, 0)
                    got = await run(web_port, args.seconds, host)
                    used = cost(name, 0, before, got.requests, f"{metric}_cpu_us_per_req")
                    keep(
                        name,
                        f"{metric}_rps",
                        round(got.rate, 1),
                        {
                            f"{metric}_p50_ms": round(got.ms(0.5), 3),
                            f"{metric}_p99_ms": round(got.ms(0.99), 3),
                        },
                    )
                    best[name]["errors"] = best[name].get("errors", 0) + got.errors
                    print(
                        f"round {round_ + 1} {name:>12}: {label} {got.rate:8.0f} req/s "
                        f"(p50 {got.ms(0.5):.3f} ms, p99 {got.ms(0.99):.3f} ms) "
                        f"errors {got.errors}{used}",
                        flush=True,
                    )
            for name, (_, _, echo_port) in paths.items():
                before = cpu_now(name, 1)
                server_before = cpu_seconds(sandbox.pid)
                mbps = await bulk(echo_port, args.megabytes, echo_hosts[name])
                used = cost(name, 1, before, args.megabytes, "bulk_cpu_us_per_mb")
                server = (cpu_seconds(sandbox.pid) - server_before) / args.megabytes * 1e6
                used += f", sandbox CPU {server:.0f} us/MB"
                keep(name, "bulk_mb_s", round(mbps, 1), {})
                print(f"round {round_ + 1} {name:>12}: bulk {mbps:8.1f} MB/s{used}", flush=True)
        return {"machine": info, "results": best}
    finally:
        for proc in reversed(procs):
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=64, help="bulk transfer size")
    parser.add_argument("--serve-sandbox", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--serve-forwarder", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sandbox or args.serve_forwarder:
        from localmesh.logs import configure_logging

        configure_logging("warn", stream=sys.stderr)
    if args.serve_sandbox:
        asyncio.run(serve_sandbox(args.serve_sandbox))
        return
    if args.serve_forwarder:
        asyncio.run(serve_forwarder(args.serve_forwarder[0], args.serve_forwarder[1:]))
        return
    report = asyncio.run(measure(args))
    info = report["machine"]
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"kubectl {info['kubectl']} (sandbox reports {info['sandbox_kube_version']})"
    )
    results = report["results"]
    print(
        f"{'path':>12} {'keep-alive req/s':>17} {'new-conn req/s':>15} {'bulk MB/s':>10}"
        f"   forwarder CPU: {'us/req (keep-alive)':>19} {'us/req (new conn)':>17} {'us/MB':>7}"
    )
    for name, figures in results.items():
        cpu = (
            f"   {'':>14} {figures['keepalive_cpu_us_per_req']:>19.0f} "
            f"{figures['newconn_cpu_us_per_req']:>17.0f} {figures['bulk_cpu_us_per_mb']:>7.0f}"
            if "keepalive_cpu_us_per_req" in figures
            else ""
        )
        print(
            f"{name:>12} {figures['keepalive_rps']:>17.0f} {figures['newconn_rps']:>15.0f} "
            f"{figures['bulk_mb_s']:>10.1f}{cpu}"
        )
    lm, kc = results["localmesh"], results["kubectl"]
    verdict = {
        metric: lm[metric] >= kc[metric] for metric in ("keepalive_rps", "newconn_rps", "bulk_mb_s")
    }
    print(
        "localmesh >= kubectl: "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdict.items())
    )
    print(json.dumps({"bench": "forward", **report, "localmesh_at_least_kubectl": verdict}))


if __name__ == "__main__":
    main()
