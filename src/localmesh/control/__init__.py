"""The control API of a running instance: status, down, live snapshot dump.

Server: `register_control(server, provider)` adds the service to any `grpc.aio.Server`;
`bind_unix_socket` / `secure_socket` / `serve_control` put it on a 0600 unix socket.
Client: `ControlClient`. Rendering for the CLI: `render_status_text`, `render_status_json`,
`status_exit_code`. Data: the dataclasses of `localmesh.control.model`.

Wiring in `up` (one gRPC server for xDS and control, each on its own 0600 socket in the
private runtime directory):

    paths = runtime_paths(args.name)
    with InstanceLock(paths):                       # refuses a second `up --name X`
        def control(server: grpc.aio.Server) -> None:
            register_control(server, provider)      # provider: a ControlProvider
            bind_unix_socket(server, paths.control_socket)

        xds = await localmesh.xds.server.start_server(
            cache, paths.xds_socket, services=[control]
        )
        secure_socket(paths.control_socket, owner_uid)  # owner_uid: sudo caller or None
        ...                                         # provider.down() sets the stop event
        await xds.stop(grace=5)                     # last, so the Down reply gets out

`localmesh status`: `async with ControlClient.for_name(name) as c: status = await c.status()`,
print `render_status_json(status)` or `render_status_text(status)`, exit with
`status_exit_code(status)`. `localmesh down`: `await c.down()` (waits for the process to
exit). `dump-envoy-config --live`: `render_snapshot_json(await c.dump())`.
"""

from __future__ import annotations

from localmesh.control.client import ControlClient, wait_for_exit
from localmesh.control.model import (
    POD_BACKOFF,
    POD_CLOSED,
    POD_CONNECTING,
    POD_READY,
    CheckStatus,
    DownResult,
    EnvoyStatus,
    HostStatus,
    InstanceStatus,
    PodStatus,
    RouteStatus,
    SnapshotResource,
    XdsTypeStatus,
)
from localmesh.control.render import (
    render_snapshot_json,
    render_status_json,
    render_status_text,
    status_exit_code,
    status_to_dict,
)
from localmesh.control.server import (
    ControlProvider,
    bind_unix_socket,
    register_control,
    secure_socket,
    serve_control,
)

__all__ = [
    "POD_BACKOFF",
    "POD_CLOSED",
    "POD_CONNECTING",
    "POD_READY",
    "CheckStatus",
    "ControlClient",
    "ControlProvider",
    "DownResult",
    "EnvoyStatus",
    "HostStatus",
    "InstanceStatus",
    "PodStatus",
    "RouteStatus",
    "SnapshotResource",
    "XdsTypeStatus",
    "bind_unix_socket",
    "register_control",
    "render_snapshot_json",
    "render_status_json",
    "render_status_text",
    "secure_socket",
    "serve_control",
    "status_exit_code",
    "status_to_dict",
    "wait_for_exit",
]
