"""Data path: req/s through localmesh vs `kubectl port-forward` vs direct to the pod.

    .venv/bin/python bench/datapath.py [--quick] [--seconds 2] [--rounds 2] [--concurrency 1,8]

The sandbox cluster runs in its own process (deployment `web`, http-echo, one replica,
service `web`). Three paths to the same pod, in the same run, driven by the same asyncio
HTTP/1.1 client in this process:

- localmesh: `localmesh up` (subprocess) -> its Envoy listener, Host: web.localhost;
- kubectl:   `kubectl port-forward svc/web :8080`;
- direct:    the pod's own loopback IP and port (the limit).

Two diagnostic paths show where the time goes: `lm-forwarder` is localmesh's own
port-forward listener without Envoy in front, `envoy-direct` is a static Envoy in front of
the pod without any port-forward. CPU per 1,000 requests is reported for each process a
path runs through (the client excluded).

For each concurrency level: keep-alive req/s (N connections, one request at a time each)
and new-connection req/s (N workers: connect, one request with Connection: close, close).
Within a round the paths run back to back for each metric (so load from elsewhere hits
them alike); the best round counts, and the per-round ratios are printed too. Every
measurement is bounded by `--seconds` and `--max-requests`. Targets: localmesh
new-connection rate >= 2x kubectl's (Envoy keeps its upstream connections), keep-alive
>= kubectl's, at every concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Connection,
    MeshProcess,
    Rate,
    SandboxProcess,
    cpu_seconds,
    free_port,
    json_line,
    keepalive_rate,
    kubectl_port_forward,
    machine,
    make_workdir,
    newconn_rate,
    percentile,
    print_machine,
    services_yaml,
    start_static_envoy,
    stop_process,
    tree_cpu_seconds,
    wait_status,
)

from localmesh.desired import ClusterSpec, DesiredState, Endpoint, Protocol, VirtualHostSpec
from localmesh.xds.static import static_config_of

NS = "bench"
APP = "web"
HOST = "web.localhost"
SCENARIO: dict[str, Any] = {
    "namespaces": [NS],
    "deployments": [{"name": APP, "namespace": NS, "workload": "http-echo", "replicas": 1}],
    "services": [
        {
            "name": APP,
            "namespace": NS,
            "selector": {"app": APP},
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
        }
    ],
}


def envoy_direct_config(port: int, pod_ip: str) -> dict[str, Any]:
    cluster = ClusterSpec("direct", Protocol.HTTP, (Endpoint(pod_ip, 8080, "pod"),))
    vhost = VirtualHostSpec.to_cluster(HOST, "direct", Protocol.HTTP)
    return static_config_of(DesiredState.serving("127.0.0.1", port, (cluster,), (vhost,)))


class Cpu:
    """CPU ms per 1,000 requests of each process a path runs through (and the sandbox)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        # kubectl is a dispatcher that may start the real kubectl: count its whole tree.
        return {
            label: tree_cpu_seconds(pid) if label == "kubectl" else cpu_seconds(pid)
            for label, pid in self.pids.items()
        }

    def lap(self, requests: int) -> dict[str, float]:
        now = self._now()
        per = 1e6 / requests if requests else 0.0
        used = {f"cpu_ms_per_1k_{k}": round((now[k] - self.last[k]) * per, 1) for k in now}
        self.last = now
        return used


