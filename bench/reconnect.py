"""Reconnect: a replacement pod becomes Ready -> first successful request through the mesh.

    .venv/bin/python bench/reconnect.py [--quick] [--rounds 20] [--kubectl-rounds 5]

The sandbox cluster runs in its own process: one deployment `web` (http-echo, ONE replica)
behind service `web`. Each round deletes the pod through the sandbox API with a ready delay
(the replacement is Running at once and Ready after `--ready-delay` s); the sandbox records
the moment the replacement's Ready condition is stored (CLOCK_MONOTONIC, system-wide, so it
compares with this process's clock). Meanwhile a client polls every 2 ms and notes the first
200 that the replacement served (http-echo names its pod in the body).

- localmesh: `localmesh up` as a subprocess; polls go through its Envoy listener.
- kubectl: `kubectl port-forward svc/web` (what users run by hand). The same deletion; the
  client polls its port for `--kubectl-wait` s after Ready to see whether it recovers by
  itself, then restarts it and measures restart -> first 200 (and Ready -> first 200 for a
  user who restarts it the instant the pod is Ready).

Target (localmesh): Ready -> first 200, p50 <= 100 ms. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
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
    MeshProcess,
    SandboxProcess,
    free_port,
    json_line,
    kubectl_port_forward,
    machine,
    make_workdir,
    one_echo_scenario,
    print_machine,
    services_yaml,
    stop_process,
    summary_ms,
    wait_status,
)

NS = "bench"
APP = "web"
HOST = "web.localhost"
TARGET_P50_MS = 100.0
SCENARIO = one_echo_scenario(NS, APP)


def served_by(body: bytes) -> str:
    try:
        return str(json.loads(body).get("pod", ""))
    except ValueError:
        return ""


async def first_from_other_pod(
    conn: Connection, old: str, stop_at: float, pause: float = 0.002
) -> tuple[float | None, int]:
    """Poll until a 200 comes from a pod other than `old`: (its monotonic time, failures)."""
    failures = 0
    while time.monotonic() < stop_at:
        status, body = await conn.fetch(HOST, seconds=1.0)
        now = time.monotonic()
        if status == 200 and served_by(body) not in ("", old):
            return now, failures
        if status != 200:
            failures += 1
        await asyncio.sleep(pause)
    return None, failures


async def current_pod(sandbox: SandboxProcess) -> str:
    pods = (await sandbox.call("pods", ns=NS, app=APP))["pods"]
    return str(pods[0]["name"])


async def replace(sandbox: SandboxProcess, pod: str, ready_delay: float) -> dict[str, Any]:
    return await sandbox.call("replace", ns=NS, pod=pod, ready_delay=ready_delay)


async def bench_localmesh(
    sandbox: SandboxProcess, workdir: Path, rounds: int, ready_delay: float
) -> dict[str, Any]:
    port = free_port()
    services = workdir / "services.yaml"
    services.write_text(services_yaml(port, [(HOST, NS, APP, 8080)]))
    mesh = MeshProcess(services, sandbox.kubeconfig, workdir)
    after_ready: list[float] = []
    after_delete: list[float] = []
    failed = 0
    try:
        await mesh.wait_ready()
        conn = Connection(port)
        await wait_status(conn, HOST, 200, within=10)
        for i in range(rounds):
            old = await current_pod(sandbox)
            poll = asyncio.create_task(
                first_from_other_pod(conn, old, time.monotonic() + ready_delay + 15)
            )
            replaced = await replace(sandbox, old, ready_delay)
            first, failures = await poll
            if first is None:
                raise RuntimeError(f"round {i}: no request reached {replaced['pod']}")
            after_ready.append(first - replaced["ready_at"])
            after_delete.append(first - replaced["deleted_at"])
            failed += failures
            if (i + 1) % 5 == 0:
                print(
                    f"  localmesh: {i + 1}/{rounds} rounds, "
                    f"last Ready -> 200 {after_ready[-1] * 1000:.1f} ms",
                    flush=True,
                )
        conn.close()
    finally:
        mesh.stop()
    return {
        "ready_to_first_200": summary_ms(after_ready),
        "delete_to_first_200": summary_ms(after_delete),
        "failed_polls_while_no_pod_ready": failed,
    }


async def bench_kubectl(
    sandbox: SandboxProcess, rounds: int, ready_delay: float, wait: float
) -> dict[str, Any]:
    env = sandbox.env()
    recovered = 0
    exited = 0
    restart_to_200: list[float] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        proc, port = await asyncio.to_thread(kubectl_port_forward, env, NS, f"svc/{APP}", 8080)
        procs.append(proc)
        for i in range(rounds):
            conn = Connection(port)
            await wait_status(conn, HOST, 200, within=10)
            old = await current_pod(sandbox)
            replaced = await replace(sandbox, old, ready_delay)
            ready_at = replaced["ready_at"]
            first, _ = await first_from_other_pod(conn, old, ready_at + wait)
            conn.close()
            if first is not None:
                recovered += 1
            gone = proc.poll() is not None
            exited += gone
            # The user notices and restarts it (here: as soon as we know it is stuck).
            stop_process(proc)
            began = time.monotonic()
            proc, port = await asyncio.to_thread(kubectl_port_forward, env, NS, f"svc/{APP}", 8080)
            procs.append(proc)
            conn = Connection(port)
            answered = await wait_status(conn, HOST, 200, within=10)
            conn.close()
            restart_to_200.append(answered - began)
            print(
                f"  kubectl: round {i + 1}/{rounds}: recovered by itself: "
                f"{'yes' if first is not None else 'no'}, process "
                f"{'exited' if gone else 'kept running'}, "
                f"restart -> 200 {restart_to_200[-1] * 1000:.0f} ms",
                flush=True,
            )
    finally:
        for proc in procs:
            stop_process(proc)
    return {
        "rounds": rounds,
        "recovered_by_itself": recovered,
        "process_exited": exited,
        "waited_after_ready_s": wait,
        "restart_to_first_200": summary_ms(restart_to_200),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = make_workdir("reconnect")
    sandbox = SandboxProcess(SCENARIO, workdir)
    try:
        await sandbox.start()
        info = await asyncio.to_thread(machine, sandbox.kubeconfig)
        print_machine(info)
        print(f"localmesh: {args.rounds} pod replacements (ready delay {args.ready_delay}s)")
        lm = await bench_localmesh(sandbox, workdir, args.rounds, args.ready_delay)
        print(f"kubectl port-forward svc/{APP}: {args.kubectl_rounds} pod replacements")
        kc = await bench_kubectl(sandbox, args.kubectl_rounds, args.ready_delay, args.kubectl_wait)
    finally:
        sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # logs, kubeconfig, runtime dir
    return {"machine": info, "ready_delay_s": args.ready_delay, "localmesh": lm, "kubectl": kc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 rounds, 2 kubectl rounds")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kubectl-rounds", type=int, default=5)
    parser.add_argument("--ready-delay", type=float, default=0.5, help="seconds to Ready")
    parser.add_argument(
        "--kubectl-wait", type=float, default=2.0, help="how long kubectl gets to recover"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.kubectl_rounds = 8, 2
    report = asyncio.run(measure(args))
    lm, kc = report["localmesh"], report["kubectl"]
    r = lm["ready_to_first_200"]
    print()
    print(
        f"localmesh: Ready -> first 200: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
        f"max {r['max_ms']} ms over {r['n']} rounds "
        f"(delete -> first 200 p50 {lm['delete_to_first_200']['p50_ms']} ms)"
    )
    k = kc["restart_to_first_200"]
    print(
        f"kubectl port-forward: recovered by itself in {kc['recovered_by_itself']}/"
        f"{kc['rounds']} rounds (waited {kc['waited_after_ready_s']} s after Ready), "
        f"process exited in {kc['process_exited']}/{kc['rounds']}; "
        f"restart -> first 200: p50 {k['p50_ms']} ms, max {k['max_ms']} ms"
    )
    targets = {"ready_to_200_p50_le_100ms": r["p50_ms"] <= TARGET_P50_MS}
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    json_line("reconnect", **report, targets=targets, all_targets_met=all(targets.values()))


if __name__ == "__main__":
    main()
