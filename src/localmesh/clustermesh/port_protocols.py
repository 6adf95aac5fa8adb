"""Which of a Service's ports carry HTTP, as both mesh modes read them.

A mark is an HTTP header, so only an HTTP (or gRPC) port can route by it. A port declares
another protocol the way Istio reads it: `appProtocol`, else the prefix of its name
(`tls-api`, `redis`). Manual mode writes header rules only for the other ports; both modes
refuse `--expose` of a declared one.
"""

from __future__ import annotations

from collections.abc import Mapping

# Port protocols (Istio's name prefix or appProtocol) that are not HTTP: no header routes.
NOT_HTTP = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis", "udp", "sctp"})
# Port protocols that say HTTP outright (appProtocol, or Istio's name prefix).
HTTP = frozenset({"http", "http2", "h2c", "grpc", "grpc-web"})


def port_protocol(port: Mapping[str, object]) -> str:
    """Istio's reading of a Service port: appProtocol, else the name's prefix."""
    app = str(port.get("appProtocol") or "")
    if app:
        return app.rsplit("/", 1)[-1].lower()
    return str(port.get("name") or "").split("-", 1)[0].lower()


def declared_not_http(port: Mapping[str, object]) -> str | None:
    """The protocol a port declares when it is not HTTP, else None."""
    protocol = port_protocol(port)
    return protocol if protocol in NOT_HTTP else None


def declared_http(port: Mapping[str, object]) -> bool:
    """Whether a port says it carries HTTP (or gRPC): `appProtocol: http`, `name: grpc-api`."""
    return port_protocol(port) in HTTP
