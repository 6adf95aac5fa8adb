"""Faults and bounds: what `localmesh up` does when pods go away and after a load burst,
and how long `dump-envoy-config` takes at 1,000 entries.

1. churn: one replica, graceful pod deletes (real `kubectl delete pod`, grace 30 s; the
   sandbox keeps a deleted pod serving for --termination-delay seconds, as an application
   draining on SIGTERM does, and makes its replacement Ready after 0.5 s) under a steady
   keep-alive load; failed requests through `localmesh up` and, in the same run under the
   same deletes, through `kubectl port-forward svc/...` (the tool users would pick).
2. resources: file descriptors and RSS of `up` and its Envoy (and of a `kubectl
   port-forward svc/...` given the same burst) before, right after 300 keep-alive
   connections made 20 requests each and closed, and while idle afterwards. `up`
   configures Envoy to close an idle upstream connection after 60 s
   (LOCALMESH_UPSTREAM_IDLE_TIMEOUT; `--quick` sets 5 s and samples for 10 s), which
   closes its forwarder connection and port-forward stream with it.
3. dump: `dump-envoy-config --mock-config` wall and CPU time at 1,000 entries and for the
   seed example (bench/cli.py times it among the other commands too).

    .venv/bin/python bench/faults.py [--quick] [--deletes N] [--burst N]

Prints the figures and the machine, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli import EXAMPLES, thousand_entries
from common import (
    LOCALMESH,
    Load,
    MeshProcess,
    SandboxProcess,
    free_port,
    json_line,
    kubectl_port_forward,
    machine,
    make_workdir,
    one_echo_scenario,
    print_machine,
    read_response,
    request_bytes,
    rss_mib,
    services_yaml,
    stop_process,
)

NS, APP, HOST = "solo", "one", "one.localhost"
SCENARIO = one_echo_scenario(NS, APP)
ENTRIES = [(HOST, NS, APP, 8080)]


# -- 1. churn ----------------------------------------------------------------------------------
async def live_pod(sandbox: SandboxProcess, *, other_than: str = "", within: float = 60.0) -> str:
    """The name of the one Ready, not terminating pod (other than `other_than`)."""
    deadline = time.monotonic() + within
    while True:
        pods = (await sandbox.call("pods", ns=NS, app=APP))["pods"]
        ready = [p["name"] for p in pods if p["ready"] and p["name"] != other_than]
        if ready:
            return str(ready[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Ready replacement for {other_than} within {within}s")
        await asyncio.sleep(0.05)


async def kubectl_delete(env: dict[str, str], pod: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *("kubectl", "delete", "pod", "-n", NS, pod, "--wait=false"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl delete pod {pod}: {err.decode()}")


async def churn(
    sandbox: SandboxProcess, work: Path, deletes: int, termination_delay: float
) -> dict[str, Any]:
    await sandbox.call("faults", termination_delay=termination_delay, ready_delay=0.5)
    services = work / "churn.yaml"
    port = free_port()
    services.write_text(services_yaml(port, ENTRIES))
    mesh = MeshProcess(services, sandbox.kubeconfig, work, name="churn")
    kubectl, kubectl_port = kubectl_port_forward(sandbox.env(), NS, f"svc/{APP}", 8080)
    through_mesh, through_kubectl = Load(port, HOST), Load(kubectl_port, HOST)
    began = time.monotonic()
    try:
        await mesh.wait_ready()
        through_mesh.start()
        through_kubectl.start()
        pod = await live_pod(sandbox)
        for i in range(deletes):
            await kubectl_delete(sandbox.env(), pod)
            pod = await live_pod(sandbox, other_than=pod)
            # Under load while the old pod finishes terminating and goes away: the moment
            # a path still using it fails.
            await asyncio.sleep(termination_delay + 0.5)
            print(
                f"  delete {i + 1}/{deletes}: up {through_mesh.ok} ok / {through_mesh.failed} "
                f"failed, kubectl {through_kubectl.ok} ok / {through_kubectl.failed} failed",
                flush=True,
            )
    finally:
        await through_mesh.stop()
        await through_kubectl.stop()
        kubectl_alive = kubectl.poll() is None
        stop_process(kubectl)
        mesh.stop()
    return {
        "deletes": deletes,
        "termination_delay_s": termination_delay,
        "seconds": round(time.monotonic() - began, 1),
        "localmesh": {
            "ok": through_mesh.ok,
            "failed": through_mesh.failed,
            "max_latency_ms": round(through_mesh.max_latency * 1000, 1),
        },
        "kubectl_port_forward": {
            "ok": through_kubectl.ok,
            "failed": through_kubectl.failed,
            "still_running": kubectl_alive,
        },
        "target_failed": 0,
        "met": through_mesh.failed == 0,
    }


# -- 2. resources after a burst -------------------------------------------------------------
def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sample(processes: dict[str, int]) -> dict[str, dict[str, float]]:
    return {
        name: {"fds": fds(pid), "rss_mib": round(rss_mib(pid), 1)}
        for name, pid in processes.items()
    }


async def burst(port: int, connections: int, requests: int) -> tuple[int, int]:
    """`connections` keep-alive connections at once, `requests` GETs each, then all close."""
    request = request_bytes(HOST)
    ok = failed = 0

    async def client() -> None:
        nonlocal ok, failed
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            failed += requests
            return
        try:
            for _ in range(requests):
                writer.write(request)
                try:
                    async with asyncio.timeout(10):
                        status = await read_response(reader)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    failed += 1
                    return
                ok += status == 200
                failed += status != 200
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(client() for _ in range(connections)))
    return ok, failed


@contextmanager
def upstream_idle_timeout(seconds: float | None) -> Iterator[None]:
    """`up` started inside reads LOCALMESH_UPSTREAM_IDLE_TIMEOUT (None: its default)."""
    key = "LOCALMESH_UPSTREAM_IDLE_TIMEOUT"
    before = os.environ.get(key)
    if seconds is not None:
        os.environ[key] = str(seconds)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


async def resources_after_burst(
    sandbox: SandboxProcess,
    work: Path,
    connections: int,
    idle_timeout: float | None,
    samples_at: list[float],
) -> dict[str, Any]:
    await sandbox.call("faults", termination_delay=0, ready_delay=0)
    services = work / "burst.yaml"
    port = free_port()
    services.write_text(services_yaml(port, ENTRIES))
    with upstream_idle_timeout(idle_timeout):
        mesh = MeshProcess(services, sandbox.kubeconfig, work, name="burst")
    kubectl, kubectl_port = kubectl_port_forward(sandbox.env(), NS, f"svc/{APP}", 8080)
    try:
        await mesh.wait_ready()
        envoy = mesh.envoy_pid()
        assert envoy is not None, "no Envoy under up"
        processes = {"up": mesh.pid, "envoy": envoy, "kubectl": kubectl.pid}
        # One request each first: the route and the port-forwards are warm.
        await burst(port, 1, 1)
        await burst(kubectl_port, 1, 1)
        figures: dict[str, Any] = {"before": sample(processes)}
        # kubectl's burst first, so that the idle times count from the end of up's.
        kubectl_ok, kubectl_failed = await burst(kubectl_port, connections, 20)
        kubectl_after = sample({"kubectl": kubectl.pid})
        mesh_ok, mesh_failed = await burst(port, connections, 20)
        closed_at = time.monotonic()
        figures["right_after"] = {**sample({"up": mesh.pid, "envoy": envoy}), **kubectl_after}
        idle: dict[str, Any] = {}
        for at in samples_at:
            await asyncio.sleep(max(0.0, closed_at + at - time.monotonic()))
            idle[f"{at:g}s"] = sample(processes)
        figures["idle"] = idle
        figures["burst"] = {
            "connections": connections,
            "requests_each": 20,
            "localmesh": {"ok": mesh_ok, "failed": mesh_failed},
            "kubectl_port_forward": {"ok": kubectl_ok, "failed": kubectl_failed},
        }
        figures["upstream_idle_timeout_s"] = idle_timeout or 60.0
        last = idle[f"{samples_at[-1]:g}s"]
        figures["back_to_baseline"] = {
            name: last[name]["fds"] <= figures["before"][name]["fds"] + 5
            for name in ("up", "envoy")
        }
        return figures
    finally:
        stop_process(kubectl)
        mesh.stop()


# -- 3. dump at 1,000 entries -------------------------------------------------------------
def time_dump(services: Path, mocks: Path, runs: int) -> dict[str, Any]:
    """Wall and CPU (user + system of the child) per run, after one warm-up run."""
    walls, cpus = [], []
    argv = [LOCALMESH, "dump-envoy-config", str(services), "--mock-config", str(mocks)]
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, timeout=120)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {
        "wall_mean_s": round(statistics.fmean(walls), 3),
        "wall_min_s": round(min(walls), 3),
        "cpu_mean_s": round(statistics.fmean(cpus), 3),
        "runs": runs,
    }


def dump_times(work: Path, runs: int) -> dict[str, Any]:
    many, many_mocks = thousand_entries(work)
    thousand = time_dump(many, many_mocks, runs)
    thousand.update(target_s=1.0, met=thousand["wall_mean_s"] <= 1.0)
    seed = time_dump(EXAMPLES / "services.yaml", EXAMPLES / "mocks.yaml", runs)
    seed.update(target_s=0.6, met=seed["wall_mean_s"] <= 0.6)
    return {"1000_entries": thousand, "seed_example": seed}


# -- report ----------------------------------------------------------------------------------
def print_resources(figures: dict[str, Any]) -> None:
    rows = [("before", figures["before"]), ("right after", figures["right_after"])]
    rows += [(f"idle {at}", sample) for at, sample in figures["idle"].items()]
    print(
        f"{'':16} {'up fds':>7} {'up RSS':>9} {'envoy fds':>10} {'envoy RSS':>10} "
        f"{'kubectl fds':>12} {'kubectl RSS':>12}"
    )
    for label, s in rows:
        print(
            f"{label:16} {s['up']['fds']:>7} {s['up']['rss_mib']:>7.1f}Mi "
            f"{s['envoy']['fds']:>10} {s['envoy']['rss_mib']:>8.1f}Mi "
            f"{s['kubectl']['fds']:>12} {s['kubectl']['rss_mib']:>10.1f}Mi"
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = make_workdir("faults")
    sandbox = await SandboxProcess(SCENARIO, work).start()
    info = machine(sandbox.kubeconfig)
    print_machine(info)
    results: dict[str, Any] = {"machine": info}
    try:
        print(f"1. churn: 1 replica, {args.deletes} graceful deletes under load")
        results["churn"] = await churn(sandbox, work, args.deletes, args.termination_delay)
        c = results["churn"]
        print(
            f"   localmesh up: {c['localmesh']['failed']} failed of "
            f"{c['localmesh']['ok'] + c['localmesh']['failed']} (target 0); "
            f"kubectl port-forward svc/{APP}: {c['kubectl_port_forward']['failed']} failed of "
            f"{c['kubectl_port_forward']['ok'] + c['kubectl_port_forward']['failed']}"
        )
        idle_timeout = 5.0 if args.quick else None
        samples_at = [1.0, 6.0, 10.0] if args.quick else [1.0, 30.0, 60.0, 75.0]
        print(f"2. resources: {args.burst} keep-alive connections x 20 requests, then idle")
        results["resources"] = await resources_after_burst(
            sandbox, work, args.burst, idle_timeout, samples_at
        )
        print_resources(results["resources"])
    finally:
        sandbox.stop()
    print("3. dump-envoy-config --mock-config")
    results["dump"] = await asyncio.to_thread(dump_times, work, 3 if args.quick else 5)
    for name, d in results["dump"].items():
        print(
            f"   {name}: wall {d['wall_mean_s']:.3f} s (min {d['wall_min_s']:.3f}), "
            f"CPU {d['cpu_mean_s']:.3f} s, target {d['target_s']} s: "
            f"{'met' if d['met'] else 'NOT met'}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 deletes, 5 s idle timeout")
    parser.add_argument("--deletes", type=int, default=None, help="graceful deletes (20)")
    parser.add_argument("--burst", type=int, default=300, help="keep-alive connections")
    parser.add_argument(
        "--termination-delay",
        type=float,
        default=4.0,
        help="seconds a deleted pod keeps serving (its application draining)",
    )
    args = parser.parse_args()
    if args.deletes is None:
        args.deletes = 5 if args.quick else 20
    results = asyncio.run(run(args))
    json_line(
        "faults",
        **results,
        all_met=bool(
            results["churn"]["met"]
            and all(results["resources"]["back_to_baseline"].values())
            and all(d["met"] for d in results["dump"].values())
        ),
    )


if __name__ == "__main__":
    main()
