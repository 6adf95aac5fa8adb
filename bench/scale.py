"""Scale: 1,000 services through one localmesh, against one kubectl port-forward each.

    .venv/bin/python bench/scale.py [--quick] [--services 1000] [--kubectl 50] [--routed 100]

The sandbox cluster runs in its OWN process (scale_scenario: N http-echo deployments and
services, plus a few spare services for the edits), so none of its memory or CPU counts
as localmesh's. Then, in the same run:

- localmesh: `localmesh up --watch` as a subprocess for a services.yaml with N hosts.
  Start -> every host verified (a GET per host through Envoy answered 200; the time
  includes that verification). Then one-service edits (a new host for a spare service,
  saved atomically) -> first 200 on it. localmesh's RSS (Envoy's reported separately),
  then CPU over an idle window (no requests) for both.
- with `--routed R`: the first R hosts carry 3 routes each (a header mark and a baggage
  member to a local HTTP server the benchmark runs, a path prefix to the next Service), and
  after the one-service edits come route edits: a new path route on a routed host, saved
  atomically -> first answer from the local server (RDS only: no forwarder changes).
- kubectl: `--kubectl` processes of `kubectl port-forward svc/...` (the user's alternative
  is one per service), started 8 at a time: start -> "Forwarding from" per process, each
  verified with a GET, RSS per process, CPU over an idle window; then extrapolated to N
  (clearly labelled: measured on `--kubectl` processes, multiplied).

Targets: all routable <= 15 s, one-service edit <= 150 ms, localmesh RSS <= 250 MB,
localmesh idle CPU <= 1% (of one core) over 30 s (--quick: 10 s). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Connection,
    Load,
    MeshProcess,
    SandboxProcess,
    cpu_seconds,
    free_port,
    json_line,
    kubectl_port_forward,
    machine,
    make_workdir,
    percentile,
    print_machine,
    pss_mib,
    rss_mib,
    save_atomically,
    services_yaml,
    stop_process,
    summary_ms,
    wait_status,
)

NS = "scale-0"
PORT = 8080
TARGETS = {"routable_s": 15.0, "edit_ms": 150.0, "rss_mib": 250.0, "idle_cpu_pct": 1.0}


def name(i: int) -> str:
    return f"svc-{i:04d}"


def host(i: int) -> str:
    return f"{name(i)}.localhost"


def entries(count: int, extra: list[int]) -> list[tuple[str, str, str, int]]:
    return [(host(i), NS, name(i), PORT) for i in [*range(count), *extra]]


def routed_yaml(
    port: int,
    count: int,
    extra: list[int],
    *,
    routed: int,
    local_port: int,
    edited: int = 0,
) -> str:
    """services.yaml with `routed` hosts carrying 3 routes each, and `edited` more path
    routes (`/edit-E/` -> the local server) on host(1)."""
    if not routed:
        return services_yaml(port, entries(count, extra))
    lines = [f"listener_port: {port}", "services:"]
    for i in [*range(count), *extra]:
        lines += [
            f"  - host: {host(i)}",
            f"    namespace: {NS}",
            f"    service: {name(i)}",
            f"    port: {PORT}",
        ]
        if i >= routed:
            continue
        lines += [
            "    routes:",
            f"      - {{headers: {{x-dev: bench}}, local: {local_port}}}",
            f"      - {{headers: {{baggage: {{member: dev=bench}}}}, local: {local_port}}}",
            f"      - {{path_prefix: /v2/, namespace: {NS}, service: {name((i + 1) % count)},"
            f" port: {PORT}}}",
        ]
        if i == 1:
            lines += [
                f"      - {{path_prefix: /edit-{e}/, local: {local_port}}}" for e in range(edited)
            ]
    return "\n".join(lines) + "\n"


async def local_server() -> tuple[web.AppRunner, int]:
    """The "developer's build" the routes send to: answers `local` to everything."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="local")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def wait_local(conn: Connection, host_name: str, path: str, within: float) -> float:
    """Poll until `path` on `host_name` is answered by the local server; monotonic time."""
    deadline = time.monotonic() + within
    while True:
        status, body = await conn.fetch(host_name, path)
        now = time.monotonic()
        if status == 200 and body == b"local":
            return now
        if now > deadline:
            raise TimeoutError(f"{host_name}{path} not routed to the local server in {within}s")
        await asyncio.sleep(0.002)


