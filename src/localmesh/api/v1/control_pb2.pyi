import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("name", "pid", "listener_address", "listener_port", "config_path", "started_at", "hosts", "xds", "envoy", "healthy", "problems", "checks", "recent_seconds", "degraded")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LISTENER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LISTENER_PORT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    XDS_FIELD_NUMBER: _ClassVar[int]
    ENVOY_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    RECENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    name: str
    pid: int
    listener_address: str
    listener_port: int
    config_path: str
    started_at: _timestamp_pb2.Timestamp
    hosts: _containers.RepeatedCompositeFieldContainer[HostStatus]
    xds: _containers.RepeatedCompositeFieldContainer[XdsTypeStatus]
    envoy: EnvoyStatus
    healthy: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    checks: _containers.RepeatedCompositeFieldContainer[Check]
    recent_seconds: float
    degraded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., pid: _Optional[int] = ..., listener_address: _Optional[str] = ..., listener_port: _Optional[int] = ..., config_path: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hosts: _Optional[_Iterable[_Union[HostStatus, _Mapping]]] = ..., xds: _Optional[_Iterable[_Union[XdsTypeStatus, _Mapping]]] = ..., envoy: _Optional[_Union[EnvoyStatus, _Mapping]] = ..., healthy: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., checks: _Optional[_Iterable[_Union[Check, _Mapping]]] = ..., recent_seconds: _Optional[float] = ..., degraded: _Optional[_Iterable[str]] = ...) -> None: ...

class Check(_message.Message):
    __slots__ = ("name", "ok", "problem", "repaired")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    problem: str
    repaired: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., problem: _Optional[str] = ..., repaired: _Optional[str] = ...) -> None: ...

class HostStatus(_message.Message):
    __slots__ = ("host", "namespace", "service", "port", "target_port", "type", "cluster", "pods", "last_reconnect", "last_reconnect_reason", "requests", "errors", "error", "local", "local_listening", "routes", "recent_requests", "recent_failures")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    LAST_RECONNECT_FIELD_NUMBER: _ClassVar[int]
    LAST_RECONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    LOCAL_LISTENING_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    RECENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    host: str
    namespace: str
    service: str
    port: str
    target_port: int
    type: str
    cluster: str
    pods: _containers.RepeatedCompositeFieldContainer[PodStatus]
    last_reconnect: _timestamp_pb2.Timestamp
    last_reconnect_reason: str
    requests: int
    errors: int
    error: str
    local: str
    local_listening: bool
    routes: _containers.RepeatedCompositeFieldContainer[RouteStatus]
    recent_requests: int
    recent_failures: int
    def __init__(self, host: _Optional[str] = ..., namespace: _Optional[str] = ..., service: _Optional[str] = ..., port: _Optional[str] = ..., target_port: _Optional[int] = ..., type: _Optional[str] = ..., cluster: _Optional[str] = ..., pods: _Optional[_Iterable[_Union[PodStatus, _Mapping]]] = ..., last_reconnect: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_reconnect_reason: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error: _Optional[str] = ..., local: _Optional[str] = ..., local_listening: _Optional[bool] = ..., routes: _Optional[_Iterable[_Union[RouteStatus, _Mapping]]] = ..., recent_requests: _Optional[int] = ..., recent_failures: _Optional[int] = ...) -> None: ...

class RouteStatus(_message.Message):
    __slots__ = ("match", "target", "cluster", "local", "listening", "error")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    match: str
    target: str
    cluster: str
    local: bool
    listening: bool
    error: str
    def __init__(self, match: _Optional[str] = ..., target: _Optional[str] = ..., cluster: _Optional[str] = ..., local: _Optional[bool] = ..., listening: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class PodStatus(_message.Message):
    __slots__ = ("name", "local_address", "local_port", "state", "active_connections", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    local_address: str
    local_port: int
    state: str
    active_connections: int
    last_error: str
    def __init__(self, name: _Optional[str] = ..., local_address: _Optional[str] = ..., local_port: _Optional[int] = ..., state: _Optional[str] = ..., active_connections: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class XdsTypeStatus(_message.Message):
    __slots__ = ("type_url", "served_version", "acked_version", "nack")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    served_version: str
    acked_version: str
    nack: str
    def __init__(self, type_url: _Optional[str] = ..., served_version: _Optional[str] = ..., acked_version: _Optional[str] = ..., nack: _Optional[str] = ...) -> None: ...

class EnvoyStatus(_message.Message):
    __slots__ = ("running", "pid", "admin_address", "restarts", "version", "bootstrap_path")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_PATH_FIELD_NUMBER: _ClassVar[int]
    running: bool
    pid: int
    admin_address: str
    restarts: int
    version: str
    bootstrap_path: str
    def __init__(self, running: _Optional[bool] = ..., pid: _Optional[int] = ..., admin_address: _Optional[str] = ..., restarts: _Optional[int] = ..., version: _Optional[str] = ..., bootstrap_path: _Optional[str] = ...) -> None: ...

class DownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class DumpSnapshotRequest(_message.Message):
    __slots__ = ("type_urls",)
    TYPE_URLS_FIELD_NUMBER: _ClassVar[int]
    type_urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type_urls: _Optional[_Iterable[str]] = ...) -> None: ...

class DumpSnapshotResponse(_message.Message):
    __slots__ = ("resources",)
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[SnapshotResource]
    def __init__(self, resources: _Optional[_Iterable[_Union[SnapshotResource, _Mapping]]] = ...) -> None: ...

class SnapshotResource(_message.Message):
    __slots__ = ("type_url", "name", "version", "json")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    name: str
    version: str
    json: str
    def __init__(self, type_url: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...
