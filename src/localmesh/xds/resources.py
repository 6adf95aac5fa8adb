"""Pure builders: a `DesiredState` becomes the Envoy resources localmesh serves (no I/O).

What Envoy gets:
- ONE listener (named by the state's `ListenerSpec`) on the listener address and port. Its
  HTTP connection manager takes HTTP/1.1 and h2c on the same port (codec AUTO) and fetches
  its routes by RDS over ADS, so the listener never changes while services and routes come
  and go (a listener change would drain open connections). A local reply mapper turns a
  refused connection on a route that names its address into a 503 that says so.
- ONE route configuration with a virtual host per host, matching `host` and `host:<any
  port>`, its routes in order: path prefix, header matches, a cluster or weighted clusters.
- One cluster per target: EDS for forwarded Service ports and pod IPs (endpoints come and
  go), STATIC for a local process (its one address inline); HTTP/1.1, h2c or the
  downstream's protocol upstream. One ClusterLoadAssignment per EDS cluster.

The messages are localmesh.xds.proto types with envoy-data-plane's names and fields (same
bytes, no typed bindings loaded; the bootstrap and the in-cluster router build theirs from
them too); `typed(msg)` gives the envoy-data-plane message (tests compare with it), and
`pack` packs either kind.

Public functions:
    build_listener(spec: ListenerSpec) -> Listener
    build_cluster(spec: ClusterSpec) -> Cluster
    build_load_assignment(spec: ClusterSpec) -> ClusterLoadAssignment
    build_virtual_host(spec: VirtualHostSpec) -> VirtualHost
    build_route_configuration(name, virtual_hosts) -> RouteConfiguration
    build_resources(state) -> dict[type URL, dict[name, Message]]
    route_config_names(listener) / route_clusters(route_configuration): what they reference
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import betterproto2
    from envoy_data_plane.google.protobuf import Any as TypedAnyMsg

from localmesh.desired import (
    ClusterSpec,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerSpec,
    MatchKind,
    Protocol,
    RouteSpec,
    VirtualHostSpec,
)
from localmesh.xds import proto, wire_json
from localmesh.xds.codec import encode
from localmesh.xds.proto import Message, enum_type, message_type

# The message types the builders use (localmesh.xds.proto: no typed bindings loaded).
_ACCESSLOG = "envoy.config.accesslog.v3."
_CLUSTER = "envoy.config.cluster.v3."
_CORE = "envoy.config.core.v3."
_ENDPOINT = "envoy.config.endpoint.v3."
_LISTENER = "envoy.config.listener.v3."
_ROUTE = "envoy.config.route.v3."
_FILE_LOG = "envoy.extensions.access_loggers.file.v3."
_CEL = "envoy.extensions.access_loggers.filters.cel.v3."
_ROUTER = "envoy.extensions.filters.http.router.v3."
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3."
_PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3."
_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3."
_MATCHER = "envoy.type.matcher.v3."
_PROTOBUF = "google.protobuf."
AccessLog = message_type(_ACCESSLOG + "AccessLog")
AccessLogFilter = message_type(_ACCESSLOG + "AccessLogFilter")
AndFilter = message_type(_ACCESSLOG + "AndFilter")
ExtensionFilter = message_type(_ACCESSLOG + "ExtensionFilter")
ResponseFlagFilter = message_type(_ACCESSLOG + "ResponseFlagFilter")
Cluster = message_type(_CLUSTER + "Cluster")
ClusterEdsClusterConfig = message_type(_CLUSTER + "ClusterEdsClusterConfig")
ClusterDiscoveryType = enum_type(_CLUSTER + "ClusterDiscoveryType")
Address = message_type(_CORE + "Address")
AggregatedConfigSource = message_type(_CORE + "AggregatedConfigSource")
ConfigSource = message_type(_CORE + "ConfigSource")
DataSource = message_type(_CORE + "DataSource")
Http1ProtocolOptions = message_type(_CORE + "Http1ProtocolOptions")
Http2ProtocolOptions = message_type(_CORE + "Http2ProtocolOptions")
CoreHttpProtocolOptions = message_type(_CORE + "HttpProtocolOptions")
Metadata = message_type(_CORE + "Metadata")
Pipe = message_type(_CORE + "Pipe")
SocketAddress = message_type(_CORE + "SocketAddress")
SubstitutionFormatString = message_type(_CORE + "SubstitutionFormatString")
ApiVersion = enum_type(_CORE + "ApiVersion")
ClusterLoadAssignment = message_type(_ENDPOINT + "ClusterLoadAssignment")
EnvoyEndpoint = message_type(_ENDPOINT + "Endpoint")
LbEndpoint = message_type(_ENDPOINT + "LbEndpoint")
LocalityLbEndpoints = message_type(_ENDPOINT + "LocalityLbEndpoints")
Filter = message_type(_LISTENER + "Filter")
FilterChain = message_type(_LISTENER + "FilterChain")
Listener = message_type(_LISTENER + "Listener")
DirectResponseAction = message_type(_ROUTE + "DirectResponseAction")
HeaderMatcher = message_type(_ROUTE + "HeaderMatcher")
RetryPolicy = message_type(_ROUTE + "RetryPolicy")
RetryPolicyRetryHostPredicate = message_type(_ROUTE + "RetryPolicyRetryHostPredicate")
Route = message_type(_ROUTE + "Route")
RouteAction = message_type(_ROUTE + "RouteAction")
RouteConfiguration = message_type(_ROUTE + "RouteConfiguration")
RouteMatch = message_type(_ROUTE + "RouteMatch")
VirtualHost = message_type(_ROUTE + "VirtualHost")
WeightedCluster = message_type(_ROUTE + "WeightedCluster")
WeightedClusterClusterWeight = message_type(_ROUTE + "WeightedClusterClusterWeight")
FileAccessLog = message_type(_FILE_LOG + "FileAccessLog")
ExpressionFilter = message_type(_CEL + "ExpressionFilter")
Router = message_type(_ROUTER + "Router")
HttpConnectionManager = message_type(_HCM + "HttpConnectionManager")
HttpConnectionManagerUpgradeConfig = message_type(_HCM + "HttpConnectionManagerUpgradeConfig")
HttpFilter = message_type(_HCM + "HttpFilter")
LocalReplyConfig = message_type(_HCM + "LocalReplyConfig")
Rds = message_type(_HCM + "Rds")
ResponseMapper = message_type(_HCM + "ResponseMapper")
HttpConnectionManagerCodecType = enum_type(_HCM + "HttpConnectionManagerCodecType")
PreviousHostsPredicate = message_type(_PREVIOUS_HOSTS + "PreviousHostsPredicate")
HttpProtocolOptions = message_type(_UPSTREAM_HTTP + "HttpProtocolOptions")
HttpProtocolOptionsExplicitHttpConfig = message_type(
    _UPSTREAM_HTTP + "HttpProtocolOptionsExplicitHttpConfig"
)
HttpProtocolOptionsUseDownstreamHttpConfig = message_type(
    _UPSTREAM_HTTP + "HttpProtocolOptionsUseDownstreamHttpConfig"
)
RegexMatcher = message_type(_MATCHER + "RegexMatcher")
StringMatcher = message_type(_MATCHER + "StringMatcher")
AnyMsg = message_type(_PROTOBUF + "Any")
Struct = message_type(_PROTOBUF + "Struct")
Value = message_type(_PROTOBUF + "Value")

STAT_PREFIX = "localmesh"
# Route metadata the local reply mapper reads: the 503 body for a refused connection.
METADATA_NAMESPACE = "localmesh"
UNREACHABLE_KEY = "unreachable"
PROTOCOL_KEY = "protocol"  # cluster metadata: how its upstream protocol was chosen

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
# An idle upstream connection holds a forwarder connection and its port-forward stream on
# the API server; Envoy's default keeps it for an hour. LOCALMESH_UPSTREAM_IDLE_TIMEOUT
# (seconds) shortens it for tests.
UPSTREAM_IDLE_TIMEOUT = timedelta(
    seconds=float(os.environ.get("LOCALMESH_UPSTREAM_IDLE_TIMEOUT", "").strip() or 60)
)


@overload
def pack(msg: Message) -> Message: ...
@overload
def pack(msg: betterproto2.Message) -> TypedAnyMsg: ...
def pack(msg: Message | betterproto2.Message) -> Message | TypedAnyMsg:
    """`Any.pack` through the fast encoder: an Any of the same kind as `msg` (a typed one
    for typed messages, which only tests build)."""
    if isinstance(msg, Message):
        return AnyMsg(type_url=proto.type_url(msg), value=encode(msg))
    from envoy_data_plane.google.protobuf import Any as TypedAny
    from envoy_data_plane.message_pool import default_message_pool

    return TypedAny(type_url=default_message_pool.type_to_url[type(msg)], value=encode(msg))


def typed(msg: Message) -> betterproto2.Message:
    """The envoy-data-plane message of `msg` (tests compare the two)."""
    found: betterproto2.Message = proto.typed_class(proto.type_url(msg)).parse(encode(msg))
    return found


def ads_config_source() -> Message:
    """Resources come over ADS (listeners' RDS, EDS clusters, the bootstrap's CDS/LDS)."""
    # V3 is enum value 0 and would be dropped if left implicit: set it on purpose.
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def _address(endpoint: Endpoint) -> Message:
    if endpoint.port == 0 and endpoint.address.startswith("/"):
        return Address(pipe=Pipe(path=endpoint.address))  # a unix socket
    return _socket_address(endpoint.address, endpoint.port)


def _socket_address(address: str, port: int) -> Message:
    return Address(socket_address=SocketAddress(address=address, port_value=port))


@functools.cache
def _local_reply_config() -> Message:
    """A refused connection (UF) on a route that carries an `unreachable` text answers
    with that text: "localmesh: nothing listens on 127.0.0.1:9090 (...)"."""
    has_text = ExpressionFilter(
        expression=f"has(xds.route_metadata.filter_metadata.{METADATA_NAMESPACE})"
    )
    refused = AccessLogFilter(
        and_filter=AndFilter(
            filters=[
                AccessLogFilter(response_flag_filter=ResponseFlagFilter(flags=["UF"])),
                AccessLogFilter(
                    extension_filter=ExtensionFilter(
                        name="envoy.access_loggers.extension_filters.cel",
                        typed_config=pack(has_text),
                    )
                ),
            ]
        )
    )
    body = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{UNREACHABLE_KEY})%\n"
    return LocalReplyConfig(
        mappers=[
            ResponseMapper(
                filter=refused,
                status_code=503,
                body_format_override=SubstitutionFormatString(
                    text_format_source=DataSource(inline_string=body)
                ),
            )
        ]
    )


def _access_logs(path: str) -> list[Message]:
    if not path:
        return []
    from localmesh.access_log import FORMAT

    fields = {k: Value(string_value=v) for k, v in FORMAT.items()}
    file_log = FileAccessLog(
        path=path, log_format=SubstitutionFormatString(json_format=Struct(fields=fields))
    )
    return [AccessLog(name="envoy.access_loggers.file", typed_config=pack(file_log))]


def _http_connection_manager(route: Message, *, websockets: bool, access_log: str = "") -> Message:
    routing = {"rds" if route.key == Rds.key else "route_config": route}
    upgrades = [HttpConnectionManagerUpgradeConfig(upgrade_type="websocket")] if websockets else []
    return HttpConnectionManager(
        stat_prefix=STAT_PREFIX,
        # AUTO sniffs the HTTP/2 connection preface: HTTP/1.1 and h2c share the port.
        codec_type=HttpConnectionManagerCodecType.AUTO,
        http2_protocol_options=Http2ProtocolOptions(),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
        local_reply_config=_local_reply_config(),
        upgrade_configs=upgrades,
        access_log=_access_logs(access_log),
        **routing,
    )


@functools.lru_cache(maxsize=64)
def build_listener(spec: ListenerSpec) -> Message:
    """The one HTTP listener; its routes come over ADS by RDS (`spec.route_config_name`)."""
    rds = Rds(config_source=ads_config_source(), route_config_name=spec.route_config_name)
    hcm = _http_connection_manager(rds, websockets=spec.websockets, access_log=spec.access_log)
    return Listener(
        name=spec.name,
        address=_socket_address(spec.address, spec.port),
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


@functools.cache
def _protocol_options(protocol: Protocol) -> dict[str, Message]:
    options: Message
    if protocol is Protocol.DOWNSTREAM:
        options = HttpProtocolOptions(
            use_downstream_protocol_config=HttpProtocolOptionsUseDownstreamHttpConfig(
                http_protocol_options=Http1ProtocolOptions(),
                http2_protocol_options=Http2ProtocolOptions(),
            )
        )
    elif protocol is Protocol.GRPC:
        options = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions()
            )
        )
    else:
        options = HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http_protocol_options=Http1ProtocolOptions()
            )
        )
    options.common_http_protocol_options = CoreHttpProtocolOptions(
        idle_timeout=UPSTREAM_IDLE_TIMEOUT
    )
    return {_HTTP_PROTOCOL_OPTIONS_KEY: pack(options)}


def build_cluster(spec: ClusterSpec) -> Message:
    """EDS (endpoints over ADS) for forwarded ports and pod IPs, STATIC for a local
    process; h2c upstream for gRPC, HTTP/1.1 for http, the client's for downstream."""
    discovery: dict[str, Any]
    if spec.kind.eds:
        discovery = {
            "type": ClusterDiscoveryType.EDS,
            "eds_cluster_config": ClusterEdsClusterConfig(eds_config=ads_config_source()),
        }
    else:
        discovery = {
            "type": ClusterDiscoveryType.STATIC,
            "load_assignment": build_load_assignment(spec),
        }
    if spec.why:
        # Shown in the dump and Envoy's config_dump: why this upstream protocol.
        why = Struct(fields={PROTOCOL_KEY: Value(string_value=spec.why)})
        discovery["metadata"] = Metadata(filter_metadata={METADATA_NAMESPACE: why})
    return Cluster(
        name=spec.name,
        connect_timeout=CONNECT_TIMEOUT,
        typed_extension_protocol_options=dict(_protocol_options(spec.protocol)),
        **discovery,
    )


