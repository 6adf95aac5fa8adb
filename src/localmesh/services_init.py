"""`localmesh init`: a services.yaml from the live Services of some namespaces.

Pure rules, no cluster access: `plan_entries` turns the Services (raw JSON, as the API
server lists them) into entries, `render` into the text of services.yaml.

- Host: `<service>.localhost`, or `<service>.<namespace>.localhost` for a name that exists
  in more than one of the namespaces (as `kubefwd svc -n` names them); a Service's further
  ports get `<port name>.<host>` (one Envoy listener: the host is what tells ports apart).
- Port: none for a single-port Service (services.yaml allows that), else `port_name`.
- Type: `grpc` or `http` where the port's appProtocol or name says so
  (localmesh.protocol_choice); otherwise left out, so that Envoy speaks the client's protocol.
- Skipped, with a comment saying why: ExternalName, headless and selector-less Services
  (nothing localmesh can port-forward to as a Service port), ports that are not TCP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from localmesh.desired import Protocol
from localmesh.kube.targets import JSON, is_headless
from localmesh.protocol_choice import choose_protocol


@dataclass(frozen=True)
class PlannedEntry:
    host: str
    namespace: str
    service: str
    port_name: str | None  # None: the Service's only port
    port: int | None  # an unnamed port of a multi-port Service (Kubernetes forbids it; kept)
    type: str | None  # None: the client's protocol, per request
    why: str  # the reason for `type` (or for leaving it out), written as a comment


@dataclass(frozen=True)
class Skipped:
    namespace: str
    service: str
    why: str


@dataclass(frozen=True)
class Plan:
    entries: tuple[PlannedEntry, ...]
    skipped: tuple[Skipped, ...]


def _meta(service: JSON) -> tuple[str, str]:
    meta = service.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def skip_reason(service: JSON) -> str | None:
    """Why `service` gets no entry, or None when it gets one."""
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        target = spec.get("externalName") or "?"
        return f"ExternalName ({target}): outside the cluster, nothing to port-forward"
    if is_headless(service):
        return "headless (clusterIP: None): its pods are reached one by one; add it by hand"
    if not spec.get("selector"):
        return "no selector: its endpoints are managed by hand and may not be pods"
    if not [p for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]:
        return "no TCP port"
    return None


def _type(port: Mapping[str, Any]) -> tuple[str | None, str]:
    choice = choose_protocol(str(port.get("name") or ""), port.get("appProtocol"))
    if choice.protocol is Protocol.DOWNSTREAM:
        return None, "no appProtocol or gRPC port name: Envoy speaks the client's protocol"
    return choice.protocol.value, choice.reason


def plan_entries(services: Iterable[JSON], namespaces: Sequence[str]) -> Plan:
    """Entries for `services`, in the order of `namespaces`, then by name."""
    order = {ns: i for i, ns in enumerate(namespaces)}
    listed = sorted(services, key=lambda s: (order.get(_meta(s)[0], len(order)), _meta(s)[1]))
    reasons = [skip_reason(service) for service in listed]
    seen_in: dict[str, set[str]] = {}
    for service, why in zip(listed, reasons, strict=True):
        if why is None:
            namespace, name = _meta(service)
            seen_in.setdefault(name, set()).add(namespace)
    entries: list[PlannedEntry] = []
    skipped: list[Skipped] = []
    taken: set[str] = set()
    for service, why in zip(listed, reasons, strict=True):
        namespace, name = _meta(service)
        if why is not None:
            skipped.append(Skipped(namespace, name, why))
            continue
        base = f"{name}.{namespace}" if len(seen_in[name]) > 1 else name
        ports: list[JSON] = list(service["spec"]["ports"])
        first = True
        for port in ports:
            label = str(port.get("name") or port.get("port"))
            if port.get("protocol", "TCP") != "TCP":
                skipped.append(Skipped(namespace, name, f"port {label}: {port['protocol']}"))
                continue
            # The first TCP port is the Service's host; the others are named under it.
            host = f"{base}.localhost" if first else f"{label}.{base}.localhost"
            first = False
            if host in taken:
                skipped.append(Skipped(namespace, name, f"port {label}: host {host} is taken"))
                continue
            taken.add(host)
            kind, reason = _type(port)
            single = len(ports) == 1
            named = str(port.get("name") or "") or None
            entries.append(
                PlannedEntry(
                    host=host,
                    namespace=namespace,
                    service=name,
                    port_name=None if single else named,
                    port=None if single or named else int(port["port"]),
                    type=kind,
                    why=reason,
                )
            )
    return Plan(tuple(entries), tuple(skipped))


def _scalar(value: str | int) -> str:
    text: str = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
    return text


def render(plan: Plan, namespaces: Sequence[str], header: Sequence[str], listener_port: int) -> str:
    """The text of services.yaml: `header` lines as comments, then the entries of each
    namespace; each skipped Service is a comment where its entry would be."""
    lines = [f"# {line}".rstrip() for line in header]
    lines += [
        "",
        f"listener_port: {listener_port}",
        "services:" if plan.entries else "services: []",
    ]
    for namespace in namespaces:
        lines.append(f"  # namespace {namespace}")
        body: list[str] = []
        for entry in (e for e in plan.entries if e.namespace == namespace):
            body.append(f"  - host: {_scalar(entry.host)}")
            body.append(f"    namespace: {_scalar(entry.namespace)}")
            body.append(f"    service: {_scalar(entry.service)}")
            if entry.port_name is not None:
                body.append(f"    port_name: {_scalar(entry.port_name)}")
            if entry.port is not None:
                body.append(f"    port: {entry.port}")
            if entry.type is not None:
                body.append(f"    type: {entry.type}  # {entry.why}")
        for skipped in (s for s in plan.skipped if s.namespace == namespace):
            body.append(f"  # skipped {skipped.service}: {skipped.why}")
        lines += body or ["  # no Services"]
    return "\n".join(lines) + "\n"


__all__ = ["Plan", "PlannedEntry", "Skipped", "plan_entries", "render", "skip_reason"]
