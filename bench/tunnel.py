"""The mesh direction's data path: a marked request through the reverse tunnel, against
`localmesh up`'s forwarder path in the other direction and against direct.

    .venv/bin/python bench/tunnel.py [--seconds 1.5] [--rounds 2] [--quick]

Processes (all on loopback): the sandbox cluster (bench/forward.py's child: an http-echo
pod), `localmesh up`'s `PodForwarder` to that pod (bench/forward.py's child), "the local
process" (the sandbox's own http-echo server code, in its own process, so both ends serve
alike), two real `localmesh agent shadow` processes and this machine's tunnel side (two
`TunnelClient`s on uvloop, in one process). The sandbox does not run localmesh's image
yet, so the port-forwarded shadow is bound to the http-echo pod's IP on the tunnel port:
the API server's port-forward to that pod reaches it as a kubelet would.

Paths, each driven by the same small asyncio HTTP/1.1 client from this process:
  direct-local        client -> the local process
  direct-pod          client -> the pod's http-echo (its loopback IP)
  up-forwarder        client -> PodForwarder -> API server port-forward -> pod (`up`)
  tunnel-tcp          client -> shadow -> tunnel over plain TCP -> local process
  tunnel-portforward  client -> shadow -> port-forward (PodForwarder, multiplexed) ->
                      this machine -> local process: the marked request's path
Keep-alive (one connection, one request at a time) and new connection per request; paths
alternate within each round, the best round counts. Ends with a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, free_port, json_line, machine, print_machine, stop_process
from forward import Result, keepalive, new_connections

ROOT = Path(__file__).resolve().parent.parent
FORWARD = str(Path(__file__).resolve().parent / "forward.py")
SHADOW_PORT = 18080  # the exposed (remote) port on each shadow
TUNNEL_PORT = 15390


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )


async def first_line(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
    if not line:
        raise RuntimeError(f"child {proc.args!r} exited without its ready line")
    return json.loads(line)


async def wait_listening(host: str, port: int) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)  # polling interval while a child starts
                continue
            writer.close()
            return


# -- children -----------------------------------------------------------------------------
async def serve_backend() -> None:
    """Child: the developer's local process (the sandbox's http-echo code); prints its port."""
    from localmesh.sandbox.workloads import PodInfo, start_listener

    port = free_port()
    listener = await start_listener("http-echo", PodInfo("laptop", "dev", "127.0.0.1"), port)
    print(json.dumps({"port": port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.close()


async def serve_laptop(
    kubeconfig: str, pod: str, tcp_tunnel_port: int, backend_port: int, secret_hex: str
) -> None:
    """Child: this machine's tunnel side, one client per shadow; prints when both are warm."""
    import aiohttp

    from localmesh.clustermesh.tunnel_laptop import PortForwardDialer, TcpDialer, TunnelClient
    from localmesh.clustermesh.tunnel_wire import parse_secret
    from localmesh.forward import Connector, raise_open_files_limit
    from localmesh.kube import load_access

    raise_open_files_limit()
    secret = parse_secret(secret_hex)
    access = load_access(kubeconfig)
    async with aiohttp.ClientSession() as session:
        connector = Connector(access, session)
        ports = {SHADOW_PORT: backend_port}
        clients = [
            TunnelClient(TcpDialer("127.0.0.1", tcp_tunnel_port), secret, ports),
            TunnelClient(PortForwardDialer(connector, "bench", pod, TUNNEL_PORT), secret, ports),
        ]
        for client in clients:
            client.start()
        async with asyncio.timeout(30):
            for client in clients:
                await client.wait_ready()
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for client in clients:
            await client.stop()
        print(json.dumps([c.stats.served for c in clients]), file=sys.stderr, flush=True)


