"""Pure rules: which service port an entry means, and which pods serve it right now.

Objects are the raw JSON dicts the API server sends (no model classes: a watch on a busy
namespace would spend most of its time building them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class PortNotFound(Exception):
    """The service has no port by that name or number; carries the ones it has."""

    def __init__(self, wanted: str | int, available: list[str], has: Iterable[str] = ()) -> None:
        self.wanted = wanted  # "": no port named, and the service has more than one
        self.available = available
        self.has = list(has)  # `name:port` of each, as users write them in services.yaml
        listed = ", ".join(available) if available else "none"
        super().__init__(f"service has no port {wanted!r}; available ports: {listed}")

    def explain(self, service: str) -> str:
        """`service billing/web has no port 'x'; it has: http:8080` for messages."""
        has = ", ".join(self.has) or "no ports"
        if self.wanted == "":
            return f"service {service} has several ports, name one with port_name; it has: {has}"
        return f"service {service} has no port {self.wanted!r}; it has: {has}"


@dataclass(frozen=True)
class ServicePort:
    """The service port an entry names, as the service spec declares it."""

    name: str  # "" for an unnamed (single) port
    port: int
    target_port: int | str  # a number, or a container port name resolved per pod
    protocol: str = "TCP"
    app_protocol: str | None = None  # `appProtocol`: picks Envoy's protocol without `type`


@dataclass(frozen=True)
class ServiceInfo:
    """What the forwarders need to know about the service itself."""

    namespace: str
    name: str
    port: ServicePort
    selector: Mapping[str, str] | None  # None: selectorless (endpoints managed by hand)
    headless: bool


@dataclass(frozen=True, order=True)
class Target:
    """One ready pod serving the service port: forward to `pod`, container port `port`."""

    pod: str
    ip: str
    port: int


def describe_port(spec: Mapping[str, Any]) -> str:
    name = spec.get("name") or ""
    number = spec.get("port")
    target = spec.get("targetPort", number)
    label = f"{name}:{number}" if name else str(number)
    return f"{label}->{target}"


def port_label(spec: Mapping[str, Any]) -> str:
    """`name:port` (or the number of an unnamed port), as services.yaml names it."""
    name = spec.get("name") or ""
    return f"{name}:{spec.get('port')}" if name else str(spec.get("port"))


def service_port(service: JSON, wanted: str | int) -> ServicePort:
    """The port of `service` named (str) or numbered (int) `wanted`; "" means its only port.

    A headless service may declare no ports at all; a numbered entry then forwards straight
    to that container port.
    """
    ports: list[JSON] = list(service.get("spec", {}).get("ports") or [])
    for spec in ports:
        if (
            (wanted == "" and len(ports) == 1)
            or (isinstance(wanted, str) and spec.get("name") == wanted)
            or (isinstance(wanted, int) and spec.get("port") == wanted)
        ):
            number = int(spec["port"])
            target = spec.get("targetPort", number)
            if isinstance(target, str) and target.isdigit():
                target = int(target)
            return ServicePort(
                name=str(spec.get("name") or ""),
                port=number,
                target_port=target,
                protocol=str(spec.get("protocol") or "TCP"),
                app_protocol=spec.get("appProtocol") or None,
            )
    if not ports and isinstance(wanted, int) and is_headless(service):
        return ServicePort(name="", port=wanted, target_port=wanted)
    raise PortNotFound(wanted, [describe_port(p) for p in ports], [port_label(p) for p in ports])


def is_headless(service: JSON) -> bool:
    return bool(service.get("spec", {}).get("clusterIP") == "None")


def service_info(service: JSON, wanted: str | int) -> ServiceInfo:
    meta = service.get("metadata", {})
    spec = service.get("spec", {})
    selector = spec.get("selector") or None
    return ServiceInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        port=service_port(service, wanted),
        selector=dict(selector) if selector else None,
        headless=is_headless(service),
    )


def container_port(pod: JSON | None, name: str) -> int | None:
    """The number of the container port called `name` in `pod`, if any."""
    if pod is None:
        return None
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and port.get("containerPort") is not None:
                return int(port["containerPort"])
    return None


def _endpoint_ready(endpoint: Mapping[str, Any]) -> bool:
    # The API says an unset `ready` means ready; a terminating endpoint is not ready.
    conditions = endpoint.get("conditions") or {}
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def _endpoint_serving_terminating(endpoint: Mapping[str, Any]) -> bool:
    """Terminating but still passing its readiness probe (an unset `serving` means the
    same as `ready`): used, as kube-proxy does, only while no endpoint is ready."""
    conditions = endpoint.get("conditions") or {}
    serving = conditions.get("serving", conditions.get("ready"))
    return conditions.get("terminating") is True and serving is not False


def _pod_name(ref: Mapping[str, Any] | None) -> str | None:
    if ref and ref.get("kind", "Pod") == "Pod" and ref.get("name"):
        return str(ref["name"])
    return None


def _target_port(
    info: ServiceInfo, listed: int | None, pod: JSON | None
) -> tuple[int | None, bool]:
    """The container port for one endpoint, and whether the pod spec was needed for it."""
    if listed is not None:
        return listed, False
    target = info.port.target_port
    if isinstance(target, int):
        return target, False
    return container_port(pod, target), True


@dataclass(frozen=True)
class TargetSet:
    targets: frozenset[Target]
    uses_pods: bool  # the result depended on pod specs/IPs: recompute when pods change


def targets_from_slices(
    info: ServiceInfo,
    slices: Iterable[JSON],
    pods: Mapping[str, JSON],
    pods_by_ip: Mapping[str, str],
) -> TargetSet:
    """Ready, non-terminating endpoints of the EndpointSlices of one service; when there
    is none, the terminating ones that still serve (a single replica being replaced:
    kube-proxy does the same since Kubernetes 1.28)."""
    found: set[Target] = set()
    fallback: set[Target] = set()
    uses_pods = False
    for piece in slices:
        listed: int | None = None
        for port in piece.get("ports") or []:
            if (port.get("name") or "") == info.port.name and port.get("port") is not None:
                listed = int(port["port"])
        for endpoint in piece.get("endpoints") or []:
            ready = _endpoint_ready(endpoint)
            if not ready and not _endpoint_serving_terminating(endpoint):
                continue
            addresses = endpoint.get("addresses") or []
            if not addresses:
                continue
            ip = str(addresses[0])
            pod_name = _pod_name(endpoint.get("targetRef"))
            if pod_name is None:
                uses_pods = True
                pod_name = pods_by_ip.get(ip)
                if pod_name is None:
                    continue
            number, needed_pod = _target_port(info, listed, pods.get(pod_name))
            uses_pods |= needed_pod
            if number is not None:
                (found if ready else fallback).add(Target(pod=pod_name, ip=ip, port=number))
    return TargetSet(frozenset(found or fallback), uses_pods)


def targets_from_endpoints(
    info: ServiceInfo,
    endpoints: JSON | None,
    pods: Mapping[str, JSON],
    pods_by_ip: Mapping[str, str],
) -> TargetSet:
    """Ready addresses of a v1 Endpoints object (clusters without EndpointSlices)."""
    found: set[Target] = set()
    uses_pods = False
    for subset in (endpoints or {}).get("subsets") or []:
        listed: int | None = None
        for port in subset.get("ports") or []:
            if (port.get("name") or "") == info.port.name and port.get("port") is not None:
                listed = int(port["port"])
        for address in subset.get("addresses") or []:
            ip = str(address.get("ip"))
            pod_name = _pod_name(address.get("targetRef"))
            if pod_name is None:
                uses_pods = True
                pod_name = pods_by_ip.get(ip)
                if pod_name is None:
                    continue
            number, needed_pod = _target_port(info, listed, pods.get(pod_name))
            uses_pods |= needed_pod
            if number is not None:
                found.add(Target(pod=pod_name, ip=ip, port=number))
    return TargetSet(frozenset(found), uses_pods)
