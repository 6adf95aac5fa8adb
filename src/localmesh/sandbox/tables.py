"""Server-side printing (`Accept: application/json;as=Table`), as `kubectl get` shows it."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from localmesh.sandbox.resources import ResourceType

Obj = dict[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # (name, type, priority, cell)


def age(obj: Obj) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    secs = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    secs = max(secs, 0)
    if secs < 120:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 48 * 3600:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _since(timestamp: str | None) -> str:
    return age({"metadata": {"creationTimestamp": timestamp}})


def _involved(event: Obj) -> str:
    obj = event.get("involvedObject") or {}
    return f"{str(obj.get('kind', '')).lower()}/{obj.get('name', '')}"


def _pod_ready(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    total = len(pod.get("spec", {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_status(pod: Obj) -> str:
    """The STATUS column as kubectl prints it: a container's waiting or terminated reason
    (CrashLoopBackOff, ImagePullBackOff, Error) wins over the phase."""
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status", {})
    phase: str = status.get("phase", "Unknown")
    reason = phase
    for c in status.get("containerStatuses") or []:
        state = c.get("state") or {}
        waiting = (state.get("waiting") or {}).get("reason")
        terminated = state.get("terminated") or {}
        if waiting:
            reason = waiting
        elif terminated:
            reason = terminated.get("reason") or f"ExitCode:{terminated.get('exitCode', 0)}"
    if reason == "Pending" and not status.get("podIP"):
        return "ContainerCreating" if pod.get("spec", {}).get("nodeName") else "Pending"
    return reason


def _pod_restarts(pod: Obj) -> str:
    """`3 (12s ago)`: restarts of all containers and how long ago the last one ended."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    count = sum(int(c.get("restartCount", 0)) for c in statuses)
    ended = [
        (c.get("lastState") or {}).get("terminated", {}).get("finishedAt")
        for c in statuses
        if c.get("restartCount")
    ]
    last = max((e for e in ended if e), default=None)
    return f"{count} ({_since(last)} ago)" if count and last else str(count)


def _rules_subjects(binding: Obj, kind: str) -> str:
    out = []
    for s in binding.get("subjects") or []:
        if s.get("kind") != kind:
            continue
        out.append(
            f"{s.get('namespace', '')}/{s['name']}" if kind == "ServiceAccount" else s["name"]
        )
    return ", ".join(out)


def _replicas(obj: Obj, field: str) -> int:
    value = obj.get("status", {}).get(field, 0)
    return int(value) if isinstance(value, int) else 0


