"""Which protocol Envoy speaks to a Service port when services.yaml gives no `type`.

The seed calls `type` informational, so an entry without it must still work for gRPC:

1. the Service port's `appProtocol` (`grpc`, `h2c`, `kubernetes.io/h2c` -> h2c; `http`),
2. else its name (`grpc`, `grpc-*`, `h2c`, `http2` -> h2c),
3. else the client's protocol, per request (HTTP/1.1 stays HTTP/1.1, h2c stays h2c).

An explicit `type` always wins. Each choice carries the reason `status` and the dump show.
"""

from __future__ import annotations

from dataclasses import dataclass

from localmesh.desired import Protocol

_H2C_APP_PROTOCOLS = frozenset({"grpc", "h2c", "kubernetes.io/h2c"})
_HTTP1_APP_PROTOCOLS = frozenset({"http"})
_H2C_PORT_NAMES = frozenset({"grpc", "h2c", "http2"})


@dataclass(frozen=True)
class ProtocolChoice:
    protocol: Protocol
    reason: str

    def describe(self) -> str:
        """`grpc (port name grpc-api)`: what `status` shows in its type column."""
        return f"{self.protocol.value} ({self.reason})"


EXPLICIT = "type in services.yaml"
CLIENTS = "no type, appProtocol or gRPC port name: the client's protocol"


def explicit(protocol: Protocol) -> ProtocolChoice:
    return ProtocolChoice(protocol, EXPLICIT)


def choose_protocol(port_name: str, app_protocol: str | None) -> ProtocolChoice:
    """The protocol for a Service port the entry gives no `type` for."""
    app = (app_protocol or "").strip().lower()
    if app in _H2C_APP_PROTOCOLS:
        return ProtocolChoice(Protocol.GRPC, f"appProtocol {app}")
    if app in _HTTP1_APP_PROTOCOLS:
        return ProtocolChoice(Protocol.HTTP, f"appProtocol {app}")
    name = port_name.lower()
    if name in _H2C_PORT_NAMES or name.startswith("grpc-"):
        return ProtocolChoice(Protocol.GRPC, f"port name {port_name}")
    return ProtocolChoice(Protocol.DOWNSTREAM, CLIENTS)


def choose_offline(port_name: str | None) -> ProtocolChoice:
    """A choice without the cluster (`dump-envoy-config --mock-config`): mocks.yaml has
    no appProtocol, so only the port name services.yaml gives can decide."""
    choice = choose_protocol(port_name or "", None)
    return ProtocolChoice(choice.protocol, f"{choice.reason}; assumed offline: no appProtocol")


__all__ = ["CLIENTS", "EXPLICIT", "ProtocolChoice", "choose_offline", "choose_protocol", "explicit"]
