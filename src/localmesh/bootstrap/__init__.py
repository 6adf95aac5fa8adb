"""The static Envoy bootstrap: who Envoy is, where its admin listens, where its xDS comes from.

Everything else (listeners, routes, clusters, endpoints) arrives over ADS, so this file is
written once per Envoy start and never changes with services.yaml.

    BootstrapOptions(xds_socket_path=..., node_id=..., ads_mode=AdsMode.SOTW, ...)
    build_bootstrap(options) -> dict        # JSON-able, for `envoy -c FILE`

Its parts are localmesh.xds.proto messages (no typed Envoy bindings are imported: the
router pod and `up` start without them).

Envoy's admin API can drain listeners, quit Envoy and dump every secret it holds, with no
authentication: `admin_socket_path` puts it on a unix socket of mode 0600 that only the user
can connect to, which is what `up` runs (the supervisor enforces it whatever the bootstrap
says). Without it (tools running Envoy by hand) admin listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from localmesh.runtime import ENVOY_ADMIN_SOCKET_MODE
from localmesh.xds.proto import Message, enum_type, message_type
from localmesh.xds.resources import (
    Address,
    ApiVersion,
    Cluster,
    ClusterDiscoveryType,
    ClusterLoadAssignment,
    EnvoyEndpoint,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
    LbEndpoint,
    LocalityLbEndpoints,
    Pipe,
    SocketAddress,
    ads_config_source,
    pack,
    to_json,
)

# The bootstrap's own parts; its envelope (Bootstrap, Bootstrap*Resources) is plain JSON.
Admin = message_type("envoy.config.bootstrap.v3.Admin")
Node = message_type("envoy.config.core.v3.Node")
ApiConfigSource = message_type("envoy.config.core.v3.ApiConfigSource")
GrpcService = message_type("envoy.config.core.v3.GrpcService")
GrpcServiceEnvoyGrpc = message_type("envoy.config.core.v3.GrpcServiceEnvoyGrpc")
ApiConfigSourceApiType = enum_type("envoy.config.core.v3.ApiConfigSourceApiType")

XDS_CLUSTER_NAME = "xds_cluster"
DEFAULT_NODE_ID = "localmesh"
DEFAULT_NODE_CLUSTER = "localmesh"


class AdsMode(enum.Enum):
    """How Envoy speaks ADS: state of the world or incremental (Delta)."""

    SOTW = "sotw"
    DELTA = "delta"


@dataclass(frozen=True)
class BootstrapOptions:
    """Inputs of the bootstrap. Exactly one of `xds_socket_path` and `xds_tcp` is set."""

    xds_socket_path: str | None = None  # unix socket of the ADS server (the default transport)
    xds_tcp: tuple[str, int] | None = None  # (host, port) of the ADS server, if TCP is used
    node_id: str = DEFAULT_NODE_ID
    node_cluster: str = DEFAULT_NODE_CLUSTER
    admin_socket_path: str | None = None  # admin on this unix socket, mode 0600 (preferred)
    admin_address: str = "127.0.0.1"  # else admin on TCP here (tools running Envoy by hand)
    admin_port: int = 0  # 0: ephemeral, read it back via --admin-address-path
    ads_mode: AdsMode = AdsMode.SOTW

    def __post_init__(self) -> None:
        if (self.xds_socket_path is None) == (self.xds_tcp is None):
            raise ValueError("BootstrapOptions needs exactly one of xds_socket_path and xds_tcp")


def _xds_address(options: BootstrapOptions) -> Message:
    if options.xds_socket_path is not None:
        return Address(pipe=Pipe(path=options.xds_socket_path))
    assert options.xds_tcp is not None
    host, port = options.xds_tcp
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _xds_cluster(options: BootstrapOptions) -> Message:
    # gRPC needs HTTP/2 to the control plane.
    h2 = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    return Cluster(
        name=XDS_CLUSTER_NAME,
        type=ClusterDiscoveryType.STATIC,
        connect_timeout=timedelta(seconds=1),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(h2)
        },
        load_assignment=ClusterLoadAssignment(
            cluster_name=XDS_CLUSTER_NAME,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=EnvoyEndpoint(address=_xds_address(options)))]
                )
            ],
        ),
    )


def admin_socket_address(path: str) -> Message:
    """Envoy's admin API on a unix socket only the user can connect to."""
    return Address(pipe=Pipe(path=path, mode=ENVOY_ADMIN_SOCKET_MODE))


def _admin_address(options: BootstrapOptions) -> Message:
    if options.admin_socket_path is not None:
        return admin_socket_address(options.admin_socket_path)
    return Address(
        socket_address=SocketAddress(address=options.admin_address, port_value=options.admin_port)
    )


def build_bootstrap(options: BootstrapOptions) -> dict[str, Any]:
    """The bootstrap as a JSON-able dict (proto3 JSON, snake_case), for `envoy -c`: keys in
    the order of Bootstrap's fields, as a Bootstrap message's JSON would have them."""
    api_type = (
        ApiConfigSourceApiType.DELTA_GRPC
        if options.ads_mode is AdsMode.DELTA
        else ApiConfigSourceApiType.GRPC
    )
    ads = ApiConfigSource(
        api_type=api_type,
        transport_api_version=ApiVersion.V3,
        grpc_services=[GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=XDS_CLUSTER_NAME))],
        # The server remembers the node per stream; later requests stay small.
        set_node_on_first_message_only=True,
    )
    return {
        "node": to_json(Node(id=options.node_id, cluster=options.node_cluster)),
        "static_resources": {"clusters": [to_json(_xds_cluster(options))]},
        "dynamic_resources": {
            "lds_config": to_json(ads_config_source()),
            "cds_config": to_json(ads_config_source()),
            "ads_config": to_json(ads),
        },
        "admin": to_json(Admin(address=_admin_address(options))),
    }


__all__ = [
    "XDS_CLUSTER_NAME",
    "AdsMode",
    "BootstrapOptions",
    "admin_socket_address",
    "build_bootstrap",
]
