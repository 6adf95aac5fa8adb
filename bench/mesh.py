"""The mesh direction end to end: `localmesh mesh` with the real router on the sandbox.

    .venv/bin/python bench/mesh.py [--seconds 2] [--quick]

Processes: the sandbox cluster (bench/common.py's child; its pods run localmesh's image
command as real processes, so the router pod is `localmesh agent router` with its own
Envoy and each shadow pod is `localmesh agent shadow`), `localmesh mesh` (the real CLI, one
process per developer), "the local process" (a small asyncio HTTP server in this process)
and the clients (this process).

Figures:
  start_cold_s      `mesh` started -> first marked request served locally (no router yet)
  start_warm_s      a second developer's `mesh` -> its first marked request served locally
                    (the router is there)
  unmarked          keep-alive req/s and p50 through the Service's cluster IP, before the
                    mesh (the sandbox's service proxy straight to the pods: the alternative)
                    and while meshed (service proxy -> router's Envoy -> pods)
  kill_fallback_s   SIGKILL of a session -> its mark served by the pods again
  router_restore_s  SIGKILL of the last session -> Service restored by the router itself
                    (lease duration + idle timeout are most of it)
  ctrl_c_restore_s  Ctrl-C of the last session -> Service restored
Ends with a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BIN,
    LOCALMESH,
    ROOT,
    SandboxProcess,
    json_line,
    keepalive_rate,
    machine,
    make_workdir,
    percentile,
    print_machine,
    read_body,
)

NAMESPACE, SERVICE, PORT = "billing", "billing-api", 8080
IDLE_TIMEOUT = 2.0
TARGETS = {"start_cold_s": 3.0, "start_warm_s": 1.0, "ctrl_c_restore_s": 2.0}


# -- the local process ----------------------------------------------------------------------
async def local_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlocal")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


# -- one request ----------------------------------------------------------------------------
async def get(ip: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request on a new connection; (0, b"") when the connection fails."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET / HTTP/1.1\r\nHost: {SERVICE}.{NAMESPACE}\r\n{extra}Connection: close\r\n\r\n"
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(ip, PORT)
            try:
                writer.write(request.encode())
                return await read_body(reader)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return 0, b""


async def until(check: Any, within: float, what: str) -> float:
    """Poll `check()` until true; the monotonic time it first was."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:g}s")
        await asyncio.sleep(0.01)  # polling interval


def served_locally(ip: str, headers: dict[str, str]) -> Any:
    async def check() -> bool:
        status, body = await get(ip, headers)
        return status == 200 and body == b"local"

    return check


def served_by_pods(ip: str, headers: dict[str, str]) -> Any:
    async def check() -> bool:
        status, body = await get(ip, headers)
        return status == 200 and body.startswith(b"{")

    return check


# -- the cluster ------------------------------------------------------------------------------
def kube(kubeconfig: str) -> Any:
    from localmesh.kube.objects import KubeObjects

    return KubeObjects.connect(kubeconfig)


async def service(objects: Any) -> dict[str, Any]:
    svc: dict[str, Any] = await objects.get("Service", NAMESPACE, SERVICE)
    return svc


def spec_of(svc: dict[str, Any]) -> Any:
    meta = svc["metadata"]
    return (svc["spec"], meta.get("labels"), meta.get("annotations"))


