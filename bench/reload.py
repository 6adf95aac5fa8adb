"""Reload: services.yaml saved -> first 200 on the new host, under load on another host.

    .venv/bin/python bench/reload.py [--quick] [--edits 50] [--seed-edits 20]

The sandbox cluster runs in its own process (a `steady` service that takes continuous load
and five `extra-N` services the edits point new hosts at). Then, in the same run:

- localmesh: `localmesh up --watch` as a subprocess. Each round saves services.yaml with a
  new host `edit-I.localhost` (-> extra-(I mod 5)) and polls it every 2 ms until it
  answers 200 (the add latency), then saves it without that host again and polls until
  Envoy answers 404 (the remove latency). Every save is atomic (write + rename, as editors
  do).
- the seed's way: Envoy on a static config (localmesh's static renderer) in front of one
  `kubectl port-forward svc/...` per service; each edit renders the config, stops Envoy
  and starts it again, and polls the new host until 200 (the port-forwards stay up, which
  favours this side).

All the while one keep-alive client sends a request every 2 ms to steady.localhost and
counts every failure (refused connect, reset, any status but 200). Targets (localmesh):
add p50 <= 100 ms, p99 <= 250 ms, 0 failed requests. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Connection,
    Load,
    MeshProcess,
    SandboxProcess,
    free_port,
    json_line,
    kubectl_port_forward,
    machine,
    make_workdir,
    print_machine,
    save_atomically,
    services_yaml,
    start_static_envoy,
    stop_process,
    summary_ms,
    wait_status,
)

from localmesh.desired import ClusterSpec, DesiredState, Endpoint, Protocol, VirtualHostSpec
from localmesh.xds.static import static_config_of

NS = "bench"
EXTRAS = 5
SERVICE_PORT = 8080
TARGET_P50_MS = 100.0
TARGET_P99_MS = 250.0
EDIT_TIMEOUT = 10.0


def scenario() -> dict[str, Any]:
    names = ["steady", *(f"extra-{i}" for i in range(EXTRAS))]
    return {
        "namespaces": [NS],
        "deployments": [{"name": n, "namespace": NS, "workload": "http-echo"} for n in names],
        "services": [
            {
                "name": n,
                "namespace": NS,
                "selector": {"app": n},
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": 8080}],
            }
            for n in names
        ],
    }


def entries(edit: int | None) -> list[tuple[str, str, str, int]]:
    found = [("steady.localhost", NS, "steady", SERVICE_PORT)]
    if edit is not None:
        found.append((f"edit-{edit}.localhost", NS, f"extra-{edit % EXTRAS}", SERVICE_PORT))
    return found


async def bench_localmesh(sandbox: SandboxProcess, workdir: Path, edits: int) -> dict[str, Any]:
    port = free_port()
    services = workdir / "services.yaml"
    services.write_text(services_yaml(port, entries(None)))
    mesh = MeshProcess(services, sandbox.kubeconfig, workdir, watch=True)
    adds: list[float] = []
    removes: list[float] = []
    try:
        await mesh.wait_ready()
        probe = Connection(port)
        await wait_status(probe, "steady.localhost", 200, within=10)
        load = Load(port, "steady.localhost").start()
        await asyncio.sleep(0.3)  # the load is running before the first edit
        for i in range(edits):
            host = f"edit-{i}.localhost"
            save_atomically(services, services_yaml(port, entries(i)))
            saved = time.monotonic()
            adds.append(await wait_status(probe, host, 200, within=EDIT_TIMEOUT) - saved)
            save_atomically(services, services_yaml(port, entries(None)))
            saved = time.monotonic()
            removes.append(await wait_status(probe, host, 404, within=EDIT_TIMEOUT) - saved)
            if (i + 1) % 10 == 0:
                print(
                    f"  localmesh: {i + 1}/{edits} edits, last add {adds[-1] * 1000:.0f} ms, "
                    f"load ok {load.ok} failed {load.failed}",
                    flush=True,
                )
        await asyncio.sleep(0.2)
        await load.stop()
        probe.close()
        envoy_restarts = await envoy_restart_count(mesh)
    finally:
        mesh.stop()
    return {
        "add": summary_ms(adds),
        "remove": summary_ms(removes),
        "load_ok": load.ok,
        "load_failed": load.failed,
        "load_failures": load.failures,
        "load_slowest_ms": round(load.max_latency * 1000, 1),
        "envoy_restarts": envoy_restarts,
    }


async def envoy_restart_count(mesh: MeshProcess) -> int | None:
    out = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "localmesh"), "status", "--json", "--name", mesh.name],
        capture_output=True,
        text=True,
        env=mesh.env,
        check=False,
    )
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return int(json.loads(out.stdout)["envoy"]["restarts"])
    return None


def static_config(port: int, forwards: dict[str, int], edit: int | None) -> dict[str, Any]:
    clusters: list[ClusterSpec] = []
    vhosts: list[VirtualHostSpec] = []
    for host, _ns, svc, _port in entries(edit):
        name = f"{svc}_{NS}"
        if all(c.name != name for c in clusters):
            endpoint = Endpoint("127.0.0.1", forwards[svc], svc)
            clusters.append(ClusterSpec(name, Protocol.HTTP, (endpoint,)))
        vhosts.append(VirtualHostSpec.to_cluster(host, name, Protocol.HTTP))
    return static_config_of(DesiredState.serving("127.0.0.1", port, tuple(clusters), tuple(vhosts)))


async def bench_seed(sandbox: SandboxProcess, workdir: Path, edits: int) -> dict[str, Any]:
    env = sandbox.env()
    kubectls: list[subprocess.Popen[str]] = []
    forwards: dict[str, int] = {}
    envoy: subprocess.Popen[bytes] | None = None
    adds: list[float] = []
    try:
        for svc in ["steady", *(f"extra-{i}" for i in range(EXTRAS))]:
            proc, local = await asyncio.to_thread(
                kubectl_port_forward, env, NS, f"svc/{svc}", SERVICE_PORT
            )
            kubectls.append(proc)
            forwards[svc] = local
        port = free_port()
        config = workdir / "envoy-static.json"
        log = workdir / "envoy-static.log"
        config.write_text(json.dumps(static_config(port, forwards, None)))
        envoy = start_static_envoy(config, log)
        probe = Connection(port)
        await wait_status(probe, "steady.localhost", 200, within=20)
        load = Load(port, "steady.localhost").start()
        await asyncio.sleep(0.3)
        for i in range(edits):
            host = f"edit-{i}.localhost"
            for edit, want in ((i, 200), (None, 404)):
                saved = time.monotonic()
                config.write_text(json.dumps(static_config(port, forwards, edit)))
                stop_process(envoy)
                envoy = start_static_envoy(config, log)
                answered = await wait_status(probe, host, want, within=20)
                if want == 200:
                    adds.append(answered - saved)
            if (i + 1) % 5 == 0:
                print(
                    f"  restart:   {i + 1}/{edits} edits, last add {adds[-1] * 1000:.0f} ms, "
                    f"load ok {load.ok} failed {load.failed}",
                    flush=True,
                )
        await asyncio.sleep(0.2)
        await load.stop()
        probe.close()
    finally:
        if envoy is not None:
            stop_process(envoy)
        for proc in kubectls:
            stop_process(proc)
    return {
        "add": summary_ms(adds),
        "restarts": 2 * edits,
        "load_ok": load.ok,
        "load_failed": load.failed,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir("reload")
    sandbox = SandboxProcess(scenario(), workdir)
    try:
        await sandbox.start()
        info = await asyncio.to_thread(machine, sandbox.kubeconfig)
        print_machine(info)
        print(f"localmesh up --watch: {args.edits} add + {args.edits} remove edits", flush=True)
        lm = await bench_localmesh(sandbox, workdir, args.edits)
        print(f"Envoy restart on a static config: {args.seed_edits} add + remove", flush=True)
        seed = await bench_seed(sandbox, workdir, args.seed_edits)
    finally:
        sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # logs, kubeconfig, runtime dir
    return {"machine": info, "localmesh": lm, "envoy_restart": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 edits, 5 restarts")
    parser.add_argument("--edits", type=int, default=50, help="localmesh add+remove rounds")
    parser.add_argument("--seed-edits", type=int, default=20, help="Envoy-restart rounds")
    args = parser.parse_args()
    if args.quick:
        args.edits, args.seed_edits = 20, 5
    report = asyncio.run(measure(args))
    lm, seed = report["localmesh"], report["envoy_restart"]
    print()
    print(f"{'':28} {'add p50':>9} {'add p99':>9} {'add max':>9} {'failed/ok on steady':>20}")
    for label, r in (("localmesh up --watch", lm), ("Envoy restart, static", seed)):
        a = r["add"]
        print(
            f"{label:28} {a['p50_ms']:>7.1f}ms {a['p99_ms']:>7.1f}ms {a['max_ms']:>7.1f}ms "
            f"{r['load_failed']:>9}/{r['load_ok']}"
        )
    rm = lm["remove"]
    print(f"localmesh remove (save -> 404): p50 {rm['p50_ms']} ms, p99 {rm['p99_ms']} ms")
    print(f"localmesh Envoy restarts during the run: {lm['envoy_restarts']}")
    targets = {
        "add_p50_le_100ms": lm["add"]["p50_ms"] <= TARGET_P50_MS,
        "add_p99_le_250ms": lm["add"]["p99_ms"] <= TARGET_P99_MS,
        "zero_failed_requests": lm["load_failed"] == 0,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    json_line("reload", **report, targets=targets, all_targets_met=all(targets.values()))


if __name__ == "__main__":
    main()
