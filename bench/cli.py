"""How long the everyday commands take, start to exit, like `hyperfine` would measure them.

Each command runs `--runs` times after one warm-up run (the page cache holds the files,
as it does for a user's second command); the figures are wall-clock mean ± standard
deviation, min and max, against the targets of the commands a user runs most:

    --help, status, down                         <= 0.3 s
    dump-envoy-config --mock-config              <= 0.6 s
    dump-envoy-config, 1,000 entries             <= 1 s
    up reporting an invalid services.yaml        <= 0.4 s
    up reporting that its --name is taken        <= 0.4 s

`status` is measured twice: with no mesh running (the error) and against a running mesh
(`up` on the sandbox cluster, in another process). For comparison the same run times the
interpreter's own floor (`python -c pass`) and `kubectl version --client`, a command-line
tool users start all day. Ends with one JSON line.

    .venv/bin/python bench/cli.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOCALMESH,
    ROOT,
    MeshProcess,
    SandboxProcess,
    free_port,
    json_line,
    machine,
    make_workdir,
    one_echo_scenario,
    print_machine,
    services_yaml,
)

EXAMPLES = ROOT / "examples"
SCENARIO = one_echo_scenario("shop", "web")
# Holds the instance lock of --name `held`, as a running `up` would.
HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from localmesh.runtime import InstanceLock, runtime_paths
    InstanceLock(runtime_paths("held")).acquire()
    print("held", flush=True)
    sys.stdin.read()
    """
)


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    expect_exit: int
    target_s: float | None  # None: a reference row


@dataclass(frozen=True)
class Timing:
    case: Case
    samples: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @property
    def met(self) -> bool | None:
        return None if self.case.target_s is None else self.mean <= self.case.target_s

    def figures(self) -> dict[str, Any]:
        return {
            "mean_s": round(self.mean, 3),
            "stdev_s": round(self.stdev, 3),
            "min_s": round(min(self.samples), 3),
            "max_s": round(max(self.samples), 3),
            "target_s": self.case.target_s,
            "met": self.met,
        }


def time_case(case: Case, runs: int, env: dict[str, str]) -> Timing:
    samples = []
    for i in range(runs + 1):
        began = time.perf_counter()
        result = subprocess.run(
            case.argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        elapsed = time.perf_counter() - began
        if result.returncode != case.expect_exit:
            raise SystemExit(
                f"{case.name}: exit {result.returncode}, expected {case.expect_exit}\n"
                f"{result.stderr[-2000:]}"
            )
        if i:  # the first run warms the page cache
            samples.append(elapsed)
    return Timing(case, samples)


def thousand_entries(work: Path, count: int = 1000) -> tuple[Path, Path]:
    """services.yaml with `count` entries over 10 namespaces, and the mocks.yaml resolving
    them: what `dump-envoy-config` renders offline at scale."""
    services, mocks = ["listener_port: 18080", "services:"], ["mocks:"]
    for i in range(count):
        ns = f"team{i % 10}"
        services += [
            f"  - host: svc{i}.localhost",
            f"    namespace: {ns}",
            f"    service: svc{i}",
            "    port_name: http",
            "    type: http",
        ]
        mocks += [
            f"  - namespace: {ns}",
            f"    service: svc{i}",
            "    port_name: http",
            f"    resolved_port: {8000 + i % 100}",
        ]
    services_path, mocks_path = work / f"services-{count}.yaml", work / f"mocks-{count}.yaml"
    services_path.write_text("\n".join(services) + "\n")
    mocks_path.write_text("\n".join(mocks) + "\n")
    return services_path, mocks_path


def cases(work: Path, running: str | None) -> list[Case]:
    bad = work / "invalid.yaml"
    bad.write_text("listener_port: 8080\nservices:\n  - host: a.localhost\n    sevrice: web\n")
    seed = str(EXAMPLES / "services.yaml")
    many, many_mocks = thousand_entries(work)
    found = [
        Case("python -c pass", [sys.executable, "-c", "pass"], 0, None),
        Case("kubectl version --client", ["kubectl", "version", "--client"], 0, None),
        Case("--help", [LOCALMESH, "--help"], 0, 0.3),
        Case("status (no mesh)", [LOCALMESH, "status"], 1, 0.3),
    ]
    if running:
        found.append(
            Case("status (running mesh)", [LOCALMESH, "status", "--name", running], 0, 0.3)
        )
    found += [
        Case("down (no mesh)", [LOCALMESH, "down"], 1, 0.3),
        Case(
            "dump-envoy-config --mock-config",
            [LOCALMESH, "dump-envoy-config", seed, "--mock-config", str(EXAMPLES / "mocks.yaml")],
            0,
            0.6,
        ),
        Case(
            "dump-envoy-config, 1,000 entries",
            [LOCALMESH, "dump-envoy-config", str(many), "--mock-config", str(many_mocks)],
            0,
            1.0,
        ),
        Case("up: invalid services.yaml", [LOCALMESH, "up", "-f", str(bad)], 2, 0.4),
        Case(
            "up: --name taken",
            [LOCALMESH, "up", "-f", seed, "--name", "held", "--no-edit-hosts"],
            1,
            0.4,
        ),
    ]
    return found


def print_table(timings: Sequence[Timing]) -> None:
    print(f"{'command':36} {'mean ± sd':>17} {'min':>7} {'max':>7} {'target':>7}  met")
    for t in timings:
        target = f"{t.case.target_s:.2f}s" if t.case.target_s is not None else "-"
        met = {True: "yes", False: "NO", None: ""}[t.met]
        spread = f"{t.mean:.3f} ± {t.stdev:.3f}s"
        print(
            f"{t.case.name:36} {spread:>17} {min(t.samples):>6.3f}s "
            f"{max(t.samples):>6.3f}s {target:>7}  {met}"
        )


def time_all(work: Path, runs: int, env: dict[str, str]) -> list[Timing]:
    """Every case, one after the other, while another process holds the lock of `held`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        return [time_case(case, runs, env) for case in cases(work, "bench")]
    finally:
        holder.kill()
        holder.wait()


async def with_running_mesh(work: Path, runs: int, env: dict[str, str]) -> list[Timing]:
    sandbox = await SandboxProcess(SCENARIO, work).start()
    services = work / "services.yaml"
    services.write_text(services_yaml(free_port(), [("web.localhost", "shop", "web", 8080)]))
    mesh = MeshProcess(services, sandbox.kubeconfig, work, name="bench")
    try:
        await mesh.wait_ready()
        env = {**env, "XDG_RUNTIME_DIR": mesh.env["XDG_RUNTIME_DIR"]}
        return await asyncio.to_thread(time_all, work, runs, env)
    finally:
        mesh.stop()
        sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--quick", action="store_true", help="3 runs per command")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    info = machine(kubectl=True)
    print_machine(info)
    work = make_workdir("cli")
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "SUDO_UID")}
    timings = asyncio.run(with_running_mesh(work, runs, env))
    print(f"{runs} runs each after one warm-up, wall clock, one command at a time")
    print_table(timings)
    json_line(
        "cli",
        machine=info,
        runs=runs,
        commands={t.case.name: t.figures() for t in timings},
        all_met=all(t.met is not False for t in timings),
    )


if __name__ == "__main__":
    main()
