"""Pure builders: a `MeshSpec` becomes the Envoy resources localmesh serves (no I/O).

What Envoy gets:
- ONE listener `localmesh_http` on the mesh's listener address and port. Its HTTP connection
  manager takes HTTP/1.1 and h2c on the same port (codec AUTO) and fetches its routes by RDS
  over ADS (`localmesh_routes`), so the listener never changes while services come and go
  (a listener change would drain open connections).
- ONE route configuration `localmesh_routes` with a virtual host per services.yaml host,
  matching `host` and `host:<any port>`.
- One EDS cluster per Kubernetes service port (HTTP/1.1 upstream for http, h2c for grpc)
  and one ClusterLoadAssignment per cluster, listing the live forwarders.

Public functions:
    build_listener(address, port) -> Listener
    build_cluster(spec: ClusterSpec) -> Cluster
    build_load_assignment(spec: ClusterSpec) -> ClusterLoadAssignment
    build_virtual_host(spec: VirtualHostSpec) -> VirtualHost
    build_route_configuration(virtual_hosts) -> RouteConfiguration
    build_resources(mesh) -> dict[type URL, dict[name, Message]]
    render_static_config(mesh, admin_address=..., admin_port=0) -> dict (JSON-able)
        a self-contained Envoy config (inline routes and endpoints), what
        `dump-envoy-config --format envoy` prints; runnable with `envoy -c`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    SocketAddress,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint as EnvoyEndpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    RetryPolicy,
    RetryPolicyRetryHostPredicate,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    Rds,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.google.protobuf import Any as AnyMsg
from envoy_data_plane.message_pool import default_message_pool

from localmesh.mesh import ClusterSpec, MeshSpec, Protocol, VirtualHostSpec
from localmesh.xds.codec import encode

LISTENER_NAME = "localmesh_http"
ROUTE_CONFIG_NAME = "localmesh_routes"
STAT_PREFIX = "localmesh"

_TYPE_PREFIX = "type.googleapis.com/"
CLUSTER_TYPE = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
# The order Envoy needs them in (go-control-plane's ADS order): a resource comes after the
# ones it references.
TYPE_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

# A local port-forward accepts at once or not at all: fail fast and let the retry policy
# move the request to another endpoint.
CONNECT_TIMEOUT = timedelta(seconds=1)
# What an endpoint swap looks like to a request in flight: the old forwarder refuses or
# resets. Only failures before a response started are retried, so nothing is sent twice
# to an application that already answered. gRPC `unavailable` is an application status
# and deliberately not retried (the call may not be idempotent).
RETRY_ON = "connect-failure,refused-stream,reset"
NUM_RETRIES = 3

_HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def pack(msg: betterproto2.Message) -> AnyMsg:
    """`Any.pack` through the fast encoder."""
    type_url = default_message_pool.type_to_url[type(msg)]
    return AnyMsg(type_url=type_url, value=encode(msg))


def ads_config_source() -> ConfigSource:
    # V3 is enum value 0 and would be dropped if left implicit: set it on purpose.
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def _socket_address(address: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=address, port_value=port))


def _http_connection_manager(route: Rds | RouteConfiguration) -> HttpConnectionManager:
    routing: dict[str, Any] = {"rds": route} if isinstance(route, Rds) else {"route_config": route}
    return HttpConnectionManager(
        stat_prefix=STAT_PREFIX,
        # AUTO sniffs the HTTP/2 connection preface: HTTP/1.1 and h2c share the port.
        codec_type=HttpConnectionManagerCodecType.AUTO,
        http2_protocol_options=Http2ProtocolOptions(),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
        **routing,
    )


def _listener(address: str, port: int, hcm: HttpConnectionManager) -> Listener:
    return Listener(
        name=LISTENER_NAME,
        address=_socket_address(address, port),
        # Envoy defaults to SO_REUSEPORT, which lets a second mesh (or any process doing the
        # same) bind our port without error and silently take half of the connections.
        # Without it a taken port fails the bind: Envoy NACKs, and `up` says so.
        enable_reuse_port=False,
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(hcm),
                    )
                ]
            )
        ],
    )


@functools.lru_cache(maxsize=64)
def build_listener(address: str, port: int) -> Listener:
    """The one HTTP listener; its routes come from RDS `localmesh_routes` over ADS."""
    rds = Rds(config_source=ads_config_source(), route_config_name=ROUTE_CONFIG_NAME)
    return _listener(address, port, _http_connection_manager(rds))


@functools.cache
def _protocol_options(protocol: Protocol) -> dict[str, AnyMsg]:
    if protocol is Protocol.GRPC:
        explicit = HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    else:
        explicit = HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        )
    return {_HTTP_PROTOCOL_OPTIONS_KEY: pack(HttpProtocolOptions(explicit_http_config=explicit))}


def _cluster(spec: ClusterSpec, **discovery: Any) -> Cluster:
    return Cluster(
        name=spec.name,
        connect_timeout=CONNECT_TIMEOUT,
        typed_extension_protocol_options=dict(_protocol_options(spec.protocol)),
        **discovery,
    )


def build_cluster(spec: ClusterSpec) -> Cluster:
    """An EDS cluster (endpoints over ADS); h2c upstream for gRPC, HTTP/1.1 otherwise."""
    return _cluster(
        spec,
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads_config_source()),
    )


def build_load_assignment(spec: ClusterSpec) -> ClusterLoadAssignment:
    """The cluster's endpoints: one per live forwarder (an empty list is valid)."""
    lb_endpoints = [
        LbEndpoint(endpoint=EnvoyEndpoint(address=_socket_address(ep.address, ep.port)))
        for ep in spec.endpoints
    ]
    return ClusterLoadAssignment(
        cluster_name=spec.name,
        endpoints=[LocalityLbEndpoints(lb_endpoints=lb_endpoints)] if lb_endpoints else [],
    )


