"""Routing rules printed (and on request applied) by `localmesh mesh --mode manual`.

Manual mode leaves routing to the cluster's own mesh. These pure builders turn the Service,
its pods and the session into:

- Istio: a DestinationRule with a subset for the cluster's pods and one for the mark, and a
  VirtualService sending requests with the mark's header to the mark's subset and every
  other request to the cluster's subset, per HTTP/gRPC port of the Service;
- with a shadow Service (`--shadow-service`, implied by `--no-selector-labels`): the
  VirtualService's marked routes go to that Service instead (a shadow without the selector
  labels is no endpoint of the original Service, so no subset of it can reach it), and a
  Gateway API HTTPRoute (GAMMA: parentRef the Service) does the same for non-Istio meshes.

Objects are plain JSON dicts, as in `manifests`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.port_protocols import NOT_HTTP, port_protocol
from localmesh.kube.targets import JSON

ISTIO_API = "networking.istio.io/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"
CLUSTER_SUBSET = "cluster"
# Labels that tell ReplicaSets of one Deployment apart: usable, but a rollout changes them.
VOLATILE_LABELS = frozenset({"pod-template-hash", "controller-revision-hash"})


class RulesError(Exception):
    """The rules cannot be built as asked; the message says why."""


@dataclass(frozen=True)
class ClusterSubset:
    """The labels that pick the cluster's pods of the Service but not the shadow."""

    labels: dict[str, str]
    note: str | None  # what the user should know about this choice


def mark_subset_name(slug: str) -> str:
    return f"localmesh-{slug}"


def rules_name(service: str, slug: str) -> str:
    return m.bounded_name(service, "localmesh", slug)


def http_ports(service: JSON) -> list[int]:
    """The Service's ports a mesh routes by header: TCP ports not declared as another
    protocol (an unnamed port is sniffed as HTTP by Istio)."""
    found = []
    for port in service.get("spec", {}).get("ports") or []:
        if (port.get("protocol") or "TCP") != "TCP" or port_protocol(port) in NOT_HTTP:
            continue
        found.append(int(port["port"]))
    return found


def cluster_subset(
    selector: Mapping[str, str], pods: Sequence[JSON], shadow_labels: Mapping[str, str]
) -> ClusterSubset:
    """Labels every cluster pod of the Service carries and the shadow does not have with
    the same value: the mark's key when the pods carry it (`version: v1`), else their other
    common labels, a rollout-specific hash only as a last resort."""
    theirs = [
        p["metadata"].get("labels") or {}
        for p in pods
        if (p["metadata"].get("labels") or {}).get(m.MANAGED_BY_LABEL) != m.MANAGER
    ]
    if not theirs:
        raise RulesError(
            "the Service has no pods to build the cluster's subset from; start them first"
        )
    common = dict(theirs[0])
    for labels in theirs[1:]:
        common = {k: v for k, v in common.items() if labels.get(k) == v}
    telling = {k: v for k, v in common.items() if k not in selector and shadow_labels.get(k) != v}
    mark_keys = [k for k in telling if k in shadow_labels]
    if mark_keys:
        return ClusterSubset({k: telling[k] for k in mark_keys}, None)
    steady = {k: v for k, v in telling.items() if k not in VOLATILE_LABELS}
    if steady:
        return ClusterSubset(steady, None)
    if telling:
        names = ", ".join(sorted(telling))
        return ClusterSubset(
            telling,
            f"the cluster's pods are told from the shadow only by {names}, which changes "
            "with each rollout: give their template a label of its own (e.g. version: stable)",
        )
    raise RulesError(
        "the cluster's pods carry no label the shadow lacks, so no subset can exclude the "
        "shadow: give their template a label (e.g. version: stable), or use "
        "--no-selector-labels"
    )


@dataclass(frozen=True)
class RulesInput:
    namespace: str
    service: str
    header: str  # lowercase header name
    value: str  # header value, as sent
    slug: str
    mark_labels: dict[str, str]  # the mark's label on the shadow
    ports: tuple[int, ...]  # exposed Service ports
    http_ports: tuple[int, ...]  # every HTTP/gRPC port of the Service
    cluster: ClusterSubset | None  # None: the shadow is no endpoint of the Service
    shadow_service: str | None  # the Service selecting only the shadow, when made


def _meta(r: RulesInput) -> JSON:
    return {
        "name": rules_name(r.service, r.slug),
        "namespace": r.namespace,
        "labels": m.service_labels(r.service, "rules"),
    }


def destination_rule(r: RulesInput) -> JSON | None:
    if r.cluster is None:
        return None
    return {
        "apiVersion": ISTIO_API,
        "kind": "DestinationRule",
        "metadata": _meta(r),
        "spec": {
            "host": r.service,
            "subsets": [
                {"name": CLUSTER_SUBSET, "labels": dict(r.cluster.labels)},
                {"name": mark_subset_name(r.slug), "labels": dict(r.mark_labels)},
            ],
        },
    }


def _destination(host: str, port: int, subset: str | None) -> JSON:
    dest: JSON = {"host": host, "port": {"number": port}}
    if subset:
        dest["subset"] = subset
    return dest


def virtual_service(r: RulesInput) -> JSON:
    """Per exposed HTTP port: marked requests to the shadow; per HTTP port: every other
    request to the cluster's pods (a route's order is its priority)."""
    header = {r.header: {"exact": r.value}}
    routes: list[JSON] = []
    for port in r.ports:
        if port not in r.http_ports:
            continue
        if r.shadow_service is not None:
            dest = _destination(r.shadow_service, port, None)
        else:
            dest = _destination(r.service, port, mark_subset_name(r.slug))
        routes.append(
            {
                "name": f"mark-{port}",
                "match": [{"headers": header, "port": port}],
                "route": [{"destination": dest}],
            }
        )
    default = CLUSTER_SUBSET if r.cluster is not None else None
    for port in r.http_ports:
        routes.append(
            {
                "name": f"default-{port}",
                "match": [{"port": port}],
                "route": [{"destination": _destination(r.service, port, default)}],
            }
        )
    return {
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": _meta(r),
        "spec": {"hosts": [r.service], "http": routes},
    }


def http_routes(r: RulesInput) -> list[JSON]:
    """Gateway API (GAMMA), one HTTPRoute per exposed HTTP port with the Service as
    parent: marked requests to the shadow Service, every other one to the Service itself."""
    if r.shadow_service is None:
        return []
    routes = []
    for port in (p for p in r.ports if p in r.http_ports):
        meta = {**_meta(r), "name": m.bounded_name(r.service, "localmesh", r.slug, str(port))}
        marked = [{"type": "Exact", "name": r.header, "value": r.value}]
        routes.append(
            {
                "apiVersion": GATEWAY_API,
                "kind": "HTTPRoute",
                "metadata": meta,
                "spec": {
                    "parentRefs": [
                        {"group": "", "kind": "Service", "name": r.service, "port": port}
                    ],
                    "rules": [
                        {
                            "matches": [{"headers": marked}],
                            "backendRefs": [{"name": r.shadow_service, "port": port}],
                        },
                        {"backendRefs": [{"name": r.service, "port": port}]},
                    ],
                },
            }
        )
    return routes


def istio_rules(r: RulesInput) -> list[JSON]:
    return [obj for obj in (destination_rule(r), virtual_service(r)) if obj is not None]