def build_load_assignment(spec: ClusterSpec) -> Message:
    """The cluster's endpoints (an empty list is valid)."""
    lb_endpoints = [
        LbEndpoint(endpoint=EnvoyEndpoint(address=_address(ep))) for ep in spec.endpoints
    ]
    return ClusterLoadAssignment(
        cluster_name=spec.name,
        endpoints=[LocalityLbEndpoints(lb_endpoints=lb_endpoints)] if lb_endpoints else [],
    )


@functools.cache
def _retry_policy() -> Message:
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


def _header_matcher(match: HeaderMatch) -> Message:
    if match.kind is MatchKind.PRESENT:
        return HeaderMatcher(name=match.name, present_match=True)
    if match.kind is MatchKind.REGEX:
        string = StringMatcher(safe_regex=RegexMatcher(regex=match.value))
    else:
        string = StringMatcher(exact=match.value)
    return HeaderMatcher(name=match.name, string_match=string)


def build_route(spec: RouteSpec) -> Message:
    match = RouteMatch(prefix=spec.path_prefix, headers=[_header_matcher(h) for h in spec.headers])
    if not spec.clusters:
        body = DataSource(inline_string=spec.failed)
        failed = DirectResponseAction(status=503, body=body)
        return Route(name=spec.name, match=match, direct_response=failed)
    action: dict[str, Any] = {"retry_policy": _retry_policy()}
    if spec.cluster:
        action["cluster"] = spec.cluster
    else:
        action["weighted_clusters"] = WeightedCluster(
            clusters=[
                WeightedClusterClusterWeight(name=w.cluster, weight=w.weight) for w in spec.weighted
            ]
        )
    if spec.streams:
        # Streams may live for hours and sit idle: no route timeout, no idle timeout.
        action["timeout"] = timedelta(0)
        action["idle_timeout"] = timedelta(0)
    extra: dict[str, Any] = {}
    if spec.unreachable:
        text = Value(string_value=spec.unreachable)
        extra["metadata"] = Metadata(
            filter_metadata={METADATA_NAMESPACE: Struct(fields={UNREACHABLE_KEY: text})}
        )
    return Route(
        name=spec.name,
        match=match,
        route=RouteAction(**action),
        **extra,
    )