def start_mesh(kubeconfig: str, workdir: Path, port: int, mark: str) -> subprocess.Popen[str]:
    runtime = workdir / f"rt-{mark.replace(':', '-')}-{time.monotonic_ns()}"
    runtime.mkdir()
    log = (runtime / "mesh.log").open("w")
    return subprocess.Popen(
        [
            LOCALMESH, "mesh", f"{NAMESPACE}/{SERVICE}", "--expose", f"{port}:{PORT}",
            "--version-mark", mark, "--kubeconfig", kubeconfig,
            "--router-idle-timeout", str(IDLE_TIMEOUT),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={"XDG_RUNTIME_DIR": str(runtime), "PATH": f"{BIN}:/usr/bin:/bin",
             "KUBECONFIG": kubeconfig, "HOME": str(runtime)},
    )  # fmt: skip


async def ended(proc: subprocess.Popen[str], within: float = 60) -> None:
    await asyncio.wait_for(asyncio.to_thread(proc.wait), within)


async def unmarked_rate(ip: str, seconds: float) -> dict[str, float]:
    got = await keepalive_rate(
        ip, PORT, f"{SERVICE}.{NAMESPACE}", seconds=seconds, concurrency=4, max_requests=200_000
    )
    return {
        "rps": round(got.rps, 1),
        "p50_ms": round(percentile(got.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(got.latencies, 99) * 1000, 3),
        "errors": got.errors,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    scenario_path = ROOT / "src" / "localmesh" / "sandbox" / "default_scenario.yaml"
    scenario = yaml.safe_load(scenario_path.read_text())
    workdir = make_workdir("mesh")
    sandbox = await SandboxProcess(scenario, workdir).start()
    procs: list[subprocess.Popen[str]] = []
    server, local_port = await local_server()
    objects = kube(sandbox.kubeconfig)
    results: dict[str, Any] = {}
    try:
        before = await service(objects)
        ip = str(before["spec"]["clusterIP"])
        results["unmarked_before"] = await unmarked_rate(ip, args.seconds)
        print(f"unmarked before the mesh: {results['unmarked_before']}", flush=True)

        began = time.monotonic()
        ana = start_mesh(sandbox.kubeconfig, workdir, local_port, "dev")
        procs.append(ana)
        done = await until(served_locally(ip, {"version": "dev"}), 120, "ana's first request")
        results["start_cold_s"] = round(done - began, 3)
        print(f"mesh start -> first marked request (no router yet): {done - began:.3f} s")

        results["unmarked_meshed"] = await unmarked_rate(ip, args.seconds)
        print(f"unmarked through the router: {results['unmarked_meshed']}", flush=True)

        began = time.monotonic()
        bob = start_mesh(sandbox.kubeconfig, workdir, local_port, "baggage:bob")
        procs.append(bob)
        done = await until(served_locally(ip, {"baggage": "bob"}), 120, "bob's first request")
        results["start_warm_s"] = round(done - began, 3)
        print(f"second developer -> first marked request (router there): {done - began:.3f} s")

        bob.send_signal(signal.SIGINT)
        await ended(bob)
        began = time.monotonic()
        ana.kill()
        await ended(ana)
        done = await until(served_by_pods(ip, {"version": "dev"}), 60, "ana's fallback")
        results["kill_fallback_s"] = round(done - began, 3)
        print(f"SIGKILL -> the mark back on the pods: {done - began:.3f} s")

        async def restored() -> bool:
            return bool(spec_of(await service(objects)) == spec_of(before))

        done = await until(restored, 120, "the router's restore")
        results["router_restore_s"] = round(done - began, 3)
        print(
            f"SIGKILL of the last session -> Service restored by the router: {done - began:.3f} s"
        )

        # Once the retired router's objects are gone, a fresh session for the Ctrl-C figure.
        async def router_gone() -> bool:
            from localmesh.clustermesh import manifests as m

            return await objects.get("Deployment", NAMESPACE, m.router_name(SERVICE)) is None

        await until(router_gone, 60, "the router to go")
        cora = start_mesh(sandbox.kubeconfig, workdir, local_port, "cora")
        procs.append(cora)
        await until(served_locally(ip, {"version": "cora"}), 120, "cora's first request")
        began = time.monotonic()
        cora.send_signal(signal.SIGINT)
        done = await until(restored, 60, "Ctrl-C's restore")
        results["ctrl_c_restore_s"] = round(done - began, 3)
        print(f"Ctrl-C -> Service restored: {done - began:.3f} s")
        await ended(cora)
        results["service_restored_exactly"] = spec_of(await service(objects)) == spec_of(before)
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.close()
        await objects.close()
        sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run")
    parser.add_argument("--quick", action="store_true", help="--seconds 0.5")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 0.5
    info = machine(kubectl=False)
    print_machine(info)
    results = asyncio.run(measure(args))
    before, meshed = results["unmarked_before"], results["unmarked_meshed"]
    ratios = {
        "unmarked_p50_added_ms": round(meshed["p50_ms"] - before["p50_ms"], 3),
        "unmarked_rps_ratio": round(meshed["rps"] / before["rps"], 2) if before["rps"] else 0.0,
    }
    met = {name: results[name] <= limit for name, limit in TARGETS.items()}
    met["unmarked_p50_added_ms"] = ratios["unmarked_p50_added_ms"] <= 1.0
    met["unmarked_rps_ratio"] = ratios["unmarked_rps_ratio"] >= 0.5
    print(
        f"unmarked through the router vs before: p50 +{ratios['unmarked_p50_added_ms']} ms, "
        f"req/s x{ratios['unmarked_rps_ratio']}"
    )
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
    json_line("mesh", machine=info, results=results, **ratios, targets_met=met)


if __name__ == "__main__":
    main()
