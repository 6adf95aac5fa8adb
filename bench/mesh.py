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
                    and while meshed (service proxy -> router's Envoy -> pods); the req/s
                    target is judged on interleaved rounds (origin Service vs meshed
                    Service, same load), since one before/after pair is at the mercy of
                    whatever else the machine runs
  hops              the same keep-alive load straight to one origin pod and straight to
                    the router pod (no service proxy), to show which hop costs what
  phases            where a start's time goes: the `mesh` process's own debug timings
                    (checks, objects, router Ready, tunnel, routed) and the router
                    agent's start-up (imports, Envoy, watches, ACK, Ready), from its log
  marked_vs_up      keep-alive and new-connection req/s, p50, p99 of marked requests
                    (cluster IP -> router -> shadow -> tunnel -> the local process)
                    against `localmesh up`'s path the other way (its Envoy -> forwarder ->
                    port-forward -> the same pods), each end direct beside, load average
  kill_fallback_s   SIGKILL of a session -> its mark served by the pods again
  router_restore_s  SIGKILL of the last session -> Service restored by the router itself
                    (lease duration + idle timeout are most of it)
  ctrl_c_restore_s  Ctrl-C of the last session -> Service restored
Ends with a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BIN,
    LOCALMESH,
    ROOT,
    Connection,
    MeshProcess,
    SandboxProcess,
    free_port,
    json_line,
    keepalive_rate,
    machine,
    make_workdir,
    newconn_rate,
    percentile,
    print_machine,
    read_body,
    services_yaml,
    wait_status,
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
class MeshRun(subprocess.Popen[str]):
    """A `localmesh mesh` process, with when it started (wall clock) and its log file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.began_wall = time.time()
        self.log_path = Path(kwargs["stdout"].name)
        super().__init__(*args, **kwargs)

    def events(self) -> dict[str, dict[str, Any]]:
        """The JSON log lines of the mesh process, by event (the last of each)."""
        found: dict[str, dict[str, Any]] = {}
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                found[str(entry.get("event"))] = entry
        return found


def router_log_events(kubeconfig: str) -> dict[str, dict[str, Any]]:
    """The router agent's JSON log lines (kubectl logs), by event."""
    out = subprocess.run(
        ["kubectl", "logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=router",
         "--tail", "-1"],
        capture_output=True, text=True, check=False, timeout=30,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )  # fmt: skip
    found: dict[str, dict[str, Any]] = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            with_event = json.loads(line)
            found.setdefault(str(with_event.get("event")), with_event)
    return found


def wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def phases(run: MeshRun, router: dict[str, dict[str, Any]] | None) -> dict[str, float]:
    """Seconds after `mesh` started at which each phase ended."""
    events = run.events()
    found: dict[str, float] = {}
    joined = events.get("mesh joined", {})
    for name, seconds in (joined.get("seconds_since_start") or {}).items():
        found[f"join: {name}"] = float(seconds)
    # The join's clock starts after the CLI's imports and argument checks.
    if "timestamp" in joined:
        offset = wall(joined["timestamp"]) - run.began_wall - max(found.values(), default=0.0)
        found = {k: round(v + offset, 3) for k, v in found.items()}
        found["cli start-up (imports, kubeconfig)"] = round(offset, 3)
    for event in ("mesh tunnel connected", "mesh routed"):
        if event in events:
            found[event.removeprefix("mesh ")] = round(
                wall(events[event]["timestamp"]) - run.began_wall, 3
            )
    ready = (router or {}).get("router ready")
    if ready is not None:
        startup = ready.get("seconds_since_process_start") or {}
        if startup.get("ready") is not None:
            process_began = wall(ready["timestamp"]) - float(startup["ready"])
            found["router: process started"] = round(process_began - run.began_wall, 3)
            for name, age in startup.items():
                if age is not None:
                    found[f"router: {name}"] = round(process_began + age - run.began_wall, 3)
    return dict(sorted(found.items(), key=lambda item: item[1]))


def print_phases(title: str, found: dict[str, float]) -> None:
    print(f"  {title}:")
    for name, seconds in found.items():
        print(f"    {seconds:7.3f} s  {name}")


async def interleaved(objects: Any, ip: str, seconds: float, rounds: int = 3) -> dict[str, Any]:
    """The before path and the meshed path in alternation, while meshed: the origin
    Service (the original selector: service proxy -> pods, as before the mesh) and the
    meshed Service (service proxy -> router -> pods). Other engineers' load on this
    machine moves a single before/after pair by 3x; alternating rounds share it."""
    from localmesh.clustermesh import manifests as m

    origin = await objects.get("Service", NAMESPACE, m.origin_name(SERVICE))
    origin_ip = str(origin["spec"]["clusterIP"])
    direct: list[float] = []
    meshed: list[float] = []
    for _ in range(rounds):
        direct.append((await unmarked_rate(origin_ip, seconds))["rps"])
        meshed.append((await unmarked_rate(ip, seconds))["rps"])
    ratio = round(percentile(meshed, 50) / percentile(direct, 50), 2)
    return {"origin_rps": direct, "meshed_rps": meshed, "ratio_of_medians": ratio}