def build_virtual_host(spec: VirtualHostSpec) -> Message:
    """One host (`host` and `host:<port>`, any port) with its routes in order."""
    return VirtualHost(
        name=spec.host,
        domains=list(spec.all_domains),
        routes=[build_route(r) for r in spec.routes],
    )


def build_route_configuration(name: str, virtual_hosts: Iterable[Message]) -> Message:
    return RouteConfiguration(name=name, virtual_hosts=list(virtual_hosts))


def sorted_hosts(state: DesiredState) -> list[VirtualHostSpec]:
    # Order does not matter to Envoy; sorting keeps versions independent of it.
    return sorted(state.virtual_hosts, key=lambda v: v.host)


def build_resources(state: DesiredState) -> dict[str, dict[str, Message]]:
    """Every resource the control plane serves for `state`, by type URL, then by name."""
    listener = state.listener
    return {
        CLUSTER_TYPE: {c.name: build_cluster(c) for c in state.clusters},
        ENDPOINT_TYPE: {c.name: build_load_assignment(c) for c in state.clusters if c.kind.eds},
        LISTENER_TYPE: {listener.name: build_listener(listener)},
        ROUTE_TYPE: {
            listener.route_config_name: build_route_configuration(
                listener.route_config_name, (build_virtual_host(v) for v in sorted_hosts(state))
            )
        },
    }