def figures(rate: Rate) -> dict[str, float]:
    return {
        "rps": round(rate.rps, 1),
        "p50_ms": round(percentile(rate.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(rate.latencies, 99) * 1000, 3),
        "errors": rate.errors,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir("datapath")
    sandbox = SandboxProcess(SCENARIO, workdir)
    mesh: MeshProcess | None = None
    procs: list[subprocess.Popen[Any]] = []
    try:
        await sandbox.start()
        info = await asyncio.to_thread(machine, sandbox.kubeconfig)
        print_machine(info)
        pod = sandbox.pods[f"{NS}/{APP}"][0]
        port = free_port()
        services = workdir / "services.yaml"
        services.write_text(services_yaml(port, [(HOST, NS, APP, 8080)]))
        mesh = MeshProcess(services, sandbox.kubeconfig, workdir)
        await mesh.wait_ready()
        kubectl, kc_port = await asyncio.to_thread(
            kubectl_port_forward, sandbox.env(), NS, f"svc/{APP}", 8080
        )
        procs.append(kubectl)
        # Diagnostic: the same Envoy hop in front of the pod, without any forwarder.
        envoy_direct_port = free_port()
        static = workdir / "envoy-direct.json"
        static.write_text(json.dumps(envoy_direct_config(envoy_direct_port, pod["ip"])))
        envoy_direct = start_static_envoy(static, workdir / "envoy-direct.log")
        procs.append(envoy_direct)
        forwarder = mesh.forwarder_ports()[HOST][0]
        paths = {
            "localmesh": ("127.0.0.1", port),
            "kubectl": ("127.0.0.1", kc_port),
            "direct": (pod["ip"], 8080),
            # Diagnostic: localmesh's own port-forward listener, without Envoy in front.
            "lm-forwarder": ("127.0.0.1", forwarder),
            "envoy-direct": ("127.0.0.1", envoy_direct_port),
        }
        # Whose CPU a path spends (besides the client and the sandbox, shared by all).
        envoy_pid = mesh.envoy_pid()
        assert envoy_pid is not None
        cpu_of = {
            "localmesh": {"localmesh_up": mesh.pid, "envoy": envoy_pid},
            "kubectl": {"kubectl": kubectl.pid},
            "direct": {},
            "lm-forwarder": {"localmesh_up": mesh.pid, "envoy": envoy_pid},
            "envoy-direct": {"envoy": envoy_direct.pid},
        }
        for address, path_port in paths.values():
            conn = Connection(path_port, address)
            await wait_status(conn, HOST, 200, within=10)
            conn.close()
        best: dict[str, dict[str, dict[str, float]]] = {name: {} for name in paths}
        ratios: dict[str, list[float]] = {}
        for address, path_port in paths.values():  # warm up every path
            await keepalive_rate(
                address, path_port, HOST, seconds=0.3, concurrency=8, max_requests=5000
            )
        for round_ in range(args.rounds):
            for n in args.concurrency:
                for kind, run in (("keepalive", keepalive_rate), ("newconn", newconn_rate)):
                    metric = f"{kind}_c{n}"
                    line = f"round {round_ + 1} {metric:>13}:"
                    this_round: dict[str, float] = {}
                    # All paths back to back, so load from elsewhere hits them alike.
                    for name, (address, path_port) in paths.items():
                        cpu = Cpu({**cpu_of[name], "sandbox": sandbox.pid})
                        rate = await run(
                            address,
                            path_port,
                            HOST,
                            seconds=args.seconds,
                            concurrency=n,
                            max_requests=args.max_requests,
                        )
                        used = cpu.lap(rate.requests)
                        this_round[name] = rate.rps
                        if rate.rps >= best[name].get(metric, {}).get("rps", -1.0):
                            best[name][metric] = {**figures(rate), **used}
                        errors = f" ({rate.errors} errors)" if rate.errors else ""
                        line += f"  {name} {rate.rps:.0f}{errors}"
                    if this_round["kubectl"]:
                        ratio = this_round["localmesh"] / this_round["kubectl"]
                        ratios.setdefault(metric, []).append(ratio)
                    print(line + " req/s", flush=True)
        return {
            "machine": info,
            "bounds": {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "max_requests": args.max_requests,
                "concurrency": args.concurrency,
            },
            "results": best,
            "localmesh_over_kubectl_per_round": {
                m: [round(r, 2) for r in rs] for m, rs in ratios.items()
            },
        }
    finally:
        for proc in procs:
            stop_process(proc)
        if mesh is not None:
            mesh.stop()
        sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # logs, kubeconfig, runtime dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per measurement")
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-requests", type=int, default=100_000, help="per measurement")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8],
        help="comma-separated connection counts",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
    report = asyncio.run(measure(args))
    results = report["results"]
    print()
    header = f"{'path':>10}"
    metrics = [f"{kind}_c{n}" for n in args.concurrency for kind in ("keepalive", "newconn")]
    for metric in metrics:
        header += f" {metric + ' req/s':>20}"
    print(header)
    for name, by_metric in results.items():
        print(f"{name:>10}" + "".join(f" {by_metric[m]['rps']:>20.0f}" for m in metrics))
    print("CPU ms per 1,000 requests, by process (client excluded):")
    for name, by_metric in results.items():
        for m in metrics:
            used = {k[14:]: v for k, v in by_metric[m].items() if k.startswith("cpu_ms_per_1k_")}
            print(f"{name:>12} {m:>13}: " + ", ".join(f"{k} {v:.0f}" for k, v in used.items()))
    lm, kc = results["localmesh"], results["kubectl"]
    ratios = {m: round(lm[m]["rps"] / kc[m]["rps"], 2) if kc[m]["rps"] else None for m in metrics}
    print("localmesh / kubectl, best rounds: " + ", ".join(f"{m} {r}x" for m, r in ratios.items()))
    for m, per_round in report["localmesh_over_kubectl_per_round"].items():
        print(f"  {m} per round: " + ", ".join(f"{r}x" for r in per_round))
    targets: dict[str, bool] = {}
    for n in args.concurrency:
        nc, ka = ratios[f"newconn_c{n}"], ratios[f"keepalive_c{n}"]
        targets[f"newconn_c{n}_ge_2x_kubectl"] = nc is not None and nc >= 2.0
        targets[f"keepalive_c{n}_ge_kubectl"] = ka is not None and ka >= 1.0
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    json_line(
        "datapath",
        **report,
        localmesh_over_kubectl=ratios,
        targets=targets,
        all_targets_met=all(targets.values()),
    )


if __name__ == "__main__":
    main()
