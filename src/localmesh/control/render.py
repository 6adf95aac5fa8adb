"""`localmesh status` output: a table for people, JSON for scripts, and the exit code."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from localmesh.control.model import InstanceStatus, SnapshotResource

HEALTHY_EXIT_CODE = 0
UNHEALTHY_EXIT_CODE = 1


def status_exit_code(status: InstanceStatus) -> int:
    """Non-zero when something is unhealthy: Envoy down, a host without live endpoints, an
    xDS NACK, or a problem the instance reports itself."""
    return HEALTHY_EXIT_CODE if status.healthy else UNHEALTHY_EXIT_CODE


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__}")


def status_to_dict(status: InstanceStatus) -> dict[str, Any]:
    data = asdict(status)
    data.pop("extra_problems")
    data["listener"] = status.listener
    data["healthy"] = status.healthy
    data["state"] = status.state
    data["problems"] = list(status.problems())
    data["degraded"] = list(status.degraded())
    for host, raw in zip(status.hosts, data["hosts"], strict=True):
        raw["target"] = host.target
        raw["live_pods"] = len(host.live_pods)
    return data


def render_status_json(status: InstanceStatus) -> str:
    return json.dumps(status_to_dict(status), indent=2, default=_json_default) + "\n"


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = int((now - when).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _check_lines(status: InstanceStatus) -> list[str]:
    """One line per checked fact, and the last repair of each under it."""
    lines = []
    for check in status.checks:
        lines.append(f"{check.name}: {'ok' if check.ok else 'FAILING: ' + check.problem}")
        if check.repaired:
            lines.append(f"  repaired: {check.repaired}")
    return lines


def render_status_text(status: InstanceStatus, *, now: datetime | None = None) -> str:
    """The human view: a summary, one line per host with its pods indented below it, the
    xDS exchange per type, and the problems last."""
    now = now or datetime.now(UTC)
    state = {"unhealthy": "UNHEALTHY", "degraded": "DEGRADED"}.get(status.state, "healthy")
    lines = [f"localmesh {status.name!r} (pid {status.pid}): {state}"]
    lines.append(f"listen: {status.listener}")
    if status.config_path:
        lines.append(f"config: {status.config_path}")
    envoy = status.envoy
    if envoy.running:
        detail = [f"pid {envoy.pid}"]
        if envoy.admin_address:
            detail.append(f"admin {envoy.admin_address}")
        if envoy.restarts:
            detail.append(f"restarts {envoy.restarts}")
        if envoy.version:
            detail.append(envoy.version)
        lines.append(f"envoy: running ({', '.join(detail)})")
    else:
        lines.append(f"envoy: NOT RUNNING (restarts {envoy.restarts})")
    lines.extend(_check_lines(status))

    lines.append("")
    rows = [["HOST", "TARGET", "TYPE", "PODS", "REQUESTS", "ERRORS", "LAST RECONNECT"]]
    pod_lines: dict[int, list[str]] = {}
    for index, host in enumerate(status.hosts, start=1):
        reconnect = _ago(host.last_reconnect, now)
        if host.last_reconnect_reason:
            reconnect += f" ({host.last_reconnect_reason})"
        target = host.target
        if host.target_port and str(host.target_port) != str(host.port):
            target += f" -> {host.target_port}"
        rows.append(
            [
                host.host,
                target,
                host.type,
                f"{len(host.live_pods)}/{len(host.pods)}",
                str(host.requests),
                str(host.errors),
                reconnect,
            ]
        )
        details: list[str] = []
        if host.error:
            details.append(f"    error: {host.error}")
        if host.local:
            state = "listening" if host.local_listening else "NOT LISTENING"
            details.append(f"    local {host.local}: {state}")
        if host.routes:
            route_rows = [
                [
                    f"route {r.match}",
                    f"-> {r.target}",
                    ("listening" if r.listening else "NOT LISTENING") if r.local else "",
                    f"error: {r.error}" if r.error else "",
                ]
                for r in host.routes
            ]
            details.extend("    " + line for line in _table(route_rows))
        if host.pods:
            pod_rows = [
                [
                    pod.name,
                    f"{pod.local_address}:{pod.local_port}",
                    pod.state,
                    f"conns={pod.active_connections}",
                    f"last error: {pod.last_error}" if pod.last_error else "",
                ]
                for pod in host.pods
            ]
            details.extend("    " + line for line in _table(pod_rows))
        pod_lines[index] = details
    if status.hosts:
        for index, line in enumerate(_table(rows)):
            lines.append(line)
            lines.extend(pod_lines.get(index, []))
    else:
        lines.append("no hosts configured")

    if status.xds:
        lines.append("")
        for xds in status.xds:
            if xds.nack:
                sync = f"REJECTED (acked {xds.acked_version or '-'}): {xds.nack}"
            elif xds.in_sync:
                sync = "acked"
            else:
                sync = f"pending (acked {xds.acked_version or '-'})"
            lines.append(f"xds {xds.short_type}: version {xds.served_version or '-'} {sync}")

    problems = status.problems()
    if problems:
        lines.append("")
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in problems)
    degraded = status.degraded()
    if degraded:
        lines.append("")
        lines.append("degraded:")
        lines.extend(f"  - {p}" for p in degraded)
    return "\n".join(lines) + "\n"


def render_snapshot_json(resources: tuple[SnapshotResource, ...]) -> str:
    """`dump-envoy-config --live`: one JSON document with every resource of the snapshot."""
    return (
        json.dumps(
            {
                "resources": [
                    {
                        "type_url": r.type_url,
                        "name": r.name,
                        "version": r.version,
                        "resource": json.loads(r.json),
                    }
                    for r in resources
                ]
            },
            indent=2,
        )
        + "\n"
    )
