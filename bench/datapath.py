"""Data path: req/s through localmesh vs the seed's design (Envoy + `kubectl port-forward`).

    .venv/bin/python bench/datapath.py [--quick] [--seconds 1.5] [--rounds 3]
                                       [--concurrency 1,8] [--megabytes 128]

The sandbox cluster runs in its own process (deployment `web`, http-echo, one replica,
service `web`). Paths to the same pod, in the same run, driven by the same asyncio HTTP/1.1
client in this process:

- localmesh: `localmesh up` (subprocess) -> its Envoy listener (one worker), Host:
  web.localhost -> localmesh's own port-forwarder -> API server -> pod;
- seed:      the seed tool's design: a static Envoy with localmesh's own listener, route
  and cluster settings (dumped from the running `up` by `dump-envoy-config --live`, one
  worker), its cluster pointing at a `kubectl port-forward svc/web` of its own. This is the
  main comparison: the same Envoy in front, only the port-forward behind it differs;
- kubectl:   bare `kubectl port-forward svc/web :8080` (reference);
- direct:    the pod's own loopback IP and port (the limit).

Two diagnostic paths show where the time goes: `lm-forwarder` is localmesh's own
port-forward listener without Envoy in front, `envoy-direct` is a static Envoy (one worker)
in front of the pod without any port-forward. CPU per 1,000 requests is reported for each
process a path runs through (the client excluded), and CPU per MB for a large upload.

For each concurrency level: keep-alive req/s (N connections, one request at a time each)
and new-connection req/s (N workers: connect, one request with Connection: close, close);
then `--megabytes` uploaded as 1 MiB POST bodies on one keep-alive connection (MB/s and
CPU per MB). Within a round, each metric's measurement is cut into `--slices` short
turns the paths take one after the other, the order reversed every turn, so that load from
elsewhere (it drifts over seconds) hits all paths alike; localmesh and seed are adjacent,
their order swapped every round. The best round counts, and the per-round ratios are
printed too. Every measurement is
bounded by `--seconds` and `--max-requests`. Targets: localmesh >= 1.0x the seed design on
every req/s column in every round; localmesh's CPU (the `up` process, its forwarder) per
request and per MB below the seed's kubectl's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOCALMESH,
    Connection,
    MeshProcess,
    Rate,
    SandboxProcess,
    cpu_seconds,
    descendants,
    free_port,
    json_line,
    keepalive_rate,
    kubectl_port_forward,
    machine,
    make_workdir,
    newconn_rate,
    one_echo_scenario,
    percentile,
    print_machine,
    read_response,
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
SCENARIO = one_echo_scenario(NS, APP)


def envoy_direct_config(port: int, pod_ip: str) -> dict[str, Any]:
    cluster = ClusterSpec("direct", Protocol.HTTP, (Endpoint(pod_ip, 8080, "pod"),))
    vhost = VirtualHostSpec.to_cluster(HOST, "direct", Protocol.HTTP)
    return static_config_of(DesiredState.serving("127.0.0.1", port, (cluster,), (vhost,)))


def run_queue_seconds(pid: int) -> float:
    """Time the threads of a process (and its children) spent runnable, waiting for a CPU
    (/proc/<tid>/schedstat, second field, ns): what a busy machine costs a forwarder."""
    total = 0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{each}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """A loaded machine, on purpose: `count` busy loops beside the paths."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def live_static_config(mesh: MeshProcess) -> dict[str, Any]:
    """The running `up`'s own Envoy config as one static config (`dump-envoy-config --live`)."""
    out = subprocess.run(
        [LOCALMESH, "dump-envoy-config", "--live", "--name", mesh.name, "-o", "json"],
        capture_output=True,
        text=True,
        env=mesh.env,
        check=True,
        timeout=60,
    )
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def seed_config(live: dict[str, Any], port: int, upstream: int, admin: Path) -> dict[str, Any]:
    """localmesh's listener, route and cluster settings on `port`, the one cluster's
    endpoint replaced by a kubectl port-forward on `upstream` (the seed's design)."""
    config: dict[str, Any] = json.loads(json.dumps(live))
    config["admin"] = {"address": {"pipe": {"path": str(admin), "mode": 0o600}}}
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    listener["address"]["socket_address"]["port_value"] = port
    (cluster,) = resources["clusters"]
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    cluster["load_assignment"] = {
        "cluster_name": cluster["name"],
        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
    }
    return config