async def verify_all(port: int, hosts: list[str], within: float, workers: int = 8) -> float:
    """GET every host until each answered 200 once; returns time.monotonic() of the last."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for h in hosts:
        queue.put_nowait(h)
    last = 0.0

    async def worker() -> None:
        nonlocal last
        conn = Connection(port)
        try:
            while not queue.empty():
                h = queue.get_nowait()
                answered = await wait_status(conn, h, 200, within=within)
                last = max(last, answered)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return last


async def idle_cpu(pids: dict[str, list[int]], seconds: float) -> dict[str, float]:
    """% of one core each group of processes used over `seconds` of no traffic."""
    before = {k: sum(cpu_seconds(p) for p in ps) for k, ps in pids.items()}
    began = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window itself: nothing to wait on
    wall = time.monotonic() - began
    after = {k: sum(cpu_seconds(p) for p in ps) for k, ps in pids.items()}
    return {k: round((after[k] - before[k]) / wall * 100, 2) for k in pids}


async def bench_localmesh(
    sandbox: SandboxProcess, workdir: Path, n: int, edits: int, idle_s: float, *, routed: int
) -> dict[str, Any]:
    port = free_port()
    runner, local_port = await local_server()
    services = workdir / "services.yaml"
    services.write_text(routed_yaml(port, n, [], routed=routed, local_port=local_port))
    mesh = MeshProcess(services, sandbox.kubeconfig, workdir, watch=True)
    try:
        listen_s = await mesh.wait_ready(seconds=120)
        print(f"  up printed `listen:` after {listen_s:.2f} s; verifying {n} hosts", flush=True)
        last = await verify_all(port, [host(i) for i in range(n)], within=60)
        routable_s = last - mesh.started_at
        print(f"  all {n} hosts answered 200 by {routable_s:.2f} s after start", flush=True)
        envoy_pid = mesh.envoy_pid()
        assert envoy_pid is not None
        rss_routable = rss_mib(mesh.pid)
        latencies: list[float] = []
        # Traffic on another host during the edits: does an edit stall the data path?
        load = Load(port, host(0), interval=0.005).start()
        conn = Connection(port)
        added: list[int] = []
        for e in range(edits):
            added.append(n + e)
            save_atomically(
                services, routed_yaml(port, n, added, routed=routed, local_port=local_port)
            )
            saved = time.monotonic()
            latencies.append(await wait_status(conn, host(n + e), 200, within=10) - saved)
            print(f"  edit {e + 1}/{edits}: {latencies[-1] * 1000:.0f} ms", flush=True)
            await asyncio.sleep(0.3)  # separate edits (the watch debounces bursts)
        route_latencies: list[float] = []
        if routed > 1:
            marked = await conn.fetch(host(0), "/x")
            print(f"  routed host answers unmarked requests from the pods: {marked[0]}")
            for e in range(edits):
                text = routed_yaml(
                    port, n, added, routed=routed, local_port=local_port, edited=e + 1
                )
                save_atomically(services, text)
                saved = time.monotonic()
                answered = await wait_local(conn, host(1), f"/edit-{e}/x", within=10)
                route_latencies.append(answered - saved)
                print(
                    f"  route edit {e + 1}/{edits}: {route_latencies[-1] * 1000:.0f} ms",
                    flush=True,
                )
                await asyncio.sleep(0.3)
        conn.close()
        await load.stop()
        print(
            f"  load on {host(0)} during the edits: {load.ok} ok, {load.failed} failed, "
            f"slowest request {load.max_latency * 1000:.0f} ms",
            flush=True,
        )
        print(f"  idle for {idle_s:.0f} s (CPU)", flush=True)
        await asyncio.sleep(2)  # let the last edit's work finish before the idle window
        cpu = await idle_cpu({"localmesh": [mesh.pid], "envoy": [envoy_pid]}, idle_s)
        return {
            "services": n,
            "routed_hosts": routed,
            "routes_per_routed_host": 3 if routed else 0,
            "listen_s": round(listen_s, 2),
            "all_routable_s": round(routable_s, 2),
            "edit": summary_ms(latencies),
            "route_edit": summary_ms(route_latencies) if route_latencies else None,
            "load_during_edits": {
                "ok": load.ok,
                "failed": load.failed,
                "slowest_ms": round(load.max_latency * 1000, 1),
            },
            "rss_mib_localmesh": round(rss_mib(mesh.pid), 1),
            "rss_mib_localmesh_when_routable": round(rss_routable, 1),
            "rss_mib_localmesh_peak": round(peak_rss_mib(mesh.pid), 1),
            "rss_mib_envoy": round(rss_mib(envoy_pid), 1),
            "pss_mib_localmesh": round(pss_mib(mesh.pid), 1),
            "idle_cpu_pct_localmesh": cpu["localmesh"],
            "idle_cpu_pct_envoy": cpu["envoy"],
            "idle_window_s": idle_s,
        }
    finally:
        mesh.stop()
        await runner.cleanup()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_kubectl(env: dict[str, str], i: int) -> tuple[subprocess.Popen[str], int, float]:
    began = time.monotonic()
    proc, port = kubectl_port_forward(env, NS, f"svc/{name(i)}", PORT, timeout=60)
    return proc, port, time.monotonic() - began


async def bench_kubectl(sandbox: SandboxProcess, n: int, count: int, idle_s: float) -> Any:
    env = sandbox.env()
    procs: list[subprocess.Popen[str]] = []
    try:
        began = time.monotonic()
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            started = await asyncio.gather(
                *(loop.run_in_executor(pool, start_kubectl, env, i) for i in range(count))
            )
        procs = [p for p, _, _ in started]
        for i, (_, port, _) in enumerate(started):
            conn = Connection(port)
            await wait_status(conn, host(i), 200, within=30)
            conn.close()
        wall = time.monotonic() - began
        starts = [s for _, _, s in started]
        rss = [rss_mib(p.pid) for p in procs]
        pss = [pss_mib(p.pid) for p in procs]
        print(f"  {count} kubectl port-forwards up and verified in {wall:.2f} s", flush=True)
        print(f"  idle for {idle_s:.0f} s (CPU)", flush=True)
        cpu = await idle_cpu({"kubectl": [p.pid for p in procs]}, idle_s)
        per_rss = sum(rss) / len(rss)
        per_start = sum(starts) / len(starts)
        return {
            "processes": count,
            "wall_s_8_at_a_time": round(wall, 2),
            "start_s_p50": round(percentile(starts, 50), 3),
            "start_s_mean": round(per_start, 3),
            "rss_mib_per_process": round(per_rss, 1),
            "rss_mib_total": round(sum(rss), 1),
            "pss_mib_per_process": round(sum(pss) / len(pss), 1),
            "extrapolated_pss_mib": round(sum(pss) / len(pss) * n, 0),
            "idle_cpu_pct_total": cpu["kubectl"],
            "extrapolated_to": n,
            "extrapolated_rss_mib": round(per_rss * n, 0),
            "extrapolated_start_s_8_at_a_time": round(wall * n / count, 1),
            "extrapolated_idle_cpu_pct": round(cpu["kubectl"] * n / count, 2),
        }
    finally:
        for proc in procs:
            stop_process(proc)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir("scale")
    n, edits = args.services, args.edits
    sandbox = SandboxProcess(
        {"scale_scenario": {"services": n + edits}}, workdir, ready_timeout=300
    )
    try:
        await sandbox.start()
        info = await asyncio.to_thread(machine, sandbox.kubeconfig)
        print_machine(info)
        print(
            f"sandbox ({n + edits} services) started in {sandbox.started_in:.1f} s "
            f"in its own process (pid {sandbox.pid}, RSS {rss_mib(sandbox.pid):.0f} MiB)",
            flush=True,
        )
        print(f"localmesh up --watch, {n} services:", flush=True)
        lm = await bench_localmesh(sandbox, workdir, n, edits, args.idle, routed=args.routed)
        print(f"kubectl port-forward svc/..., {args.kubectl} processes:", flush=True)
        kc = await bench_kubectl(sandbox, n, args.kubectl, args.idle)
    finally:
        sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # logs, kubeconfig, runtime dir
    return {"machine": info, "localmesh": lm, "kubectl": kc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="idle window 10 s, 20 kubectls")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=10, help="one-service edits to time")
    parser.add_argument("--kubectl", type=int, default=50, help="kubectl port-forwards to run")
    parser.add_argument("--idle", type=float, default=30.0, help="idle CPU window (s)")
    parser.add_argument(
        "--routed", type=int, default=0, help="hosts that carry 3 routes each (e.g. 100)"
    )
    args = parser.parse_args()
    if args.quick:
        args.idle, args.kubectl, args.edits = 10.0, 20, 5
    report = asyncio.run(measure(args))
    lm, kc = report["localmesh"], report["kubectl"]
    n = lm["services"]
    print()
    print(f"localmesh, {n} services:")
    print(f"  start -> all {n} hosts answered 200: {lm['all_routable_s']} s", end="")
    print(f" (`listen:` printed at {lm['listen_s']} s)")
    e = lm["edit"]
    print(f"  one-service edit -> 200: p50 {e['p50_ms']} ms, max {e['max_ms']} ms ({e['n']})")
    if lm["route_edit"]:
        r = lm["route_edit"]
        print(
            f"  {lm['routed_hosts']} hosts with 3 routes each; route edit -> local answer: "
            f"p50 {r['p50_ms']} ms, max {r['max_ms']} ms ({r['n']})"
        )
    ld = lm["load_during_edits"]
    print(
        f"  traffic to another host during the edits: {ld['failed']} failed of "
        f"{ld['ok'] + ld['failed']}, slowest request {ld['slowest_ms']} ms"
    )
    print(
        f"  RSS: localmesh {lm['rss_mib_localmesh']} MiB (peak {lm['rss_mib_localmesh_peak']}, "
        f"PSS {lm['pss_mib_localmesh']}), Envoy {lm['rss_mib_envoy']} MiB"
    )
    print(
        f"  idle CPU over {lm['idle_window_s']:.0f} s: localmesh "
        f"{lm['idle_cpu_pct_localmesh']}%, Envoy {lm['idle_cpu_pct_envoy']}%"
    )
    print(f"kubectl port-forward, measured on {kc['processes']} processes:")
    print(
        f"  start -> forwarding: p50 {kc['start_s_p50']} s per process; "
        f"{kc['processes']} (8 at a time) up and verified in {kc['wall_s_8_at_a_time']} s"
    )
    print(
        f"  RSS {kc['rss_mib_per_process']} MiB per process ({kc['rss_mib_total']} MiB total), "
        f"PSS {kc['pss_mib_per_process']} MiB per process (shared binary pages split); "
        f"idle CPU {kc['idle_cpu_pct_total']}% total"
    )
    print(
        f"  EXTRAPOLATED to {n} processes (x{n / kc['processes']:.0f}): "
        f"RSS ~{kc['extrapolated_rss_mib']:.0f} MiB (PSS ~{kc['extrapolated_pss_mib']:.0f}"
        f" MiB), start ~"
        f"{kc['extrapolated_start_s_8_at_a_time']} s (8 at a time), idle CPU ~"
        f"{kc['extrapolated_idle_cpu_pct']}%"
    )
    targets = {
        "all_routable_le_15s": lm["all_routable_s"] <= TARGETS["routable_s"],
        "edit_p50_le_150ms": e["p50_ms"] <= TARGETS["edit_ms"],
        "localmesh_rss_le_250mb": lm["rss_mib_localmesh_peak"] * 1.048576 <= TARGETS["rss_mib"],
        "idle_cpu_le_1pct": lm["idle_cpu_pct_localmesh"] <= TARGETS["idle_cpu_pct"],
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    json_line("scale", **report, targets=targets, all_targets_met=all(targets.values()))


if __name__ == "__main__":
    main()
