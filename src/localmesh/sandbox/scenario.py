"""Scenario files: the namespaces, workloads and services a sandbox starts with.

namespaces: [users, billing]
deployments:
  - name: billing-api            # pods billing-api-<hash>-<suffix>
    namespace: billing
    workload: http-echo          # http-echo | grpc-greeter | tcp-echo | tcp-banner | frontend
    replicas: 2                  # default 1
    labels: {app: billing-api}   # default {app: <name>}
    ports:                       # default: the workload's port (8080, 50051, 9000)
      - {name: http, containerPort: 8080}
    readyDelay: 0.5              # seconds from start to Ready (default: the cluster's)
  - name: frontend               # a frontend calls its downstream for every request
    namespace: users
    workload: frontend
    downstream: http://billing-api.billing:8080   # required for a frontend
    propagateHeaders: [version, baggage, traceparent, x-request-id]   # the default
    downstreamKeepAlive: false   # true: pool downstream connections (default: one per call)
services:
  - name: billing-api
    namespace: billing
    selector: {app: billing-api} # omit for a selectorless service
    clusterIP: None              # headless (optional)
    ports:
      - {name: http, port: 8080, targetPort: http}   # targetPort: number or port name
    endpoints:                   # selectorless services: the manual Endpoints subsets
      - addresses: [127.0.0.1]
        ports: [{name: http, port: 8080}]
objects: []                      # any further Kubernetes manifests, created as given
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from localmesh.errors import ConfigError
from localmesh.sandbox.kubelet import READY_DELAY_ANNOTATION
from localmesh.sandbox.workloads import (
    DEFAULT_PROPAGATED,
    DOWNSTREAM_ENV,
    KEEPALIVE_ENV,
    PROPAGATE_ENV,
    WORKLOADS,
    check_downstream,
    default_port,
    image_for,
)

DEFAULT_SCENARIO = "default_scenario.yaml"


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str = ""


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    workload: str
    replicas: int = 1
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    ready_delay: float | None = None
    # frontend workloads: where each request goes on to, and which headers go with it
    downstream: str | None = None
    propagate_headers: tuple[str, ...] = DEFAULT_PROPAGATED
    downstream_keepalive: bool = False
    # Container and pod spec keys given as is (image, command, args, env, probes;
    # serviceAccountName): a localmesh image runs its command as a process.
    container: tuple[tuple[str, Any], ...] = ()
    pod: tuple[tuple[str, Any], ...] = ()


# Scenario keys copied into the container / pod spec, with the type each must have.
CONTAINER_KEYS: dict[str, type] = {
    "image": str,
    "command": list,
    "args": list,
    "env": list,
    "startupProbe": dict,
    "readinessProbe": dict,
    "livenessProbe": dict,
}
POD_KEYS: dict[str, type] = {"serviceAccountName": str}


@dataclass(frozen=True)
class ServicePort:
    port: int
    name: str = ""
    target_port: int | str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...] = ()
    headless: bool = False
    endpoints: tuple[dict[str, Any], ...] = ()  # manual Endpoints subsets (selectorless)


@dataclass(frozen=True)
class Scenario:
    namespaces: tuple[str, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    services: tuple[Service, ...] = ()
    objects: tuple[dict[str, Any], ...] = field(default=())

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<scenario>") -> Scenario:
        problems: list[str] = []

        def want(cond: bool, where: str, msg: str) -> bool:
            if not cond:
                problems.append(f"{source}: {where}: {msg}")
            return cond

        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a scenario must be a mapping")
        unknown = set(data) - {"namespaces", "deployments", "services", "objects"}
        want(not unknown, "top level", f"unknown keys {sorted(unknown)}")
        namespaces = data.get("namespaces") or []
        want(
            isinstance(namespaces, list) and all(isinstance(n, str) for n in namespaces),
            "namespaces",
            "must be a list of names",
        )
        deployments = []
        for i, d in enumerate(data.get("deployments") or []):
            where = f"deployments[{i}]"
            if not want(isinstance(d, dict) and "name" in d, where, "needs a name"):
                continue
            workload = d.get("workload", "http-echo")
            want(
                workload in WORKLOADS,
                f"{where}.workload",
                f"{workload!r} is not one of {', '.join(WORKLOADS)}",
            )
            labels = d.get("labels") or {"app": d["name"]}
            ports = []
            for j, p in enumerate(d.get("ports") or []):
                if isinstance(p, int):
                    ports.append(ContainerPort(p))
                elif want(
                    isinstance(p, dict) and isinstance(p.get("containerPort"), int),
                    f"{where}.ports[{j}]",
                    "needs containerPort (a number)",
                ):
                    ports.append(ContainerPort(p["containerPort"], str(p.get("name", ""))))
            if not ports and workload in WORKLOADS and "image" not in d:
                ports.append(ContainerPort(default_port(workload)))
            replicas = d.get("replicas", 1)
            want(
                isinstance(replicas, int) and replicas >= 0,
                f"{where}.replicas",
                "must be a number >= 0",
            )
            delay = d.get("readyDelay")
            want(
                delay is None or isinstance(delay, int | float),
                f"{where}.readyDelay",
                "must be a number of seconds",
            )
            downstream = d.get("downstream")
            if workload == "frontend":
                problem = (
                    check_downstream(downstream)
                    if isinstance(downstream, str)
                    else "a frontend needs its downstream URL"
                )
                want(problem is None, f"{where}.downstream", str(problem))
            else:
                want(
                    downstream is None and "propagateHeaders" not in d,
                    where,
                    "downstream and propagateHeaders are for frontend workloads",
                )
            propagate = d.get("propagateHeaders", list(DEFAULT_PROPAGATED))
            want(
                isinstance(propagate, list)
                and all(isinstance(h, str) and h.strip() and "," not in h for h in propagate),
                f"{where}.propagateHeaders",
                "must be a list of header names",
            )
            keepalive = d.get("downstreamKeepAlive", False)
            want(
                isinstance(keepalive, bool), f"{where}.downstreamKeepAlive", "must be true or false"
            )
            deployments.append(
                Deployment(
                    name=str(d["name"]),
                    namespace=str(d.get("namespace", "default")),
                    workload=workload,
                    replicas=replicas if isinstance(replicas, int) else 1,
                    labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                    ports=tuple(ports),
                    ready_delay=float(delay) if isinstance(delay, int | float) else None,
                    downstream=downstream if isinstance(downstream, str) else None,
                    propagate_headers=tuple(
                        h.strip().lower() for h in propagate if isinstance(h, str)
                    )
                    if isinstance(propagate, list)
                    else DEFAULT_PROPAGATED,
                    downstream_keepalive=keepalive is True,
                    container=_spec_keys(d, CONTAINER_KEYS, where, want),
                    pod=_spec_keys(d, POD_KEYS, where, want),
                )
            )
        services = []
        for i, s in enumerate(data.get("services") or []):
            where = f"services[{i}]"
            if not want(isinstance(s, dict) and "name" in s, where, "needs a name"):
                continue
            sports: list[ServicePort] = []
            for j, p in enumerate(s.get("ports") or []):
                if isinstance(p, int):
                    sports.append(ServicePort(p))
                elif want(
                    isinstance(p, dict) and isinstance(p.get("port"), int),
                    f"{where}.ports[{j}]",
                    "needs port (a number)",
                ):
                    sports.append(
                        ServicePort(
                            p["port"],
                            str(p.get("name", "")),
                            p.get("targetPort"),
                            str(p.get("protocol", "TCP")),
                        )
                    )
            headless = str(s.get("clusterIP", "")) == "None"
            want(bool(sports) or headless, f"{where}.ports", "a service needs ports")
            selector = s.get("selector") or {}
            endpoints = s.get("endpoints") or []
            want(
                not (selector and endpoints),
                where,
                "endpoints are only for services without a selector",
            )
            services.append(
                Service(
                    name=str(s["name"]),
                    namespace=str(s.get("namespace", "default")),
                    ports=tuple(sports),
                    selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())),
                    headless=headless,
                    endpoints=tuple(endpoints),
                )
            )
        objects = data.get("objects") or []
        want(
            isinstance(objects, list) and all(isinstance(o, dict) and "kind" in o for o in objects),
            "objects",
            "must be a list of Kubernetes manifests",
        )
        if problems:
            raise ConfigError("invalid scenario:\n  " + "\n  ".join(problems))
        return cls(
            namespaces=tuple(namespaces),
            deployments=tuple(deployments),
            services=tuple(services),
            objects=tuple(objects),
        )

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read scenario {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def default(cls) -> Scenario:
        """The seed's example: users-api (gRPC), billing-api and admin-web (HTTP), and a
        frontend in `users` that calls billing-api."""
        text = importlib_resources.files("localmesh.sandbox").joinpath(DEFAULT_SCENARIO)
        return cls.from_dict(yaml.safe_load(text.read_text()), DEFAULT_SCENARIO)

    # ---- to Kubernetes objects -----------------------------------------------------------
    def manifests(self) -> list[dict[str, Any]]:
        """Every object of the scenario, in creation order (namespaces first)."""
        out: list[dict[str, Any]] = []
        namespaces = list(
            dict.fromkeys(
                [
                    *self.namespaces,
                    *(d.namespace for d in self.deployments),
                    *(s.namespace for s in self.services),
                ]
            )
        )
        for ns in namespaces:
            out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for d in self.deployments:
            out.append(deployment_manifest(d))
        for s in self.services:
            out.extend(service_manifests(s))
        out.extend(copy.deepcopy(o) for o in self.objects)
        return out


def _spec_keys(
    d: dict[str, Any], keys: dict[str, type], where: str, want: Any
) -> tuple[tuple[str, Any], ...]:
    out = []
    for key, kind in keys.items():
        if key in d and want(
            isinstance(d[key], kind), f"{where}.{key}", f"must be a {kind.__name__}"
        ):
            out.append((key, copy.deepcopy(d[key])))
    return tuple(out)


def deployment_manifest(d: Deployment) -> dict[str, Any]:
    labels = dict(d.labels)
    pod_meta: dict[str, Any] = {"labels": labels}
    if d.ready_delay is not None:
        pod_meta["annotations"] = {READY_DELAY_ANNOTATION: str(d.ready_delay)}
    container: dict[str, Any] = {"name": d.workload, "image": image_for(d.workload)}
    if dict(d.container).get("image"):
        container["name"] = d.name
    container.update(copy.deepcopy(dict(d.container)))
    container["ports"] = [
        {
            "containerPort": p.container_port,
            **({"name": p.name} if p.name else {}),
            "protocol": "TCP",
        }
        for p in d.ports
    ]
    if d.workload == "frontend" and d.downstream:
        container["env"] = [  # after any env the scenario gives
            *container.get("env", []),
            {"name": DOWNSTREAM_ENV, "value": d.downstream},
            {"name": PROPAGATE_ENV, "value": ",".join(d.propagate_headers)},
            {"name": KEEPALIVE_ENV, "value": "true" if d.downstream_keepalive else "false"},
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": d.name, "namespace": d.namespace, "labels": labels},
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": pod_meta,
                "spec": {**copy.deepcopy(dict(d.pod)), "containers": [container]},
            },
        },
    }


def service_manifests(s: Service) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {
        "ports": [
            {
                **({"name": p.name} if p.name else {}),
                "port": p.port,
                "targetPort": p.target_port if p.target_port is not None else p.port,
                "protocol": p.protocol,
            }
            for p in s.ports
        ]
    }
    if s.selector:
        spec["selector"] = dict(s.selector)
    if s.headless:
        spec["clusterIP"] = "None"
    out: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": spec,
        }
    ]
    if s.endpoints:
        subsets = []
        for e in s.endpoints:
            subsets.append(
                {
                    "addresses": [{"ip": ip} for ip in e.get("addresses", [])],
                    "ports": [{"protocol": "TCP", **p} for p in e.get("ports", [])],
                }
            )
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "subsets": subsets,
            }
        )
    return out


def scale_scenario(
    services: int,
    *,
    namespaces: int = 1,
    workload: str = "http-echo",
    replicas: int = 1,
    prefix: str = "svc",
) -> Scenario:
    """`services` deployments and services spread over `namespaces` namespaces
    (scale-0 ... scale-N), named svc-0000 ..., for the scale benchmarks."""
    port = default_port(workload)
    port_name = "grpc" if workload == "grpc-greeter" else "http"
    ns_names = tuple(f"scale-{i}" for i in range(namespaces))
    deployments, svcs = [], []
    for i in range(services):
        name = f"{prefix}-{i:04d}"
        ns = ns_names[i % namespaces]
        deployments.append(
            Deployment(
                name, ns, workload, replicas, (("app", name),), (ContainerPort(port, port_name),)
            )
        )
        svcs.append(Service(name, ns, (ServicePort(port, port_name, port_name),), (("app", name),)))
    return Scenario(ns_names, tuple(deployments), tuple(svcs))