async def hop_rates(objects: Any, seconds: float) -> dict[str, dict[str, float]]:
    """Keep-alive load straight to one origin pod and to the router pod."""
    from localmesh.clustermesh import manifests as m

    pods = await objects.list("Pod", NAMESPACE, "")
    found: dict[str, dict[str, float]] = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        if labels.get(m.COMPONENT_LABEL) == "router" and "router_pod" not in found:
            ports = [
                p["containerPort"]
                for c in pod["spec"]["containers"]
                for p in c.get("ports") or []
                if p.get("name") != "lm-health"
            ]
            found["router_pod"] = await unmarked_rate(str(ip), seconds, int(ports[0]))
        elif labels.get("app") == SERVICE and "origin_pod" not in found:
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            found["origin_pod"] = await unmarked_rate(str(ip), seconds, int(port))
    return found


def kube(kubeconfig: str) -> Any:
    from localmesh.kube.objects import KubeObjects

    return KubeObjects.connect(kubeconfig)


async def service(objects: Any) -> dict[str, Any]:
    svc: dict[str, Any] = await objects.get("Service", NAMESPACE, SERVICE)
    return svc


def spec_of(svc: dict[str, Any]) -> Any:
    meta = svc["metadata"]
    return (svc["spec"], meta.get("labels"), meta.get("annotations"))