@functools.cache
def _retry_policy() -> RetryPolicy:
    return RetryPolicy(
        retry_on=RETRY_ON,
        num_retries=NUM_RETRIES,
        # Prefer another endpoint (another pod) for the retry when there is one.
        retry_host_predicate=[
            RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )


def build_virtual_host(spec: VirtualHostSpec) -> VirtualHost:
    """One services.yaml host: `host` and `host:<port>` (any port) route to its cluster."""
    action: dict[str, Any] = {"cluster": spec.cluster, "retry_policy": _retry_policy()}
    if spec.protocol is Protocol.GRPC:
        # Streams may live for hours and sit idle: no route timeout, no idle timeout.
        action["timeout"] = timedelta(0)
        action["idle_timeout"] = timedelta(0)
    return VirtualHost(
        name=spec.host,
        domains=[spec.host, f"{spec.host}:*"],
        routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(**action))],
    )


def build_route_configuration(virtual_hosts: Iterable[VirtualHost]) -> RouteConfiguration:
    return RouteConfiguration(name=ROUTE_CONFIG_NAME, virtual_hosts=list(virtual_hosts))


def _sorted_hosts(mesh: MeshSpec) -> list[VirtualHostSpec]:
    # Order does not matter to Envoy; sorting keeps versions independent of it.
    return sorted(mesh.virtual_hosts, key=lambda v: v.host)


def build_resources(mesh: MeshSpec) -> dict[str, dict[str, betterproto2.Message]]:
    """Every resource the control plane serves for `mesh`, by type URL, then by name."""
    return {
        CLUSTER_TYPE: {c.name: build_cluster(c) for c in mesh.clusters},
        ENDPOINT_TYPE: {c.name: build_load_assignment(c) for c in mesh.clusters},
        LISTENER_TYPE: {LISTENER_NAME: build_listener(mesh.listener_address, mesh.listener_port)},
        ROUTE_TYPE: {
            ROUTE_CONFIG_NAME: build_route_configuration(
                build_virtual_host(v) for v in _sorted_hosts(mesh)
            )
        },
    }


def to_json(msg: betterproto2.Message) -> dict[str, Any]:
    """Proto3 JSON of a message (Any fields carry `@type`), snake_case as in Envoy's docs."""
    return msg.to_dict(casing=betterproto2.Casing.SNAKE)


def render_static_config(
    mesh: MeshSpec, *, admin_address: str = "127.0.0.1", admin_port: int = 0
) -> dict[str, Any]:
    """A self-contained static Envoy config serving the same routes as the control plane.

    Routes are inline in the listener and endpoints inline in STATIC clusters, so the
    output runs with `envoy -c FILE` and no control plane. Admin listens on loopback.
    """
    route_config = build_route_configuration(build_virtual_host(v) for v in _sorted_hosts(mesh))
    listener = _listener(
        mesh.listener_address, mesh.listener_port, _http_connection_manager(route_config)
    )
    clusters = [
        _cluster(c, type=ClusterDiscoveryType.STATIC, load_assignment=build_load_assignment(c))
        for c in mesh.clusters
    ]
    bootstrap = Bootstrap(
        admin=Admin(address=_socket_address(admin_address, admin_port)),
        static_resources=BootstrapStaticResources(listeners=[listener], clusters=clusters),
    )
    return to_json(bootstrap)


__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_NAME",
    "LISTENER_TYPE",
    "ROUTE_CONFIG_NAME",
    "ROUTE_TYPE",
    "TYPE_ORDER",
    "ads_config_source",
    "build_cluster",
    "build_listener",
    "build_load_assignment",
    "build_resources",
    "build_route_configuration",
    "build_virtual_host",
    "pack",
    "render_static_config",
    "to_json",
]