class Cpu:
    """CPU seconds of each process a path runs through (and the sandbox), per lap."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        # kubectl is a dispatcher that may start the real kubectl: count its whole tree.
        used = {
            label: tree_cpu_seconds(pid) if label == "kubectl" else cpu_seconds(pid)
            for label, pid in self.pids.items()
        }
        for label in ("localmesh_up", "kubectl"):  # the forwarders: why one falls behind
            if label in self.pids:
                used[f"runq_{label}"] = run_queue_seconds(self.pids[label])
        return used

    def lap(self) -> dict[str, float]:
        now = self._now()
        used = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return used


def per_unit(used: dict[str, float], units: float, scale: float, prefix: str) -> dict[str, float]:
    """CPU per `units` (requests or MB), in ms per 1,000 or us per MB."""
    per = scale / units if units else 0.0
    return {f"{prefix}{k}": round(v * per, 1) for k, v in used.items()}


def merged(a: Rate, b: Rate) -> Rate:
    return Rate(
        a.requests + b.requests,
        a.errors + b.errors,
        a.seconds + b.seconds,
        a.latencies + b.latencies,
    )


def figures(rate: Rate) -> dict[str, float]:
    return {
        "rps": round(rate.rps, 1),
        "p50_ms": round(percentile(rate.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(rate.latencies, 99) * 1000, 3),
        "errors": rate.errors,
    }


UPLOAD_CHUNK = 1 << 20  # bytes per POST body


async def upload_rate(
    address: str, port: int, host: str, *, megabytes: int, seconds: float
) -> tuple[float, float]:
    """(MB uploaded, seconds): 1 MiB POST bodies on one keep-alive connection."""
    body = b"x" * UPLOAD_CHUNK
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {UPLOAD_CHUNK}\r\n\r\n"
    ).encode()
    sent = 0
    reader, writer = await asyncio.open_connection(address, port)
    began = time.perf_counter()
    try:
        while sent < megabytes * 1_000_000 and time.perf_counter() - began < seconds * 4:
            writer.write(head)
            writer.write(body)
            await writer.drain()
            if await read_response(reader) != 200:
                raise RuntimeError(f"upload through {address}:{port} failed")
            sent += UPLOAD_CHUNK
    finally:
        writer.close()
    return sent / 1_000_000, time.perf_counter() - began


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir("datapath")
    sandbox = SandboxProcess(SCENARIO, workdir)
    mesh: MeshProcess | None = None
    procs: list[subprocess.Popen[Any]] = []
    try:
        await sandbox.start()
        info = await asyncio.to_thread(machine, sandbox.kubeconfig)
        info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
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
        # The seed's design: Envoy with localmesh's settings in front of its own kubectl.
        seed_kubectl, seed_kc_port = await asyncio.to_thread(
            kubectl_port_forward, sandbox.env(), NS, f"svc/{APP}", 8080
        )
        procs.append(seed_kubectl)
        live = await asyncio.to_thread(live_static_config, mesh)
        seed_port = free_port()
        seed_static = workdir / "envoy-seed.json"
        seed_static.write_text(
            json.dumps(seed_config(live, seed_port, seed_kc_port, workdir / "seed-admin.sock"))
        )
        seed_envoy = start_static_envoy(seed_static, workdir / "envoy-seed.log", concurrency=1)
        procs.append(seed_envoy)
        # Diagnostic: the same Envoy hop in front of the pod, without any forwarder.
        envoy_direct_port = free_port()
        static = workdir / "envoy-direct.json"
        static.write_text(json.dumps(envoy_direct_config(envoy_direct_port, pod["ip"])))
        envoy_direct = start_static_envoy(static, workdir / "envoy-direct.log", concurrency=1)
        procs.append(envoy_direct)
        forwarder = mesh.forwarder_ports()[HOST][0]
        paths = {
            "localmesh": ("127.0.0.1", port),
            "seed": ("127.0.0.1", seed_port),
            "kubectl": ("127.0.0.1", kc_port),
            "direct": (pod["ip"], 8080),
            # Diagnostic: localmesh's own port-forward listener, without Envoy in front.
            "lm-forwarder": ("127.0.0.1", forwarder),
            "envoy-direct": ("127.0.0.1", envoy_direct_port),
        }
        paths = {name: where for name, where in paths.items() if name in args.paths}
        # Whose CPU a path spends (besides the client and the sandbox, shared by all).
        envoy_pid = mesh.envoy_pid()
        assert envoy_pid is not None
        cpu_of = {
            "localmesh": {"localmesh_up": mesh.pid, "envoy": envoy_pid},
            "seed": {"kubectl": seed_kubectl.pid, "envoy": seed_envoy.pid},
            "kubectl": {"kubectl": kubectl.pid},
            "direct": {},
            "lm-forwarder": {"localmesh_up": mesh.pid},
            "envoy-direct": {"envoy": envoy_direct.pid},
        }
        # Threads each forwarding process can run on: the kernel shares a busy CPU per thread.
        threads = {
            "localmesh_up": thread_count(mesh.pid),
            "seed_kubectl": max(
                (thread_count(p) for p in (seed_kubectl.pid, *descendants(seed_kubectl.pid))),
                default=0,
            ),
            "envoy": thread_count(envoy_pid),
        }
        procs += start_hogs(args.hog)
        for address, path_port in paths.values():
            conn = Connection(path_port, address)
            await wait_status(conn, HOST, 200, within=10)
            conn.close()
        best: dict[str, dict[str, dict[str, float]]] = {name: {} for name in paths}
        ratios: dict[str, list[float]] = {}
        # CPU seconds and units (requests, MB) summed over all rounds, per path and metric.
        totals: dict[str, dict[str, dict[str, float]]] = {name: {} for name in paths}
        for address, path_port in paths.values():  # warm up every path
            await keepalive_rate(
                address, path_port, HOST, seconds=0.3, concurrency=8, max_requests=5000
            )

        def add(name: str, metric: str, units: float, used: dict[str, float]) -> None:
            total = totals[name].setdefault(metric, {"units": 0.0})
            total["units"] += units
            for k, v in used.items():
                total[k] = total.get(k, 0.0) + v

        for round_ in range(args.rounds):
            # localmesh and seed adjacent, their order swapped every round.
            order = list(paths)
            if round_ % 2:
                order[0], order[1] = order[1], order[0]
            for n in args.concurrency:
                for kind, run in (("keepalive", keepalive_rate), ("newconn", newconn_rate)):
                    metric = f"{kind}_c{n}"
                    line = f"round {round_ + 1} {metric:>13}:"
                    this_round: dict[str, float] = {}
                    rates = {name: Rate() for name in order}
                    spent: dict[str, dict[str, float]] = {name: {} for name in order}
                    # Short slices, the paths taking turns (order reversed every slice):
                    # load from elsewhere drifts over seconds and hits them alike.
                    for slice_ in range(args.slices):
                        for name in order if slice_ % 2 == 0 else order[::-1]:
                            address, path_port = paths[name]
                            cpu = Cpu({**cpu_of[name], "sandbox": sandbox.pid})
                            part = await run(
                                address,
                                path_port,
                                HOST,
                                seconds=args.seconds / args.slices,
                                concurrency=n,
                                max_requests=args.max_requests,
                            )
                            for k, v in cpu.lap().items():
                                spent[name][k] = spent[name].get(k, 0.0) + v
                            rates[name] = merged(rates[name], part)
                    for name in order:
                        rate, used = rates[name], spent[name]
                        add(name, metric, rate.requests, used)
                        this_round[name] = rate.rps
                        if rate.rps >= best[name].get(metric, {}).get("rps", -1.0):
                            best[name][metric] = {
                                **figures(rate),
                                **per_unit(used, rate.requests, 1e6, "cpu_ms_per_1k_"),
                            }
                        errors = f" ({rate.errors} errors)" if rate.errors else ""
                        line += f"  {name} {rate.rps:.0f}{errors}"
                    if this_round["seed"]:
                        ratios.setdefault(metric, []).append(
                            this_round["localmesh"] / this_round["seed"]
                        )
                    print(line + " req/s", flush=True)
            if args.megabytes:
                line = f"round {round_ + 1} {'upload':>13}:"
                for name in order:
                    address, path_port = paths[name]
                    cpu = Cpu({**cpu_of[name], "sandbox": sandbox.pid})
                    mb, took = await upload_rate(
                        address, path_port, HOST, megabytes=args.megabytes, seconds=args.seconds
                    )
                    used = cpu.lap()
                    add(name, "upload", mb, used)
                    mbps = mb / took if took else 0.0
                    if mbps >= best[name].get("upload", {}).get("mb_s", -1.0):
                        best[name]["upload"] = {
                            "mb_s": round(mbps, 1),
                            **per_unit(used, mb, 1e6, "cpu_us_per_mb_"),
                        }
                    line += f"  {name} {mbps:.0f}"
                print(line + " MB/s", flush=True)
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        cpu_totals = {
            name: {
                metric: per_unit(
                    {k: v for k, v in total.items() if k != "units"},
                    total["units"],
                    1e6,
                    "cpu_us_per_mb_" if metric == "upload" else "cpu_ms_per_1k_",
                )
                for metric, total in by_metric.items()
            }
            for name, by_metric in totals.items()
        }
        return {
            "machine": info,
            "threads": threads,
            "bounds": {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "slices": args.slices,
                "max_requests": args.max_requests,
                "concurrency": args.concurrency,
                "megabytes": args.megabytes,
                "hog": args.hog,
            },
            "results": best,
            "cpu_all_rounds": cpu_totals,
            "localmesh_over_seed_per_round": {
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
    parser.add_argument(
        "--slices", type=int, default=5, help="turns the paths take within one measurement"
    )
    parser.add_argument("--max-requests", type=int, default=100_000, help="per measurement")
    parser.add_argument(
        "--megabytes", type=int, default=128, help="uploaded per path and round (0: none)"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8],
        help="comma-separated connection counts",
    )
    parser.add_argument(
        "--hog", type=int, default=0, help="busy-loop processes to run beside (a loaded machine)"
    )
    parser.add_argument(
        "--paths",
        type=lambda text: ["localmesh", "seed", *(p for p in text.split(",") if p)],
        default=["localmesh", "seed", "kubectl", "direct", "lm-forwarder", "envoy-direct"],
        help="reference paths to run besides localmesh and seed (comma-separated; default: "
        "kubectl,direct,lm-forwarder,envoy-direct)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
    report = asyncio.run(measure(args))
    results, cpu_totals = report["results"], report["cpu_all_rounds"]
    print()
    metrics = [f"{kind}_c{n}" for n in args.concurrency for kind in ("keepalive", "newconn")]
    header = f"{'path':>12}" + "".join(f" {m + ' req/s':>20}" for m in metrics)
    if args.megabytes:
        header += f" {'upload MB/s':>12}"
    print(header)
    for name, by_metric in results.items():
        line = f"{name:>12}" + "".join(f" {by_metric[m]['rps']:>20.0f}" for m in metrics)
        if args.megabytes:
            line += f" {by_metric['upload']['mb_s']:>12.0f}"
        print(line)
    print(
        "CPU per 1,000 requests (ms) and per MB uploaded (us), by process, all rounds "
        "(runq_*: time the forwarder was runnable but waited for a CPU):"
    )
    for name, by_metric in cpu_totals.items():
        for m, used in by_metric.items():
            text = ", ".join(f"{k[14:]} {v:.0f}" for k, v in used.items())
            print(f"{name:>12} {m:>13}: {text}")
    lm, seed = results["localmesh"], results["seed"]
    ratios = {
        m: round(lm[m]["rps"] / seed[m]["rps"], 2) if seed[m]["rps"] else None for m in metrics
    }
    print("localmesh / seed, best rounds: " + ", ".join(f"{m} {r}x" for m, r in ratios.items()))
    per_round = report["localmesh_over_seed_per_round"]
    for m, rs in per_round.items():
        print(f"  {m} per round: " + ", ".join(f"{r}x" for r in rs))
    if "kubectl" in results:
        kc = results["kubectl"]
        print(
            "localmesh / bare kubectl, best rounds (reference): "
            + ", ".join(f"{m} {round(lm[m]['rps'] / kc[m]['rps'], 2)}x" for m in metrics)
        )
    targets: dict[str, bool] = {}
    for m in metrics:
        targets[f"{m}_ge_seed_every_round"] = all(r >= 1.0 for r in per_round.get(m, [0.0]))
    # localmesh's forwarder (the `up` process) against the seed's kubectl, same traffic.
    for m in [*metrics, *(["upload"] if args.megabytes else [])]:
        key = "cpu_us_per_mb_" if m == "upload" else "cpu_ms_per_1k_"
        ours = cpu_totals["localmesh"][m][key + "localmesh_up"]
        theirs = cpu_totals["seed"][m][key + "kubectl"]
        targets[f"{m}_forwarder_cpu_below_kubectl"] = ours < theirs
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    json_line(
        "datapath",
        **report,
        localmesh_over_seed=ratios,
        targets=targets,
        all_targets_met=all(targets.values()),
    )


if __name__ == "__main__":
    main()
