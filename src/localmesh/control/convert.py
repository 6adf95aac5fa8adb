"""The control dataclasses to and from their protobuf messages (the only place that knows
both)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from localmesh.api.v1 import control_pb2 as pb
from localmesh.control.model import (
    CheckStatus,
    EnvoyStatus,
    HostStatus,
    InstanceStatus,
    PodStatus,
    RouteStatus,
    SnapshotResource,
    XdsTypeStatus,
)


def _set_time(
    message: pb.StatusResponse | pb.HostStatus, field: str, value: datetime | None
) -> None:
    if value is not None:
        getattr(message, field).FromDatetime(value if value.tzinfo else value.astimezone())


def _datetime(message: pb.StatusResponse | pb.HostStatus, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return value


def _port(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def status_to_proto(status: InstanceStatus) -> pb.StatusResponse:
    problems = status.problems()
    message = pb.StatusResponse(
        name=status.name,
        pid=status.pid,
        listener_address=status.listener_address,
        listener_port=status.listener_port,
        config_path=status.config_path,
        hosts=[
            pb.HostStatus(
                host=h.host,
                namespace=h.namespace,
                service=h.service,
                port=str(h.port),
                target_port=h.target_port,
                type=h.type,
                cluster=h.cluster,
                pods=[
                    pb.PodStatus(
                        name=p.name,
                        local_address=p.local_address,
                        local_port=p.local_port,
                        state=p.state,
                        active_connections=p.active_connections,
                        last_error=p.last_error,
                    )
                    for p in h.pods
                ],
                last_reconnect_reason=h.last_reconnect_reason,
                requests=h.requests,
                errors=h.errors,
                error=h.error,
                local=h.local,
                local_listening=h.local_listening,
                recent_requests=h.recent_requests,
                recent_failures=h.recent_failures,
                routes=[
                    pb.RouteStatus(
                        match=r.match,
                        target=r.target,
                        cluster=r.cluster,
                        local=r.local,
                        listening=r.listening,
                        error=r.error,
                    )
                    for r in h.routes
                ],
            )
            for h in status.hosts
        ],
        xds=[
            pb.XdsTypeStatus(
                type_url=x.type_url,
                served_version=x.served_version,
                acked_version=x.acked_version,
                nack=x.nack,
            )
            for x in status.xds
        ],
        envoy=pb.EnvoyStatus(
            running=status.envoy.running,
            pid=status.envoy.pid,
            admin_address=status.envoy.admin_address,
            restarts=status.envoy.restarts,
            version=status.envoy.version,
            bootstrap_path=status.envoy.bootstrap_path,
        ),
        healthy=not problems,
        problems=list(problems),
        checks=[
            pb.Check(name=c.name, ok=c.ok, problem=c.problem, repaired=c.repaired)
            for c in status.checks
        ],
        recent_seconds=status.recent_seconds,
        degraded=list(status.degraded()),
    )
    # Timestamps are set in place: no separate google.protobuf import needed.
    _set_time(message, "started_at", status.started_at)
    for host, host_message in zip(status.hosts, message.hosts, strict=True):
        _set_time(host_message, "last_reconnect", host.last_reconnect)
    return message


def status_from_proto(message: pb.StatusResponse) -> InstanceStatus:
    derived = InstanceStatus(
        name=message.name,
        pid=message.pid,
        listener_address=message.listener_address,
        listener_port=message.listener_port,
        config_path=message.config_path,
        started_at=_datetime(message, "started_at"),
        hosts=tuple(
            HostStatus(
                host=h.host,
                namespace=h.namespace,
                service=h.service,
                port=_port(h.port),
                target_port=h.target_port,
                type=h.type,
                cluster=h.cluster,
                pods=tuple(
                    PodStatus(
                        name=p.name,
                        local_address=p.local_address,
                        local_port=p.local_port,
                        state=p.state,
                        active_connections=p.active_connections,
                        last_error=p.last_error,
                    )
                    for p in h.pods
                ),
                last_reconnect=_datetime(h, "last_reconnect"),
                last_reconnect_reason=h.last_reconnect_reason,
                requests=h.requests,
                errors=h.errors,
                error=h.error,
                local=h.local,
                local_listening=h.local_listening,
                recent_requests=h.recent_requests,
                recent_failures=h.recent_failures,
                routes=tuple(
                    RouteStatus(
                        match=r.match,
                        target=r.target,
                        cluster=r.cluster,
                        local=r.local,
                        listening=r.listening,
                        error=r.error,
                    )
                    for r in h.routes
                ),
            )
            for h in message.hosts
        ),
        xds=tuple(
            XdsTypeStatus(
                type_url=x.type_url,
                served_version=x.served_version,
                acked_version=x.acked_version,
                nack=x.nack,
            )
            for x in message.xds
        ),
        envoy=EnvoyStatus(
            running=message.envoy.running,
            pid=message.envoy.pid,
            admin_address=message.envoy.admin_address,
            restarts=message.envoy.restarts,
            version=message.envoy.version,
            bootstrap_path=message.envoy.bootstrap_path,
        ),
        checks=tuple(
            CheckStatus(name=c.name, ok=c.ok, problem=c.problem, repaired=c.repaired)
            for c in message.checks
        ),
        recent_seconds=message.recent_seconds,
    )
    # Problems the server reported beyond the derived ones travel as extra problems.
    known = set(derived.problems())
    extra = tuple(p for p in message.problems if p not in known)
    return replace(derived, extra_problems=extra) if extra else derived


def resources_to_proto(resources: list[SnapshotResource]) -> pb.DumpSnapshotResponse:
    return pb.DumpSnapshotResponse(
        resources=[
            pb.SnapshotResource(type_url=r.type_url, name=r.name, version=r.version, json=r.json)
            for r in resources
        ]
    )


def resources_from_proto(message: pb.DumpSnapshotResponse) -> tuple[SnapshotResource, ...]:
    return tuple(
        SnapshotResource(type_url=r.type_url, name=r.name, version=r.version, json=r.json)
        for r in message.resources
    )
