"""The desired state of the mesh: what Envoy should serve right now.

The reconciler computes a `MeshSpec` from the config and the live forwarders; the xDS layer
turns it into resources. It is plain data (frozen, hashable) so that equal inputs give equal
snapshots and versions can be derived from content.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Protocol(enum.Enum):
    """Upstream protocol of a service: `type` in services.yaml."""

    HTTP = "http"  # HTTP/1.1 to the upstream
    GRPC = "grpc"  # HTTP/2 cleartext (h2c) to the upstream


@dataclass(frozen=True, order=True)
class Endpoint:
    """One live forwarder: a local address that reaches one pod's port."""

    address: str
    port: int
    pod: str = ""  # informational (status, logs); not part of routing


@dataclass(frozen=True)
class ClusterSpec:
    """One Kubernetes service port as an Envoy cluster (EDS)."""

    name: str
    protocol: Protocol
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class VirtualHostSpec:
    """One services.yaml host routed to one cluster."""

    host: str
    cluster: str
    protocol: Protocol


@dataclass(frozen=True)
class MeshSpec:
    listener_address: str
    listener_port: int
    clusters: tuple[ClusterSpec, ...] = ()
    virtual_hosts: tuple[VirtualHostSpec, ...] = ()


def cluster_name(namespace: str, service: str, port: int | str, protocol: Protocol) -> str:
    """The Envoy cluster name of a service port: stable and readable in Envoy's stats."""
    return f"{protocol.value}.{namespace}.{service}.{port}"
