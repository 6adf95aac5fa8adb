"""Data path: req/s through localmesh vs `kubectl port-forward` vs direct to the pod.

    .venv/bin/python bench/datapath.py [--quick] [--seconds 2] [--rounds 2] [--concurrency 1,8]

The sandbox cluster runs in its own process (deployment `web`, http-echo, one replica,
service `web`). Three paths to the same pod, in the same run, driven by the same asyncio
HTTP/1.1 client in this process:

- localmesh: `localmesh up` (subprocess) -> its Envoy listener, Host: web.localhost;
- kubectl:   `kubectl port-forward svc/web :8080`;
- direct:    the pod's own loopback IP and port (the limit).

For each concurrency level: keep-alive req/s (N connections, one request at a time each)
and new-connection req/s (N workers: connect, one request with Connection: close, close).
Paths alternate within each round; the best round counts. Every measurement is bounded by
`--seconds` and `--max-requests`. Targets: localmesh new-connection rate >= 2x kubectl's
(Envoy keeps its upstream connections), keep-alive >= kubectl's, at every concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
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
    stop_process,
    wait_status,
)

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
    kubectl: subprocess.Popen[str] | None = None
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
        paths = {
            "localmesh": ("127.0.0.1", port),
            "kubectl": ("127.0.0.1", kc_port),
            "direct": (pod["ip"], 8080),
        }
        for address, path_port in paths.values():
            conn = Connection(path_port, address)
            await wait_status(conn, HOST, 200, within=10)
            conn.close()
        best: dict[str, dict[str, dict[str, float]]] = {name: {} for name in paths}
        for round_ in range(args.rounds):
            for name, (address, path_port) in paths.items():
                for n in args.concurrency:
                    bound = {"seconds": args.seconds, "concurrency": n}
                    bound["max_requests"] = args.max_requests
                    await keepalive_rate(address, path_port, HOST, **{**bound, "seconds": 0.2})
                    ka = await keepalive_rate(address, path_port, HOST, **bound)
                    nc = await newconn_rate(address, path_port, HOST, **bound)
                    for metric, rate in ((f"keepalive_c{n}", ka), (f"newconn_c{n}", nc)):
                        if rate.rps >= best[name].get(metric, {}).get("rps", -1.0):
                            best[name][metric] = figures(rate)
                    print(
                        f"round {round_ + 1} {name:>9} c={n}: keep-alive {ka.rps:7.0f} req/s "
                        f"(p50 {percentile(ka.latencies, 50) * 1000:.2f} ms)  new-conn "
                        f"{nc.rps:6.0f} req/s (p50 {percentile(nc.latencies, 50) * 1000:.2f} ms)"
                        f"  errors {ka.errors + nc.errors}",
                        flush=True,
                    )
        envoy_pid = mesh.envoy_pid()
        return {
            "machine": info,
            "bounds": {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "max_requests": args.max_requests,
                "concurrency": args.concurrency,
            },
            "results": best,
            "envoy_pid_found": envoy_pid is not None,
        }
    finally:
        if kubectl is not None:
            stop_process(kubectl)
        if mesh is not None:
            mesh.stop()
        sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per measurement")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
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
    lm, kc = results["localmesh"], results["kubectl"]
    ratios = {m: round(lm[m]["rps"] / kc[m]["rps"], 2) if kc[m]["rps"] else None for m in metrics}
    print("localmesh / kubectl: " + ", ".join(f"{m} {r}x" for m, r in ratios.items()))
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