# -- references (for the snapshot's consistency check) -------------------------------------


_HCM_RDS = proto.field_map(HttpConnectionManager.key)["rds"][1]
_RDS_ROUTE_CONFIG_NAME = proto.field_map(Rds.key)["route_config_name"][1]


def route_config_names(listener: Any) -> set[str]:
    """The route configurations a listener fetches by RDS."""
    names = set()
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            config = network_filter.typed_config
            if config is None or not config.type_url.endswith(".HttpConnectionManager"):
                continue
            # Two fields read off the wire, not the whole manager decoded: the router
            # rebuilds its snapshot on every watch event.
            for number, _, value in wire_json.records(bytes(config.value)):
                if number == _HCM_RDS:
                    name = ""
                    for inner, _, raw in wire_json.records(bytes(value)):
                        if inner == _RDS_ROUTE_CONFIG_NAME:
                            name = bytes(raw).decode("utf-8")
                    names.add(name)
    return names


def route_clusters(route_configuration: Any) -> set[str]:
    """Every cluster a route configuration sends traffic to (weighted clusters included)."""
    found = set()
    for vh in route_configuration.virtual_hosts:
        for route in vh.routes:
            action = route.route
            if action is None:
                continue
            if action.cluster:
                found.add(action.cluster)
            if action.weighted_clusters is not None:
                found.update(w.name for w in action.weighted_clusters.clusters)
    return found


def to_json(msg: Message | betterproto2.Message) -> dict[str, Any]:
    """Proto3 JSON of a message (Any fields carry `@type`), snake_case as in Envoy's docs."""
    if isinstance(msg, Message):
        return wire_json.to_json(msg.key, encode(msg))
    import betterproto2

    found: dict[str, Any] = msg.to_dict(casing=betterproto2.Casing.SNAKE)
    return found


__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "TYPE_ORDER",
    "ads_config_source",
    "build_cluster",
    "build_listener",
    "build_load_assignment",
    "build_resources",
    "build_route",
    "build_route_configuration",
    "build_virtual_host",
    "pack",
    "route_clusters",
    "route_config_names",
    "sorted_hosts",
    "to_json",
    "typed",
]