def _svc_external(svc: Obj) -> str:
    spec = svc.get("spec", {})
    if spec.get("type") == "ExternalName":
        return str(spec.get("externalName", "<none>"))
    ips = list(spec.get("externalIPs") or [])
    ips += [i.get("ip") for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []]
    if ips:
        return ",".join(str(ip) for ip in ips)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _svc_ports(svc: Obj) -> str:
    out = []
    for p in svc.get("spec", {}).get("ports") or []:
        s = f"{p.get('port')}"
        if p.get("nodePort"):
            s += f":{p['nodePort']}"
        out.append(f"{s}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _selector(sel: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((sel or {}).items())) or "<none>"


def _endpoints(ep: Obj) -> str:
    addrs = []
    for subset in ep.get("subsets") or []:
        for a in subset.get("addresses") or []:
            for p in subset.get("ports") or []:
                addrs.append(f"{a['ip']}:{p['port']}")
    if not addrs:
        return "<none>"
    shown = ",".join(addrs[:3])
    return shown + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")


def _slice_endpoints(s: Obj) -> str:
    ips = [a for e in s.get("endpoints") or [] for a in e.get("addresses", [])]
    if not ips:
        return "<unset>"
    return ",".join(ips[:3]) + (f" + {len(ips) - 3} more..." if len(ips) > 3 else "")


def _selector_of(o: Obj) -> str:
    return _selector((o.get("spec", {}).get("selector") or {}).get("matchLabels"))


def _deploy_containers(d: Obj, field: str) -> str:
    containers = d.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    return ",".join(str(c.get(field, "")) for c in containers)


NAME: Column = ("Name", "string", 0, lambda o: o["metadata"]["name"])
AGE: Column = ("Age", "string", 0, age)

COLUMNS: dict[str, list[Column]] = {
    "pods": [
        NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, _pod_restarts),
        AGE,
        ("IP", "string", 1, lambda o: o.get("status", {}).get("podIP") or "<none>"),
        ("Node", "string", 1, lambda o: o.get("spec", {}).get("nodeName") or "<none>"),
        ("Nominated Node", "string", 1, lambda o: "<none>"),
        ("Readiness Gates", "string", 1, lambda o: "<none>"),
    ],
    "services": [
        NAME,
        ("Type", "string", 0, lambda o: o.get("spec", {}).get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: o.get("spec", {}).get("clusterIP") or "<none>"),
        ("External-IP", "string", 0, _svc_external),
        ("Port(s)", "string", 0, _svc_ports),
        AGE,
        ("Selector", "string", 1, lambda o: _selector(o.get("spec", {}).get("selector"))),
    ],
    "deployments": [
        NAME,
        (
            "Ready",
            "string",
            0,
            lambda o: (
                f"{o.get('status', {}).get('readyReplicas', 0)}/"
                f"{o.get('spec', {}).get('replicas', 1)}"
            ),
        ),
        ("Up-to-date", "integer", 0, lambda o: o.get("status", {}).get("updatedReplicas", 0)),
        ("Available", "integer", 0, lambda o: o.get("status", {}).get("availableReplicas", 0)),
        AGE,
        ("Containers", "string", 1, lambda o: _deploy_containers(o, "name")),
        ("Images", "string", 1, lambda o: _deploy_containers(o, "image")),
        ("Selector", "string", 1, _selector_of),
    ],
    "replicasets": [
        NAME,
        ("Desired", "integer", 0, lambda o: o.get("spec", {}).get("replicas", 1)),
        ("Current", "integer", 0, lambda o: _replicas(o, "replicas")),
        ("Ready", "integer", 0, lambda o: _replicas(o, "readyReplicas")),
        AGE,
        ("Containers", "string", 1, lambda o: _deploy_containers(o, "name")),
        ("Images", "string", 1, lambda o: _deploy_containers(o, "image")),
        ("Selector", "string", 1, _selector_of),
    ],
    "serviceaccounts": [
        NAME,
        ("Secrets", "integer", 0, lambda o: len(o.get("secrets") or [])),
        AGE,
    ],
    "leases": [
        NAME,
        ("Holder", "string", 0, lambda o: (o.get("spec") or {}).get("holderIdentity") or ""),
        AGE,
    ],
    "roles": [NAME, ("Created At", "date", 0, lambda o: o["metadata"].get("creationTimestamp"))],
    "clusterroles": [
        NAME,
        ("Created At", "date", 0, lambda o: o["metadata"].get("creationTimestamp")),
    ],
    "rolebindings": [
        NAME,
        ("Role", "string", 0, lambda o: f"{o['roleRef']['kind']}/{o['roleRef']['name']}"),
        AGE,
        ("Users", "string", 1, lambda o: _rules_subjects(o, "User")),
        ("Groups", "string", 1, lambda o: _rules_subjects(o, "Group")),
        ("ServiceAccounts", "string", 1, lambda o: _rules_subjects(o, "ServiceAccount")),
    ],
    "clusterrolebindings": [
        NAME,
        ("Role", "string", 0, lambda o: f"{o['roleRef']['kind']}/{o['roleRef']['name']}"),
        AGE,
        ("Users", "string", 1, lambda o: _rules_subjects(o, "User")),
        ("Groups", "string", 1, lambda o: _rules_subjects(o, "Group")),
        ("ServiceAccounts", "string", 1, lambda o: _rules_subjects(o, "ServiceAccount")),
    ],
    "namespaces": [NAME, ("Status", "string", 0, lambda o: o.get("status", {}).get("phase")), AGE],
    "nodes": [
        NAME,
        ("Status", "string", 0, lambda o: "Ready"),
        ("Roles", "string", 0, lambda o: "<none>"),
        AGE,
        (
            "Version",
            "string",
            0,
            lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
        ),
    ],
    "endpoints": [NAME, ("Endpoints", "string", 0, _endpoints), AGE],
    "endpointslices": [
        NAME,
        ("AddressType", "string", 0, lambda o: o.get("addressType", "")),
        (
            "Ports",
            "string",
            0,
            lambda o: ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>",
        ),
        ("Endpoints", "string", 0, _slice_endpoints),
        AGE,
    ],
    "configmaps": [NAME, ("Data", "integer", 0, lambda o: len(o.get("data") or {})), AGE],
    "secrets": [
        NAME,
        ("Type", "string", 0, lambda o: o.get("type", "Opaque")),
        ("Data", "integer", 0, lambda o: len(o.get("data") or {})),
        AGE,
    ],
    "customresourcedefinitions": [
        NAME,
        ("Created At", "date", 0, lambda o: o["metadata"].get("creationTimestamp")),
    ],
    "events": [
        ("Last Seen", "string", 0, lambda o: _since(o.get("lastTimestamp"))),
        ("Type", "string", 0, lambda o: o.get("type", "")),
        ("Reason", "string", 0, lambda o: o.get("reason", "")),
        ("Object", "string", 0, _involved),
        ("Message", "string", 0, lambda o: o.get("message", "")),
        ("Name", "string", 1, lambda o: o["metadata"]["name"]),
    ],
}


def table(
    rtype: ResourceType, items: list[Obj], resource_version: str, query: Mapping[str, str]
) -> dict[str, Any]:
    # a custom resource's own printer columns (crds.CustomType), else the built-in ones
    custom: list[Column] | None = getattr(rtype, "columns", None)
    columns = list(custom) if custom else COLUMNS.get(rtype.plural, [NAME, AGE])
    include = query.get("includeObject", "Metadata")
    rows = []
    for obj in items:
        row: dict[str, Any] = {"cells": [cell(obj) for _, _, _, cell in columns]}
        if include == "Object":
            row["object"] = {"kind": rtype.kind, "apiVersion": rtype.api_version, **obj}
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": prio,
            }
            for name, type_, prio, _ in columns
        ],
        "rows": rows,
    }
