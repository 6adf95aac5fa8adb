"""The sandbox's service proxy: a Service's cluster IP against the pod's own IP.

    .venv/bin/python bench/sandbox_proxy.py [--quick] [--seconds 1.5] [--rounds 3]

Starts the sandbox cluster in a child process (one http-echo pod and one tcp-echo pod, each
behind a ClusterIP Service), once on each event loop asked for (`uvloop`, what `localmesh
sandbox up` runs on, and `asyncio`, what the tests run on), and drives both paths from this
process with the same small asyncio client: keep-alive requests per second (1 and 8
connections, one request at a time each), new-connection requests per second (1 and 8
workers) and bulk MB/s through the tcp-echo pod. Direct-to-pod is the alternative (and the
limit): the proxy runs in the sandbox process, in front of the same pod. Each measurement
is cut into short slices that alternate between the two paths, so load from elsewhere on a
shared machine hits both alike; a round's share is cluster IP / direct over the same
slices, and the median round counts. Also the sandbox process's CPU per request on each
path (the difference is the proxy's cost). Loopback only; bounded in time and requests.
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
SLICES = 6  # per measurement, alternating paths
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


async def sliced(
    run: Any, paths: dict[str, tuple[str, str]], concurrency: int, seconds: float, pid: int
) -> dict[str, tuple[Rate, float]]:
    """Each path's requests over SLICES alternating slices; with sandbox CPU s per request."""
    totals = {name: (Rate(), 0.0) for name in paths}
    for _ in range(SLICES):
        for name, (web, _) in paths.items():
            cpu_before = tree_cpu_seconds(pid)
            got = await run(
                web,
                8080,
                "web",
                seconds=seconds / SLICES,
                concurrency=concurrency,
                max_requests=MAX_REQUESTS,
            )
            rate, cpu = totals[name]
            rate.requests += got.requests
            rate.errors += got.errors
            rate.seconds += got.seconds
            rate.latencies += got.latencies
            totals[name] = (rate, cpu + tree_cpu_seconds(pid) - cpu_before)
    return {name: (rate, cpu / max(rate.requests, 1)) for name, (rate, cpu) in totals.items()}


async def measure_loop(loop: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir("sandbox-proxy")
    proc, ips = await asyncio.to_thread(start_child, loop, str(workdir / "kubeconfig"))
    paths = {
        "direct": (ips["web"]["pod_ip"], ips["echo"]["pod_ip"]),
        "cluster-ip": (ips["web"]["cluster_ip"], ips["echo"]["cluster_ip"]),
    }
    rounds: dict[str, list[dict[str, Any]]] = {}
    errors = 0
    bulk_mb_s: dict[str, float] = dict.fromkeys(paths, 0.0)
    try:
        for web, _ in paths.values():  # warm up
            await keepalive_rate(
                web, 8080, "web", seconds=0.3, concurrency=1, max_requests=MAX_REQUESTS
            )
        for round_ in range(args.rounds):
            for n in args.concurrency:
                for kind, run in (("keepalive", keepalive_rate), ("newconn", newconn_rate)):
                    metric = f"{kind}_c{n}"
                    got = await sliced(run, paths, n, args.seconds, proc.pid)
                    (direct, direct_cpu), (proxied, proxied_cpu) = got["direct"], got["cluster-ip"]
                    errors += direct.errors + proxied.errors
                    figures = {
                        "direct_rps": round(direct.rps, 1),
                        "cluster_ip_rps": round(proxied.rps, 1),
                        "share_of_direct": round(proxied.rps / direct.rps, 2) if direct.rps else 0,
                        "direct_p50_ms": ms(direct, 50),
                        "cluster_ip_p50_ms": ms(proxied, 50),
                        "added_p50_ms": round(ms(proxied, 50) - ms(direct, 50), 3),
                        "direct_p99_ms": ms(direct, 99),
                        "cluster_ip_p99_ms": ms(proxied, 99),
                        "direct_sandbox_cpu_us_per_req": round(direct_cpu * 1e6, 1),
                        "cluster_ip_sandbox_cpu_us_per_req": round(proxied_cpu * 1e6, 1),
                    }
                    rounds.setdefault(metric, []).append(figures)
                    print(
                        f"{loop:>7} round {round_ + 1} {metric:>12}: direct "
                        f"{direct.rps:6.0f} req/s, cluster IP {proxied.rps:6.0f} req/s "
                        f"({figures['share_of_direct']:.0%}); p50 {ms(direct, 50):.3f} -> "
                        f"{ms(proxied, 50):.3f} ms; sandbox CPU {direct_cpu * 1e6:.0f} -> "
                        f"{proxied_cpu * 1e6:.0f} us/req; errors {direct.errors + proxied.errors}",
                        flush=True,
                    )
            for name, (_, echo) in paths.items():
                mbps = await bulk(9000, args.megabytes, echo)
                bulk_mb_s[name] = max(bulk_mb_s[name], round(mbps, 1))
                print(f"{loop:>7} round {round_ + 1} {'bulk':>12}: {name} {mbps:6.1f} MB/s")
    finally:
        await asyncio.to_thread(stop_process, proc)
    # The median round by share (the one in the middle for an odd count).
    median = {
        metric: sorted(each, key=lambda f: f["share_of_direct"])[len(each) // 2]
        for metric, each in rounds.items()
    }
    return {"median_round": median, "bulk_mb_s": bulk_mb_s, "errors": errors}


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
    for loop, result in report.items():
        for metric, f in result["median_round"].items():
            cpu = f["cluster_ip_sandbox_cpu_us_per_req"] - f["direct_sandbox_cpu_us_per_req"]
            print(
                f"{loop:>7} {metric:>12}: cluster IP {f['cluster_ip_rps']:6.0f} req/s = "
                f"{f['share_of_direct']:4.0%} of direct {f['direct_rps']:6.0f}; p50 "
                f"+{f['added_p50_ms']:.3f} ms; sandbox CPU +{cpu:.0f} us/req"
            )
            if metric.startswith("keepalive"):
                targets[f"{loop}_{metric}_at_least_half_of_direct"] = (
                    f["share_of_direct"] >= TARGET_SHARE
                )
        mb = result["bulk_mb_s"]
        print(
            f"{loop:>7} {'bulk':>12}: cluster IP {mb['cluster-ip']:.0f} MB/s, "
            f"direct {mb['direct']:.0f} MB/s"
        )
    targets["no_errors"] = all(result["errors"] == 0 for result in report.values())
    json_line("sandbox_proxy", machine=info, results=report, targets=targets)


if __name__ == "__main__":
    main()
