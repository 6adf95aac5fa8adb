"""Pure builders of every object `localmesh mesh` creates in a cluster.

Everything lives in the meshed Service's namespace and carries two labels, so a later
`mesh clean` finds it without any local state:

    app.kubernetes.io/managed-by: localmesh
    localmesh.dev/service: <service>

Per Service (shared by every developer meshing it):
    <svc>-localmesh-origin   Service with the ORIGINAL selector and ports; the router reaches
                             the cluster's pods through its EndpointSlices
    <svc>-localmesh-router   Deployment (1 replica) + ServiceAccount + Role + RoleBinding
Per developer session:
    <svc>-localmesh-<mark>-<id>   Lease (liveness and the mark), shadow pod and Secret

Ownership (ownerReferences) lets the cluster's garbage collector finish every removal: the
router's Deployment and RBAC are owned by the origin Service, a session's shadow pod and
Secret by its Lease. Deleting the origin Service removes the router and its rights (so the
router can remove itself without deleting the objects that grant it the right to);
deleting a dead session's Lease removes the rest of that session. The collector works
asynchronously (seconds later): a joiner replaces what a deleted owner left instead of
relying on it (`membership.ensure`), and the router's pods carry their origin Service's uid
(`ORIGIN_UID_LABEL`) so the meshed Service never selects a collected router's pod.

Objects are plain JSON dicts, exactly what is sent to the API server (no model classes: a
round trip through them would drop fields a newer server knows).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from localmesh import __version__
from localmesh.clustermesh.tunnel_wire import DEFAULT_TUNNEL_PORT, SECRET_ENV
from localmesh.kube.targets import JSON, PortNotFound, container_port, describe_port

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "localmesh"
COMPONENT_LABEL = "app.kubernetes.io/component"
SERVICE_LABEL = "localmesh.dev/service"
SESSION_LABEL = "localmesh.dev/session"
# On the router's pods, and in the meshed Service's selector while it is meshed: the uid of
# the origin Service that owns the router. The objects of a router whose origin Service was
# deleted outlive it until the garbage collector gets to them (seconds, on a real cluster);
# a router made again under the same names never counts that one's pods as its own.
ORIGIN_UID_LABEL = "localmesh.dev/origin-uid"

# On the meshed Service: what was there before, and who is meshing it.
ORIGINAL_SELECTOR_ANNOTATION = "localmesh.dev/original-selector"
SESSIONS_ANNOTATION = "localmesh.dev/sessions"
MODE_ANNOTATION = "localmesh.dev/mode"
SERVICE_ANNOTATIONS = (ORIGINAL_SELECTOR_ANNOTATION, SESSIONS_ANNOTATION, MODE_ANNOTATION)

# On a session's Lease: what the router needs to route the session's mark.
HEADER_ANNOTATION = "localmesh.dev/header"
VALUE_ANNOTATION = "localmesh.dev/value"
SHADOW_ANNOTATION = "localmesh.dev/shadow-pod"
PORTS_ANNOTATION = "localmesh.dev/ports"  # local:remote:targetPort, comma-separated

# On shared objects: bumped by each joiner, so a leaver's delete (preconditioned on the
# resourceVersion it saw before restoring the Service) cannot remove what a joiner reuses.
CLAIM_ANNOTATION = "localmesh.dev/claimed-by"

DEFAULT_ROUTER_IMAGE = f"localmesh/localmesh:{__version__}"
LEASE_DURATION_SECONDS = 10
RENEW_INTERVAL_SECONDS = 3.0
ROUTER_HEALTH_PORT = 15021  # the router agent's readiness endpoint (GET /ready)
SECRET_KEY = "secret"
MAX_NAME = 63  # DNS-1035 label: the tightest rule among the names built here (Services)


# -- names -------------------------------------------------------------------------------
def bounded_name(*parts: str, limit: int = MAX_NAME) -> str:
    """`parts` joined by '-', shortened with a hash of the whole when longer than `limit`
    (two long Service names must not collide once cut)."""
    full = "-".join(p for p in parts if p)
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: limit - len(digest) - 1].rstrip('-')}-{digest}"


def origin_name(service: str) -> str:
    return bounded_name(service, "localmesh-origin")


def router_name(service: str) -> str:
    return bounded_name(service, "localmesh-router")


def session_name(service: str, mark_slug: str, session_id: str) -> str:
    """The Lease, shadow pod and tunnel Secret of one developer session."""
    return bounded_name(service, "localmesh", mark_slug, session_id)


def service_labels(service: str, component: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGER, SERVICE_LABEL: service, COMPONENT_LABEL: component}


def router_selector(service: str) -> dict[str, str]:
    """The labels of every router pod of `service` (the Deployment's selector)."""
    return service_labels(service, "router")


def routed_selector(service: str, origin_uid: str | None) -> dict[str, str]:
    """The meshed Service's selector: the pods of the router owned by the origin Service
    of uid `origin_uid` (None: any router pod of `service`)."""
    labels = router_selector(service)
    return {**labels, ORIGIN_UID_LABEL: origin_uid} if origin_uid else labels


def router_pod_labels(deployment: JSON, service: str) -> dict[str, str]:
    """What selects the pods of this router `deployment` (as stored) and no other router's:
    `routed_selector` with the origin uid its template carries."""
    template = deployment.get("spec", {}).get("template", {}).get("metadata", {})
    uid = (template.get("labels") or {}).get(ORIGIN_UID_LABEL)
    return routed_selector(service, str(uid) if uid else None)


def owner_uids(obj: JSON) -> set[str]:
    """The uids of `obj`'s owners."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return {str(r.get("uid")) for r in refs if isinstance(r, dict) and r.get("uid")}


def label_selector(labels: Mapping[str, str]) -> str:
    """`labels` as a label selector for a list call: `k=v,k2=v2`."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


def managed_selector(service: str | None = None) -> str:
    """A label selector matching what localmesh created (for one Service or all)."""
    base = f"{MANAGED_BY_LABEL}={MANAGER}"
    return f"{base},{SERVICE_LABEL}={service}" if service else base


def _meta(name: str, namespace: str, labels: Mapping[str, str], **extra: Any) -> JSON:
    return {"name": name, "namespace": namespace, "labels": dict(labels), **extra}


def owner_reference(owner: JSON) -> JSON:
    """A reference to `owner` (as the API server returned it: with its uid) for the
    garbage collector; no blockOwnerDeletion, which would need rights on the owner."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
    }


def owned_by(obj: JSON, owner: JSON | None) -> JSON:
    """`obj` (changed in place) owned by `owner` only; unchanged when `owner` is None."""
    if owner is not None:
        obj["metadata"]["ownerReferences"] = [owner_reference(owner)]
    return obj


# -- ports -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterPort:
    """A container port of the router: a Service targetPort, named or numeric."""

    number: int
    name: str | None  # the targetPort's name when the Service names it


@dataclass(frozen=True)
class PortMap:
    """One exposed port: the developer's `local` port serves Service port `remote`, whose
    traffic reaches the router (and the shadow) on `target`."""

    local: int
    remote: int
    target: int

    def __str__(self) -> str:
        return f"{self.local}:{self.remote}:{self.target}"


class PortError(Exception):
    """A port cannot be meshed; the message says why."""


def _resolve_target(service: JSON, spec: Mapping[str, Any], pods: Sequence[JSON]) -> RouterPort:
    number = int(spec["port"])
    target = spec.get("targetPort", number)
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return RouterPort(int(target), None)
    for pod in pods:
        found = container_port(pod, str(target))
        if found is not None:
            return RouterPort(found, str(target))
    name = service.get("metadata", {}).get("name", "")
    raise PortError(
        f"service {name} port {describe_port(spec)}: no pod of the service has a container "
        f"port named {target!r}, so its number is unknown"
    )


def router_ports(service: JSON, pods: Sequence[JSON]) -> list[RouterPort]:
    """The router's container ports: every targetPort of the Service, resolved with the
    service's `pods` where named, so the Service's targetPorts land on the router unchanged."""
    seen: dict[int, RouterPort] = {}
    for spec in service.get("spec", {}).get("ports") or []:
        if (spec.get("protocol") or "TCP") != "TCP":
            name = service.get("metadata", {}).get("name", "")
            raise PortError(
                f"service {name} port {describe_port(spec)} is {spec['protocol']}: "
                "the router serves TCP (HTTP and gRPC) only"
            )
        port = _resolve_target(service, spec, pods)
        previous = seen.get(port.number)
        if previous is None or (previous.name is None and port.name is not None):
            seen[port.number] = port
    return sorted(seen.values(), key=lambda p: p.number)


def port_maps(
    service: JSON, exposed: Iterable[tuple[int, int]], pods: Sequence[JSON]
) -> list[PortMap]:
    """`exposed` (local, remote) pairs checked against the Service's ports; `remote` is a
    Service `port` (PortNotFound lists the ones it has)."""
    ports: list[JSON] = list(service.get("spec", {}).get("ports") or [])
    result = []
    for local, remote in exposed:
        spec = next((p for p in ports if p.get("port") == remote), None)
        if spec is None:
            raise PortNotFound(remote, [describe_port(p) for p in ports])
        result.append(PortMap(local, remote, _resolve_target(service, spec, pods).number))
    return result


def format_port_maps(maps: Iterable[PortMap]) -> str:
    return ",".join(str(m) for m in maps)


def parse_port_maps(text: str) -> list[PortMap]:
    """The inverse of `format_port_maps` (a Lease's ports annotation)."""
    maps = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        local, remote, target = (int(x) for x in item.split(":"))
        maps.append(PortMap(local, remote, target))
    return maps


@dataclass(frozen=True)
class LeaseMark:
    """The mark a session Lease records, as the router and other sessions read it."""

    header: str  # lower case
    value: str
    targets: frozenset[int] | None  # the pod ports it takes; None: unreadable annotation


def lease_mark(lease: JSON) -> LeaseMark | None:
    """The Lease's mark; None for a Lease without a header or value (not a session)."""
    notes = (lease.get("metadata") or {}).get("annotations") or {}
    header = (notes.get(HEADER_ANNOTATION) or "").strip().lower()
    value = notes.get(VALUE_ANNOTATION)
    if not header or value is None:
        return None
    try:
        targets = frozenset(p.target for p in parse_port_maps(notes.get(PORTS_ANNOTATION) or ""))
    except ValueError:
        return LeaseMark(header, str(value), None)
    return LeaseMark(header, str(value), targets)


# -- per Service -------------------------------------------------------------------------
def origin_service(service: JSON) -> JSON:
    """A ClusterIP Service with the meshed Service's ORIGINAL selector and ports."""
    meta = service["metadata"]
    name, namespace = str(meta["name"]), str(meta["namespace"])
    spec = service.get("spec", {})
    selector = original_selector(service)
    if selector is None:
        selector = dict(spec.get("selector") or {})
    ports = [
        {k: v for k, v in p.items() if k in ("name", "port", "targetPort", "protocol")}
        for p in spec.get("ports") or []
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(origin_name(name), namespace, service_labels(name, "origin")),
        "spec": {"selector": selector, "ports": ports, "type": "ClusterIP"},
    }


def original_selector(service: JSON) -> dict[str, str] | None:
    """The selector recorded on a meshed Service (None when it is not meshed)."""
    raw = (service.get("metadata", {}).get("annotations") or {}).get(ORIGINAL_SELECTOR_ANNOTATION)
    if raw is None:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{ORIGINAL_SELECTOR_ANNOTATION} is not a JSON object: {raw!r}")
    return {str(k): str(v) for k, v in value.items()}


def router_command(
    namespace: str, service: str, health_port: int, idle_timeout: float | None = None
) -> list[str]:
    idle = ["--idle-timeout", f"{idle_timeout:g}"] if idle_timeout is not None else []
    return [
        "localmesh",
        "agent",
        "router",
        "--namespace",
        namespace,
        "--service",
        service,
        "--health-port",
        str(health_port),
        *idle,
    ]


def health_port(ports: Sequence[RouterPort]) -> int:
    """ROUTER_HEALTH_PORT, or the next number no Service targetPort uses."""
    taken = {p.number for p in ports}
    number = ROUTER_HEALTH_PORT
    while number in taken:
        number += 1
    return number


def _pod_security(listen_ports: Iterable[int]) -> JSON:
    security: JSON = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if any(port < 1024 for port in listen_ports):
        # The image runs as a user; a safe sysctl lets it bind the Service's low targetPorts.
        security["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    return security


POD_IP_ENV: JSON = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def router_deployment(
    namespace: str,
    service: str,
    image: str,
    ports: Sequence[RouterPort],
    *,
    idle_timeout: float | None = None,
    origin_uid: str | None = None,
) -> JSON:
    """One router pod: the localmesh image running `agent router` (Envoy + its xDS agent),
    listening on the Service's targetPorts, Ready once it serves the default route;
    `idle_timeout`: the agent's --idle-timeout (None: its default); `origin_uid`: the
    origin Service owning it, a label of its pods (`routed_selector`)."""
    labels = router_selector(service)
    pod_labels = routed_selector(service, origin_uid)
    health = health_port(ports)
    container_ports: list[JSON] = []
    for port in ports:
        entry: JSON = {"containerPort": port.number, "protocol": "TCP"}
        if port.name:
            entry = {"name": port.name, **entry}
        container_ports.append(entry)
    container_ports.append({"name": "lm-health", "containerPort": health, "protocol": "TCP"})
    pod_security = _pod_security(p.number for p in ports)
    container: JSON = {
        "name": "router",
        "image": image,
        "command": router_command(namespace, service, health, idle_timeout),
        "env": [POD_IP_ENV],
        "ports": container_ports,
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": health},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "96Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(router_name(service), namespace, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": router_name(service),
                    "securityContext": pod_security,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def router_rbac(namespace: str, service: str, sessions: Sequence[str] = ()) -> list[JSON]:
    """ServiceAccount, Role and RoleBinding of the router: read what it routes; restore the
    Service and delete the origin Service (whose garbage is the router and these three)
    once no session is left; delete the Leases of `sessions` once dead (their shadow pod and
    Secret follow). Kubernetes cannot scope a right by label, so the Lease right names the
    sessions: each joiner adds its own (`with_session_leases`)."""
    name = router_name(service)
    labels = service_labels(service, "router")
    rules: list[JSON] = [
        {
            "apiGroups": [""],
            "resources": ["services"],
            "resourceNames": [service, origin_name(service)],
            "verbs": ["get", "list", "watch", "update", "patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["services"],
            "resourceNames": [origin_name(service)],
            "verbs": ["delete"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [name],
            "verbs": ["get"],
        },
    ]
    if sessions:  # never an empty resourceNames: that would grant every Lease
        rules.append(
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": sorted(set(sessions)),
                "verbs": ["delete"],
            }
        )
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(name, namespace, labels),
            # The router reads its credentials from its token; the shadow needs none.
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(name, namespace, labels),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, namespace, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def _is_lease_delete(rule: JSON) -> bool:
    return rule.get("resources") == ["leases"] and rule.get("verbs") == ["delete"]


def role_sessions(role: JSON) -> list[str]:
    """The sessions whose Leases the router's Role lets it delete."""
    return [n for r in role.get("rules") or [] if _is_lease_delete(r) for n in r["resourceNames"]]


def with_session_leases(role: JSON, wanted: JSON, leases: Collection[str]) -> JSON:
    """The router's Role `wanted`, with the Lease names of the one in the cluster kept
    while their Lease exists (`leases`, listed after `role` was read): a concurrent
    joiner's name is never lost, and ended sessions' names do not pile up."""
    names = {*(n for n in role_sessions(role) if n in leases), *role_sessions(wanted)}
    rules = [r for r in wanted.get("rules") or [] if not _is_lease_delete(r)]
    merged = next((r for r in wanted.get("rules") or [] if _is_lease_delete(r)), None)
    if merged is not None:
        rules.append({**merged, "resourceNames": sorted(names)})
    return {**role, "rules": rules}


# -- per session -------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionSpec:
    """One developer's mesh of one Service."""

    namespace: str
    service: str
    session_id: str  # short and random: several sessions may use the same mark
    header: str
    value: str
    slug: str  # the value as a DNS label (marks.slug_of)
    holder: str  # user@host
    ports: tuple[PortMap, ...]
    image: str = DEFAULT_ROUTER_IMAGE
    mode: str = "auto"

    @property
    def name(self) -> str:
        """The Lease's and the shadow pod's name."""
        return session_name(self.service, self.slug, self.session_id)


def micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def session_lease(
    spec: SessionSpec, now: datetime | None = None, duration: int = LEASE_DURATION_SECONDS
) -> JSON:
    stamp = micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _meta(
            spec.name,
            spec.namespace,
            service_labels(spec.service, "session"),
            annotations={
                HEADER_ANNOTATION: spec.header,
                VALUE_ANNOTATION: spec.value,
                SHADOW_ANNOTATION: spec.name,
                PORTS_ANNOTATION: format_port_maps(spec.ports),
                MODE_ANNOTATION: spec.mode,
            },
        ),
        "spec": {
            "holderIdentity": spec.holder,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
        },
    }


def tunnel_secret(spec: SessionSpec, secret: bytes, lease: JSON | None = None) -> JSON:
    """The session's tunnel secret, handed to the shadow agent through its environment;
    owned by the session's `lease` (as created)."""
    labels = {**service_labels(spec.service, "shadow"), SESSION_LABEL: spec.name}
    return owned_by(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(spec.name, spec.namespace, labels),
            "type": "Opaque",
            "data": {SECRET_KEY: base64.b64encode(secret.hex().encode()).decode()},
        },
        lease,
    )


def shadow_health_port(spec: SessionSpec) -> int:
    """The shadow agent's probe port: clear of the exposed ports and the tunnel port."""
    taken = [RouterPort(m.target, None) for m in spec.ports]
    return health_port([*taken, RouterPort(DEFAULT_TUNNEL_PORT, None)])


def shadow_command(spec: SessionSpec) -> list[str]:
    targets = ",".join(str(t) for t in sorted({m.target for m in spec.ports}))
    health = str(shadow_health_port(spec))
    return ["localmesh", "agent", "shadow", "--ports", targets, "--health-port", health]


def shadow_pod(spec: SessionSpec, lease: JSON | None = None) -> JSON:
    """The developer's stand-in in the cluster: it listens on the exposed targetPorts and
    carries each connection back through the tunnel. Its labels never match the Service's
    selector, so only the router sends it traffic, and only marked requests. Owned by the
    session's `lease` (as created); it never calls the API, so it gets no token."""
    labels = {**service_labels(spec.service, "shadow"), SESSION_LABEL: spec.name}
    security = _pod_security(m.target for m in spec.ports)
    pod: JSON = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(spec.name, spec.namespace, labels),
        "spec": {
            "restartPolicy": "Always",
            "automountServiceAccountToken": False,
            "securityContext": security,
            "containers": [
                {
                    "name": "shadow",
                    "image": spec.image,
                    "command": shadow_command(spec),
                    "env": [
                        POD_IP_ENV,
                        {
                            "name": SECRET_ENV,
                            "valueFrom": {"secretKeyRef": {"name": spec.name, "key": SECRET_KEY}},
                        },
                    ],
                    "ports": [
                        *(
                            {"containerPort": target, "protocol": "TCP"}
                            for target in sorted({m.target for m in spec.ports})
                        ),
                        {"name": "lm-tunnel", "containerPort": DEFAULT_TUNNEL_PORT},
                        {"name": "lm-health", "containerPort": shadow_health_port(spec)},
                    ],
                    # Ready only while the developer's machine holds a tunnel connection:
                    # the router sends marked requests to Ready shadows only.
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": shadow_health_port(spec)},
                        "periodSeconds": 1,
                        "failureThreshold": 2,
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "48Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    return owned_by(pod, lease)