def start_mesh(kubeconfig: str, workdir: Path, port: int, mark: str) -> MeshRun:
    runtime = workdir / f"rt-{mark.replace(':', '-')}-{time.monotonic_ns()}"
    runtime.mkdir()
    log = (runtime / "mesh.log").open("w")
    return MeshRun(
        [
            LOCALMESH, "--log-level", "debug", "--log-format", "json", "mesh",
            f"{NAMESPACE}/{SERVICE}", "--expose", f"{port}:{PORT}",
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


async def _routed(run: MeshRun) -> bool:
    return "mesh routed" in run.events()


async def ended(proc: subprocess.Popen[str], within: float = 60) -> None:
    await asyncio.wait_for(asyncio.to_thread(proc.wait), within)


async def unmarked_rate(ip: str, seconds: float, port: int = PORT) -> dict[str, float]:
    got = await keepalive_rate(
        ip, port, f"{SERVICE}.{NAMESPACE}", seconds=seconds, concurrency=4, max_requests=200_000
    )
    return {
        "rps": round(got.rps, 1),
        "p50_ms": round(percentile(got.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(got.latencies, 99) * 1000, 3),
        "errors": got.errors,
    }


# -- marked requests through the tunnel, against `localmesh up` the other way ----------------
UP_HOST = f"{SERVICE}.localhost"


def with_mark(host: str, header: str) -> str:
    """A Host value that carries one more header line: common.py's clients write
    `Host: {host}\r\n`, so the mark rides on every request they send."""
    return f"{host}\r\n{header}"


async def path_rate(
    kind: str, address: str, port: int, host: str, seconds: float
) -> dict[str, float]:
    run = keepalive_rate if kind == "keepalive" else newconn_rate
    got = await run(address, port, host, seconds=seconds, concurrency=4, max_requests=200_000)
    return {
        "rps": round(got.rps, 1),
        "p50_ms": round(percentile(got.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(got.latencies, 99) * 1000, 3),
        "errors": got.errors,
    }


async def marked_vs_up(
    sandbox: SandboxProcess,
    objects: Any,
    workdir: Path,
    ip: str,
    *,
    local_port: int,
    seconds: float,
) -> dict[str, Any]:
    """The same pair, this machine and billing-api's pods, both ways, paths taking turns:
      marked      in-cluster client -> cluster IP -> router Envoy -> shadow -> tunnel
                  (port-forward) -> the local process (`mesh`, version: dev)
      up          local client -> `up`'s Envoy -> `up`'s forwarder -> port-forward -> pod
                  (`localmesh up` of the origin Service: the mesh's original selector)
      direct-local, direct-pod   each end on its own (what the two ends cost)
    Keep-alive (4 connections) and a new connection per request (4 workers); the best of
    the rounds counts."""
    from localmesh.clustermesh import manifests as m

    load_before = [round(x, 2) for x in os.getloadavg()]
    port = free_port()
    services = workdir / "up-services.yaml"
    services.write_text(services_yaml(port, [(UP_HOST, NAMESPACE, m.origin_name(SERVICE), PORT)]))
    up = MeshProcess(services, sandbox.kubeconfig, workdir, name="bench-mesh")
    try:
        await up.wait_ready()
        pods = await objects.list("Pod", NAMESPACE, f"app={SERVICE}")
        pod_ip = next(
            str(p["status"]["podIP"]) for p in pods if not p["metadata"].get("deletionTimestamp")
        )
        marked_host = with_mark(f"{SERVICE}.{NAMESPACE}", "version: dev")
        paths = {
            "marked": (ip, PORT, marked_host),
            "up": ("127.0.0.1", port, UP_HOST),
            "direct-local": ("127.0.0.1", local_port, UP_HOST),
            "direct-pod": (pod_ip, PORT, UP_HOST),
        }
        conn = Connection(port)
        await wait_status(conn, UP_HOST, 200, within=30)
        conn.close()
        if not await served_locally(ip, {"version": "dev"})():
            raise RuntimeError("marked requests are not served locally")
        best: dict[str, dict[str, dict[str, float]]] = {name: {} for name in paths}
        for round_ in range(2):
            for kind in ("keepalive", "newconn"):
                order = list(paths) if round_ % 2 == 0 else list(paths)[::-1]
                for name in order:
                    address, path_port, host = paths[name]
                    got = await path_rate(kind, address, path_port, host, seconds)
                    if got["rps"] > best[name].get(kind, {}).get("rps", -1.0):
                        best[name][kind] = got
        # Still the local process's (a mark that fell back would be served by the pods).
        if not await served_locally(ip, {"version": "dev"})():
            raise RuntimeError("marked requests stopped being served locally")
    finally:
        up.stop()
    ratios = {
        kind: round(best["marked"][kind]["rps"] / best["up"][kind]["rps"], 2)
        for kind in ("keepalive", "newconn")
        if best["up"][kind]["rps"]
    }
    return {
        "paths": best,
        "marked_over_up_rps": ratios,
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
    }


def print_marked_vs_up(found: dict[str, Any]) -> None:
    print("marked requests through the router and tunnel vs `localmesh up` the other way:")
    for name, kinds in found["paths"].items():
        parts = [
            f"{kind} {f['rps']:>7.0f} req/s p50 {f['p50_ms']:.2f} ms p99 {f['p99_ms']:.2f} ms"
            f"{' errors ' + str(f['errors']) if f['errors'] else ''}"
            for kind, f in kinds.items()
        ]
        print(f"  {name:>12}: " + "; ".join(parts))
    ratios = found["marked_over_up_rps"]
    print(
        f"  marked / up req/s: keep-alive x{ratios.get('keepalive')}, "
        f"new connection x{ratios.get('newconn')}; load average {found['load_average']}",
        flush=True,
    )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    scenario_path = ROOT / "src" / "localmesh" / "sandbox" / "default_scenario.yaml"
    scenario = yaml.safe_load(scenario_path.read_text())
    workdir = make_workdir("mesh")
    sandbox = await SandboxProcess(scenario, workdir).start()
    procs: list[MeshRun] = []
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
        router_events = await asyncio.to_thread(router_log_events, sandbox.kubeconfig)
        await until(lambda: _routed(ana), 30, "ana's routed log line")
        results["phases_cold"] = phases(ana, router_events)
        print_phases("where the cold start went (s after `mesh` started)", results["phases_cold"])

        results["marked_vs_up"] = await marked_vs_up(
            sandbox, objects, workdir, ip, local_port=local_port, seconds=args.seconds
        )
        print_marked_vs_up(results["marked_vs_up"])

        results["unmarked_meshed"] = await unmarked_rate(ip, args.seconds)
        print(f"unmarked through the router: {results['unmarked_meshed']}", flush=True)
        results["hops"] = await hop_rates(objects, args.seconds)
        print(f"unmarked, one hop at a time: {results['hops']}", flush=True)
        results["interleaved"] = await interleaved(objects, ip, args.seconds)
        print(f"unmarked, interleaved under the same load: {results['interleaved']}", flush=True)

        began = time.monotonic()
        bob = start_mesh(sandbox.kubeconfig, workdir, local_port, "baggage:bob")
        procs.append(bob)
        done = await until(served_locally(ip, {"baggage": "bob"}), 120, "bob's first request")
        results["start_warm_s"] = round(done - began, 3)
        print(f"second developer -> first marked request (router there): {done - began:.3f} s")
        await until(lambda: _routed(bob), 30, "bob's routed log line")
        results["phases_warm"] = phases(bob, None)
        print_phases("where the warm start went", results["phases_warm"])

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
        "unmarked_rps_ratio_before_after": (
            round(meshed["rps"] / before["rps"], 2) if before["rps"] else 0.0
        ),
        "unmarked_rps_ratio": results["interleaved"]["ratio_of_medians"],
    }
    met = {name: results[name] <= limit for name, limit in TARGETS.items()}
    met["unmarked_p50_added_ms"] = ratios["unmarked_p50_added_ms"] <= 1.0
    met["unmarked_rps_ratio"] = ratios["unmarked_rps_ratio"] >= 0.5
    print(
        f"unmarked through the router vs before: p50 +{ratios['unmarked_p50_added_ms']} ms, "
        f"req/s x{ratios['unmarked_rps_ratio']} (interleaved; one pair before/after: "
        f"x{ratios['unmarked_rps_ratio_before_after']})"
    )
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
    json_line("mesh", machine=info, results=results, **ratios, targets_met=met)


if __name__ == "__main__":
    main()
