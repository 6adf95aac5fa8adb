"""The sandbox's service proxy: a Service's cluster IP against the pod's own IP.

    .venv/bin/python bench/sandbox_proxy.py [--quick] [--seconds 1.5] [--rounds 3]

Starts the sandbox cluster in a child process (one http-echo pod and one tcp-echo pod, each
behind a ClusterIP Service), once on each event loop asked for (`uvloop`, what `localmesh
sandbox up` runs on, and `asyncio`, what the tests run on), and drives both paths from this
process with the same small asyncio client: keep-alive requests per second (1 and 8
connections, one request at a time each), new-connection requests per second (1 and 8
workers) and bulk MB/s through the tcp-echo pod. Direct-to-pod is the alternative (and the
limit): the proxy runs in the sandbox process, in front of the same pod. Paths alternate
within each round, metric by metric; the best round counts. Also the sandbox process's CPU
per request on each path (the difference is the proxy's cost). Loopback only; bounded.
Target: cluster IP keep-alive >= 50 % of direct keep-alive on every loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Rate,
    json_line,
    keepalive_rate,
    machine,
    make_workdir,
    newconn_rate,
    percentile,
    print_machine,
    stop_process,
    tree_cpu_seconds,
)
from forward import bulk

ROOT = Path(__file__).resolve().parent.parent
SCENARIO: dict[str, Any] = {
    "deployments": [
        {"name": "web", "namespace": "bench", "workload": "http-echo"},
        {"name": "echo", "namespace": "bench", "workload": "tcp-echo"},
    ],
    "services": [
        {"name": n, "namespace": "bench", "selector": {"app": n}, "ports": [p]}
        for n, p in (("web", 8080), ("echo", 9000))
    ],
}
MAX_REQUESTS = 200_000  # per measurement, whatever the rate
TARGET_SHARE = 0.5


async def serve(kubeconfig: str) -> None:
    """Child process: the sandbox until stdin closes; prints pod and cluster IPs as JSON."""
    from localmesh.sandbox import Sandbox, Scenario

    async with Sandbox.start(Scenario.from_dict(SCENARIO), kubeconfig_path=kubeconfig) as sb:
        out = {
            n: {
                "pod_ip": sb.pods("bench", {"app": n})[0]["status"]["podIP"],
                "cluster_ip": sb.cluster.dns.service_ip(f"{n}.bench"),
            }
            for n in ("web", "echo")
        }
        print(json.dumps(out), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def start_child(loop: str, kubeconfig: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kubeconfig, "--loop", loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        stop_process(proc)
        raise RuntimeError("the sandbox process ended before it was up")
    started: dict[str, Any] = json.loads(line)
    return proc, started


def ms(rate: Rate, q: float) -> float:
    return round(percentile(rate.latencies, q) * 1000, 3)


async def measure_loop(loop: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    workdir = make_workdir("sandbox-proxy")
    proc, ips = await asyncio.to_thread(start_child, loop, str(workdir / "kubeconfig"))
    paths = {
        "direct": (ips["web"]["pod_ip"], ips["echo"]["pod_ip"]),
        "cluster-ip": (ips["web"]["cluster_ip"], ips["echo"]["cluster_ip"]),
    }
    best: dict[str, dict[str, Any]] = {name: {"errors": 0} for name in paths}
    try:
        for web, _ in paths.values():  # warm up
            await keepalive_rate(
                web, 8080, "web", seconds=0.3, concurrency=1, max_requests=MAX_REQUESTS
            )
        for round_ in range(args.rounds):
            for n in args.concurrency:
                for kind, run in (("keepalive", keepalive_rate), ("newconn", newconn_rate)):
                    metric = f"{kind}_c{n}"
                    for name, (web, _) in paths.items():
                        cpu_before = tree_cpu_seconds(proc.pid)
                        got = await run(
                            web,
                            8080,
                            "web",
                            seconds=args.seconds,
                            concurrency=n,
                            max_requests=MAX_REQUESTS,
                        )
                        cpu_us = (tree_cpu_seconds(proc.pid) - cpu_before) / max(got.requests, 1)
                        best[name]["errors"] += got.errors
                        if got.rps >= best[name].get(metric, {}).get("rps", -1.0):
                            best[name][metric] = {
                                "rps": round(got.rps, 1),
                                "p50_ms": ms(got, 50),
                                "p99_ms": ms(got, 99),
                                "sandbox_cpu_us_per_req": round(cpu_us * 1e6, 1),
                            }
                        print(
                            f"{loop:>7} round {round_ + 1} {name:>10} {metric:>12}: "
                            f"{got.rps:8.0f} req/s (p50 {ms(got, 50):.3f} ms, p99 "
                            f"{ms(got, 99):.3f} ms) sandbox CPU {cpu_us * 1e6:.0f} us/req, "
                            f"errors {got.errors}",
                            flush=True,
                        )
            for name, (_, echo) in paths.items():
                mbps = await bulk(9000, args.megabytes, echo)
                best[name]["bulk_mb_s"] = max(best[name].get("bulk_mb_s", 0.0), round(mbps, 1))
                print(f"{loop:>7} round {round_ + 1} {name:>10} {'bulk':>12}: {mbps:8.1f} MB/s")
    finally:
        await asyncio.to_thread(stop_process, proc)
    return best


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    return {loop: await measure_loop(loop, args) for loop in args.loops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=64, help="bulk transfer size")
    parser.add_argument("--quick", action="store_true", help="1 s, one round, 16 MB")
    parser.add_argument(
        "--loops", type=lambda t: t.split(","), default=["uvloop", "asyncio"], help="a,b"
    )
    parser.add_argument(
        "--concurrency", type=lambda t: [int(n) for n in t.split(",")], default=[1, 8]
    )
    parser.add_argument("--serve", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="uvloop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from localmesh.logs import configure_logging

        configure_logging("warn", stream=sys.stderr)
        if args.loop == "uvloop":
            from localmesh.eventloop import run

            run(serve(args.serve))
        else:
            asyncio.run(serve(args.serve))
        return
    if args.quick:
        args.seconds, args.rounds, args.megabytes = 1.0, 1, 16
    info = machine(kubectl=False)
    print_machine(info)
    report = asyncio.run(measure(args))
    print()
    targets: dict[str, bool] = {}
    for loop, results in report.items():
        direct, proxied = results["direct"], results["cluster-ip"]
        for metric in (m for m in direct if m.startswith(("keepalive", "newconn"))):
            share = proxied[metric]["rps"] / direct[metric]["rps"] if direct[metric]["rps"] else 0
            added = proxied[metric]["p50_ms"] - direct[metric]["p50_ms"]
            proxied[metric]["share_of_direct"] = round(share, 2)
            proxied[metric]["added_p50_ms"] = round(added, 3)
            print(
                f"{loop:>7} {metric:>12}: cluster IP {proxied[metric]['rps']:8.0f} req/s = "
                f"{share:4.0%} of direct {direct[metric]['rps']:8.0f}; p50 +{added:.3f} ms"
            )
            if metric.startswith("keepalive"):
                targets[f"{loop}_{metric}_at_least_half_of_direct"] = share >= TARGET_SHARE
        print(
            f"{loop:>7} {'bulk':>12}: cluster IP {proxied['bulk_mb_s']:.0f} MB/s, "
            f"direct {direct['bulk_mb_s']:.0f} MB/s"
        )
    errors = sum(r["errors"] for results in report.values() for r in results.values())
    targets["no_errors"] = errors == 0
    json_line("sandbox_proxy", machine=info, results=report, targets=targets)


if __name__ == "__main__":
    main()