# -- the run ------------------------------------------------------------------------------
async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from localmesh.clustermesh.tunnel_wire import SECRET_ENV, new_secret

    workdir = Path(tempfile.mkdtemp(prefix="localmesh-bench-"))
    kubeconfig = str(workdir / "kubeconfig")
    procs: list[subprocess.Popen[str]] = []
    try:
        sandbox = spawn(FORWARD, "--serve-sandbox", kubeconfig)
        procs.append(sandbox)
        web = (await first_line(sandbox))["pods"]["web"]
        forwarder = spawn(FORWARD, "--serve-forwarder", kubeconfig, f"{web['pod']}:{web['port']}")
        procs.append(forwarder)
        up_port = (await first_line(forwarder))[0]  # the multiplexed one
        backend = spawn(__file__, "--serve-backend")
        procs.append(backend)
        backend_port = (await first_line(backend))["port"]

        secret = new_secret()
        env = dict(os.environ, **{SECRET_ENV: secret.hex()})
        tcp_tunnel = free_port()
        shadows = {
            "tunnel-tcp": ("127.0.0.1", tcp_tunnel),
            "tunnel-portforward": (web["ip"], TUNNEL_PORT),
        }
        shadow_procs: dict[str, subprocess.Popen[str]] = {}
        for name, (ip, tunnel_port) in shadows.items():
            shadow = spawn(
                "-m", "localmesh", "--log-level", "warn", "agent", "shadow",
                "--ports", str(SHADOW_PORT), "--bind", ip, "--tunnel-bind", ip,
                "--tunnel-port", str(tunnel_port), env=env,
            )  # fmt: skip
            procs.append(shadow)
            shadow_procs[name] = shadow
            await wait_listening(ip, SHADOW_PORT)
        laptop = spawn(
            __file__, "--serve-laptop", kubeconfig, web["pod"], str(tcp_tunnel),
            str(backend_port), secret.hex(),
        )  # fmt: skip
        procs.append(laptop)
        await first_line(laptop)

        paths: dict[str, tuple[str, int]] = {
            "direct-local": ("127.0.0.1", backend_port),
            "direct-pod": (web["ip"], web["port"]),
            "up-forwarder": ("127.0.0.1", up_port),
            "tunnel-tcp": ("127.0.0.1", SHADOW_PORT),
            "tunnel-portforward": (web["ip"], SHADOW_PORT),
        }
        # Processes whose CPU a tunnel path costs (laptop is shared by both tunnel paths).
        costs = {
            "tunnel-tcp": {"shadow": shadow_procs["tunnel-tcp"].pid, "laptop": laptop.pid},
            "tunnel-portforward": {
                "shadow": shadow_procs["tunnel-portforward"].pid,
                "laptop": laptop.pid,
            },
            "up-forwarder": {"forwarder": forwarder.pid},
        }
        best: dict[str, dict[str, Any]] = {name: {} for name in paths}
        for host, port in paths.values():
            await keepalive(port, 0.3, host)  # warm up
        for round_ in range(args.rounds):
            for metric, label in (("keepalive", "keep-alive"), ("newconn", "new-conn")):
                for name, (host, port) in paths.items():
                    before = {k: cpu_seconds(pid) for k, pid in costs.get(name, {}).items()}
                    run = keepalive if metric == "keepalive" else new_connections
                    got: Result = await run(port, args.seconds, host)
                    used = {
                        f"{k}_cpu_us_per_req": round(
                            (cpu_seconds(pid) - before[k]) / max(1, got.requests) * 1e6, 1
                        )
                        for k, pid in costs.get(name, {}).items()
                    }
                    figures = best[name]
                    if got.rate >= figures.get(f"{metric}_rps", -1.0):
                        figures[f"{metric}_rps"] = round(got.rate, 1)
                        figures[f"{metric}_p50_ms"] = round(got.ms(0.5), 3)
                        figures[f"{metric}_p99_ms"] = round(got.ms(0.99), 3)
                        figures.update({f"{metric}_{k}": v for k, v in used.items()})
                    figures["errors"] = figures.get("errors", 0) + got.errors
                    cpu = "".join(f", {k} {v:.0f}" for k, v in used.items())
                    print(
                        f"round {round_ + 1} {name:>18}: {label:>10} {got.rate:7.0f} req/s "
                        f"(p50 {got.ms(0.5):.3f} ms, p99 {got.ms(0.99):.3f} ms) "
                        f"errors {got.errors}{cpu}",
                        flush=True,
                    )
        return best
    finally:
        for proc in reversed(procs):
            if proc.stdin is not None:
                proc.stdin.close()
            stop_process(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="--seconds 0.5 --rounds 1")
    parser.add_argument("--serve-backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-laptop", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend or args.serve_laptop:
        from localmesh.logs import configure_logging

        configure_logging("warn", stream=sys.stderr)
    if args.serve_backend:
        asyncio.run(serve_backend())  # the sandbox's loop, as the pod's http-echo runs on
        return
    if args.serve_laptop:
        from localmesh import eventloop

        kubeconfig, pod, tcp_port, backend_port, secret = args.serve_laptop
        eventloop.run(serve_laptop(kubeconfig, pod, int(tcp_port), int(backend_port), secret))
        return
    if args.quick:
        args.seconds, args.rounds = 0.5, 1
    info = machine(kubectl=False)
    print_machine(info)
    results = asyncio.run(measure(args))
    print(
        f"{'path':>18} {'keep-alive req/s':>17} {'p50/p99 ms':>14} "
        f"{'new-conn req/s':>15} {'p50/p99 ms':>14}"
    )
    for name, f in results.items():
        print(
            f"{name:>18} {f['keepalive_rps']:>17.0f} "
            f"{f['keepalive_p50_ms']:>6.3f}/{f['keepalive_p99_ms']:<7.3f} "
            f"{f['newconn_rps']:>15.0f} {f['newconn_p50_ms']:>6.3f}/{f['newconn_p99_ms']:<7.3f}"
        )
    tunnel, up = results["tunnel-portforward"], results["up-forwarder"]
    ratios = {
        "keepalive_tunnel_vs_up": round(tunnel["keepalive_rps"] / up["keepalive_rps"], 2),
        "newconn_tunnel_vs_up": round(tunnel["newconn_rps"] / up["newconn_rps"], 2),
        "p50_added_ms_vs_direct_local": round(
            tunnel["keepalive_p50_ms"] - results["direct-local"]["keepalive_p50_ms"], 3
        ),
    }
    print(
        f"tunnel through the port-forward vs `up`'s forwarder: keep-alive "
        f"{ratios['keepalive_tunnel_vs_up']}x, new connections {ratios['newconn_tunnel_vs_up']}x"
    )
    json_line("tunnel", machine=info, results=results, **ratios)


if __name__ == "__main__":
    main()
