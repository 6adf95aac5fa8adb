"""Cluster DNS for the sandbox's own workloads: service names to cluster IPs.

A pod in namespace `users` resolves `billing-api.billing`, `billing-api.billing.svc` and
`billing-api.billing.svc.cluster.local` (and a bare `frontend` in its own namespace, as the
resolv.conf search path makes it) to the Service's cluster IP; a headless Service's name
resolves to its ready endpoints' IPs and an ExternalName's to what its target resolves to,
as CoreDNS answers. Workloads use `ClusterResolver` (an aiohttp resolver); tests use
`ClusterDNS.service_ip`.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from localmesh.sandbox.controllers import SERVICE_NAME_LABEL
from localmesh.sandbox.ips import dial
from localmesh.sandbox.resources import ENDPOINTSLICES, SERVICES
from localmesh.sandbox.store import Store

CLUSTER_DOMAIN = "cluster.local"
_MAX_CNAME_DEPTH = 8


class ClusterDNS:
    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def split(host: str, namespace: str | None = None) -> tuple[str, str] | None:
        """(service, namespace) a host name stands for, or None if it is no service name."""
        name = host.rstrip(".").lower()
        for suffix in (f".svc.{CLUSTER_DOMAIN}", ".svc"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        parts = name.split(".")
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
        if len(parts) == 1 and parts[0] and namespace:
            return parts[0], namespace
        return None

    def lookup(self, host: str, namespace: str | None = None) -> list[str] | None:
        """The A records of a cluster name, None when it names no Service (NXDOMAIN).
        A headless service without ready endpoints has none (an empty list)."""
        for _ in range(_MAX_CNAME_DEPTH):
            key = self.split(host, namespace)
            if key is None:
                return None
            svc = self._store.peek(SERVICES, key[1], key[0])
            if svc is None:
                return None
            spec = svc.get("spec", {})
            if spec.get("type") == "ExternalName":
                host, namespace = str(spec.get("externalName", "")), None
                if self.split(host) is None:
                    return None  # outside the cluster: not the sandbox's to answer
                continue
            ip = spec.get("clusterIP")
            if ip and ip != "None":
                return [str(ip)]
            return self._ready_ips(key[1], key[0])
        return None

    def _ready_ips(self, namespace: str, service: str) -> list[str]:
        ips: set[str] = set()
        for s in self._store.select(ENDPOINTSLICES, namespace, {SERVICE_NAME_LABEL: service}):
            for e in s.get("endpoints") or []:
                if (e.get("conditions") or {}).get("ready") is not False:
                    ips.update(e.get("addresses") or [])
        return sorted(ips)

    def service_ip(self, host: str, namespace: str | None = None) -> str:
        """The cluster IP a service name resolves to (LookupError if none)."""
        ips = self.lookup(host, namespace)
        if not ips:
            raise LookupError(f"{host}: no such service in the sandbox")
        return ips[0]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClusterResolver(AbstractResolver):
    """aiohttp resolver of a pod in `namespace`: cluster names from `ClusterDNS`, plus
    `localhost` and loopback literals. Nothing else resolves: the sandbox's workloads never
    reach beyond this machine, nor ask the system's DNS."""

    def __init__(self, dns: ClusterDNS | None, namespace: str) -> None:
        self._dns = dns
        self._namespace = namespace

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ips = self._dns.lookup(host, self._namespace) if self._dns is not None else None
        if ips is None:
            if host.rstrip(".").lower() == "localhost":
                ips = ["127.0.0.1"]
            elif _is_loopback(host):
                ips = [host]
            else:
                raise socket.gaierror(socket.EAI_NONAME, f"{host}: no such service in the sandbox")
        if not ips:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: the service has no ready endpoints")
        # A shared sandbox's pods and cluster IPs listen elsewhere on 127.0.0.1 (ips.py).
        found = [dial(ip, port) for ip in ips]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=at,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address, at in found
        ]

    async def close(self) -> None:
        return None
