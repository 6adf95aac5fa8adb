"""services.yaml and mocks.yaml: loading and strict validation.

Both files are parsed with PyYAML's node API so that every value keeps its line and column.
Validation never stops at the first problem: every issue found is collected and raised at
once as a `ConfigValidationError` (a `localmesh.errors.ConfigError`), one line per issue:

    services.yaml:7:11: services[1].port: 70000 is out of range (1..65535)

services.yaml (the seed's format, plus routes and local processes):

    listener_port: 80            # optional, default 80
    services:                    # required (may be an empty list)
      - host: users-api.localhost   # RFC 1123 hostname, unique (case-insensitive)
        namespace: users            # DNS-1123 label
        service: users-api          # DNS-1035 label (what Kubernetes requires of a Service)
        port_name: grpc             # the Service port's name ...
        port: 50051                 # ... or its number: exactly one of the two
        type: grpc                  # http (HTTP/1.1 upstream) or grpc (h2c); without it
                                    # the Service port decides (localmesh.protocol_choice)
        routes:                     # optional, tried in order; the entry's own target
          - headers: {x-dev: alice} #   is the final catch-all
            local: 9090             # a process on this machine: port, host:port, /socket
          - path_prefix: /v2/
            namespace: users        # or another Service port, forwarded like any entry's
            service: users-api-v2
            port_name: grpc
      - host: web.localhost
        local: 3000                 # a host served only by a local process

    A header match is `name: value` (exact), `name: true` (present), or `name: {exact: v}`,
    `{present: true}`, `{regex: RE2}`, `{member: key=value}` (a list member of a
    comma-separated header such as `baggage`).

mocks.yaml (offline port resolution for `dump-envoy-config --mock-config`):

    mocks:
      - namespace: users
        service: users-api
        port_name: grpc          # "" (or omitted) matches entries that give `port`
        resolved_port: 50051
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from localmesh.desired import HeaderMatch, MatchKind, Protocol
from localmesh.errors import ConfigError

DEFAULT_LISTENER_PORT = 80
DEFAULT_PROTOCOL = Protocol.HTTP


@dataclass(frozen=True)
class Location:
    """Where a value came from, for error messages: `file:line:column` (1-based)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class LocalAddress:
    """A process on this machine: an IP address and port, or a unix socket (port 0)."""

    address: str
    port: int = 0

    @property
    def unix(self) -> bool:
        return self.port == 0

    def __str__(self) -> str:
        if self.unix:
            return f"unix:{self.address}"
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else (f"{self.address}:{self.port}")
        )


@dataclass(frozen=True)
class ServiceRef:
    """A Kubernetes Service port as services.yaml names it."""

    namespace: str
    service: str
    port_name: str | None = None
    port: int | None = None

    @property
    def port_ref(self) -> str | int:
        """The port's name, else its number, else "" (the Service's only port)."""
        if self.port_name is not None:
            return self.port_name
        return "" if self.port is None else self.port

    def __str__(self) -> str:
        port = f":{self.port_ref}" if self.port_ref != "" else ""
        return f"{self.namespace}/{self.service}{port}"


@dataclass(frozen=True)
class RouteEntry:
    """One `routes:` item: requests matching all its conditions go to its target."""

    target: ServiceRef | LocalAddress
    protocol: Protocol
    path_prefix: str = "/"
    headers: tuple[HeaderMatch, ...] = ()
    location: Location | None = field(default=None, compare=False)
    inferred: bool = False  # no `type` here or on the entry: the Service port decides

    def describe_match(self) -> str:
        return self._match_text

    @functools.cached_property
    def _match_text(self) -> str:
        # Cached: the planner names every route on every plan (1,000 hosts, per event).
        parts = [h.describe() for h in self.headers]
        if self.path_prefix != "/":
            parts.insert(0, f"path {self.path_prefix}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ServiceEntry:
    """One host: a Service port (namespace, service, port) or a local process (`local`),
    with optional routes tried before it."""

    host: str
    namespace: str
    service: str
    protocol: Protocol  # `type` in the file
    port_name: str | None = None
    port: int | None = None
    location: Location | None = field(default=None, compare=False)
    local: LocalAddress | None = None
    routes: tuple[RouteEntry, ...] = ()
    # No `type`: a Service port's protocol is chosen from the port (localmesh.protocol_choice);
    # `protocol` (http) then applies only to a local process.
    inferred: bool = False

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        # Computed once: entries key the forwarders, the resolved ports and the planner's
        # memo, each looked up for all 1,000 entries per edit.
        fields = (self.host, self.namespace, self.service, self.protocol, self.port_name)
        return hash((*fields, self.port, self.local, self.routes, self.inferred))

    @property
    def port_ref(self) -> str | int:
        """How the entry names its service port: the name if given, else the number."""
        if self.port_name is not None:
            return self.port_name
        if self.port is None:
            return ""
        return self.port

    @property
    def forwarded(self) -> bool:
        """Whether the entry's own target is a Service port (not a local process)."""
        return self.local is None

    def describe(self) -> str:
        """`host -> namespace/service:port` (or `host -> local ADDRESS`) for messages."""
        if self.local is not None:
            return f"{self.host} -> local {self.local}"
        port = f":{self.port_ref}" if self.port_ref != "" else ""
        return f"{self.host} -> {self.namespace}/{self.service}{port}"

    def backends(self) -> tuple[ServiceEntry, ...]:
        """Every Service port this entry forwards: its own and its routes' targets, each as
        an entry without routes (the unit port-forwards and port resolution work on; a
        route edit then leaves them equal, so forwarders stay)."""
        if not self.routes:
            # Built on each call: a cached tuple holding the entry itself would make every
            # entry a reference cycle, which only the cyclic GC could free.
            return () if self.local is not None else (self,)
        return self._routed_backends

    @functools.cached_property
    def _routed_backends(self) -> tuple[ServiceEntry, ...]:
        # Cached (the entry is immutable): planned on every event, for every entry.
        found: list[ServiceEntry] = []
        if self.local is None:
            found.append(replace(self, routes=()))
        for route in self.routes:
            if isinstance(route.target, ServiceRef):
                found.append(route_backend(self, route))
        return tuple(found)


def route_backend(entry: ServiceEntry, route: RouteEntry) -> ServiceEntry:
    """The forwarded Service port a route sends to, as an entry of its own."""
    assert isinstance(route.target, ServiceRef)
    ref = route.target
    return ServiceEntry(
        host=entry.host,
        namespace=ref.namespace,
        service=ref.service,
        protocol=route.protocol,
        port_name=ref.port_name,
        port=ref.port,
        location=route.location,
        inferred=route.inferred,
    )


@dataclass(frozen=True)
class Config:
    listener_port: int = DEFAULT_LISTENER_PORT
    services: tuple[ServiceEntry, ...] = ()
    source: Path | None = field(default=None, compare=False)

    def backends(self) -> tuple[ServiceEntry, ...]:
        """Every forwarded Service port of every entry, once each, in file order."""
        return tuple(dict.fromkeys(b for entry in self.services for b in entry.backends()))


@dataclass(frozen=True)
class MockEntry:
    namespace: str
    service: str
    port_name: str  # "" matches an entry that names its port by number
    resolved_port: int
    location: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MockConfig:
    mocks: tuple[MockEntry, ...] = ()
    source: Path | None = field(default=None, compare=False)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where, which field, what is wrong."""

    location: Location
    path: str  # field path such as `services[2].port`; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.location}: {where}{self.message}"


class ConfigValidationError(ConfigError):
    """Every issue found in one file; str() is one line per issue, in file order."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        ordered = sorted(
            issues, key=lambda i: (i.location.file, i.location.line, i.location.column)
        )
        self.issues: tuple[ConfigIssue, ...] = tuple(ordered)
        lines = [str(i) for i in self.issues[:MAX_ISSUES_SHOWN]]
        if len(self.issues) > MAX_ISSUES_SHOWN:
            rest = len(self.issues) - MAX_ISSUES_SHOWN
            lines.append(f"{self.issues[0].location.file}: and {rest} more issues")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- public API


def load_config(path: str | Path) -> Config:
    """Read and validate services.yaml; raises ConfigError listing every problem."""
    path = Path(path)
    return parse_config(_read(path), str(path), source=path)


def parse_config(text: str, filename: str = "services.yaml", source: Path | None = None) -> Config:
    """Validate services.yaml given as text; `filename` is what messages call the file."""
    checker = _Checker(filename)
    root = checker.document(text)
    fields = checker.mapping(root, "", _CONFIG_KEYS, required=("services",))
    listener_port = DEFAULT_LISTENER_PORT
    if "listener_port" in fields:
        listener_port = checker.port(fields["listener_port"], "listener_port", listener_port)
    services: list[ServiceEntry] = []
    if "services" in fields:
        items = checker.sequence(fields["services"], "services")
        for index, item in enumerate(items):
            entry = _service_entry(checker, item, f"services[{index}]")
            if entry is not None:
                services.append(entry)
        _check_duplicate_hosts(checker)
    checker.raise_if_any()
    return Config(listener_port=listener_port, services=tuple(services), source=source)


def load_mocks(path: str | Path) -> MockConfig:
    """Read and validate mocks.yaml; raises ConfigError listing every problem."""
    path = Path(path)
    return parse_mocks(_read(path), str(path), source=path)


def parse_mocks(text: str, filename: str = "mocks.yaml", source: Path | None = None) -> MockConfig:
    """Validate mocks.yaml given as text; `filename` is what messages call the file."""
    checker = _Checker(filename)
    root = checker.document(text)
    fields = checker.mapping(root, "", ("mocks",), required=("mocks",))
    mocks: list[MockEntry] = []
    if "mocks" in fields:
        for index, item in enumerate(checker.sequence(fields["mocks"], "mocks")):
            mock = _mock_entry(checker, item, f"mocks[{index}]")
            if mock is not None:
                mocks.append(mock)
        _check_duplicate_mocks(checker, mocks)
    checker.raise_if_any()
    return MockConfig(mocks=tuple(mocks), source=source)


# --------------------------------------------------------------------------- names

# RFC 1123 hostname: dot-separated labels of letters, digits and inner hyphens.
# (Used with fullmatch: `$` would also accept a trailing newline.)
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Kubernetes: namespaces and Service port names are DNS-1123 labels, Services DNS-1035 labels.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def hostname_problem(host: str) -> str | None:
    """Why `host` is not an RFC 1123 hostname, or None if it is one."""
    if not host:
        return "must not be empty"
    if len(host) > 253:
        return f"is {len(host)} characters long (at most 253)"
    if ":" in host:
        return "must not contain a port (the listener port comes from `listener_port`)"
    if host.endswith("."):
        return "must not end with a dot"
    for label in host.split("."):
        if not label:
            return "has an empty label (two dots in a row or a leading dot)"
        if len(label) > 63:
            return f"has a label longer than 63 characters ({label[:20]}...)"
        if not _HOST_LABEL.fullmatch(label.lower()):
            return (
                f"label {label!r} is invalid: use letters, digits and '-', "
                "not starting or ending with '-' (RFC 1123)"
            )
    return None


def _label_problem(value: str, pattern: re.Pattern[str], kind: str, rule: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > 63:
        return f"is {len(value)} characters long (a {kind} has at most 63)"
    if not pattern.fullmatch(value):
        return f"{value!r} is not a valid {kind}: {rule}"
    return None


def namespace_problem(value: str) -> str | None:
    return _label_problem(
        value,
        _DNS1123_LABEL,
        "Kubernetes namespace name",
        "use lowercase letters, digits and '-', starting and ending with a letter or digit",
    )


def service_problem(value: str) -> str | None:
    return _label_problem(
        value,
        _DNS1035_LABEL,
        "Kubernetes Service name",
        "use lowercase letters, digits and '-', starting with a letter and ending with a "
        "letter or digit",
    )


def port_name_problem(value: str) -> str | None:
    return _label_problem(
        value,
        _DNS1123_LABEL,
        "Kubernetes port name",
        "use lowercase letters, digits and '-', starting and ending with a letter or digit",
    )


# --------------------------------------------------------------------------- entries

_CONFIG_KEYS = ("listener_port", "services")
_SERVICE_KEYS = ("host", "namespace", "service", "port_name", "port", "type", "local", "routes")
_ROUTE_KEYS = (
    "headers",
    "path_prefix",
    "namespace",
    "service",
    "port_name",
    "port",
    "local",
    "type",
)
_SERVICE_REF_KEYS = ("namespace", "service", "port_name", "port")
_MATCH_KEYS = ("exact", "present", "regex", "member")
_MOCK_KEYS = ("namespace", "service", "port_name", "resolved_port")
# Protocols a user picks with `type`; the others are for the in-cluster router.
_PROTOCOLS = (Protocol.HTTP.value, Protocol.GRPC.value)
# RFC 9110 token: what a header name may contain.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the host/route machinery owns: matching on them here would never do what it says.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _service_entry(checker: _Checker, node: Node, path: str) -> ServiceEntry | None:
    fields = checker.mapping(node, path, _SERVICE_KEYS, required=("host",))
    if not isinstance(node, MappingNode):
        return None
    host = checker.string(fields.get("host"), f"{path}.host", hostname_problem)
    if host is not None:
        checker.hosts.append((host.lower(), f"{path}.host", checker.location(fields["host"])))
    protocol: Protocol | None = DEFAULT_PROTOCOL
    inferred = "type" not in fields
    if not inferred:
        protocol = checker.choice(fields["type"], f"{path}.type", _PROTOCOLS, Protocol)
    target = _target(checker, node, fields, path, what="entry")
    routes: list[RouteEntry] = []
    routes_ok = True
    if "routes" in fields:
        items = checker.sequence(fields["routes"], f"{path}.routes")
        catch_all: tuple[str, Location] | None = None
        for index, item in enumerate(items):
            route_path = f"{path}.routes[{index}]"
            route = _route_entry(
                checker, item, route_path, protocol or DEFAULT_PROTOCOL, inferred=inferred
            )
            if catch_all is not None:
                checker.add(
                    item,
                    route_path,
                    f"never used: {catch_all[0]} at {catch_all[1]} matches every request before it",
                )
            if _matches_everything(item):
                checker.add(
                    item,
                    route_path,
                    "matches every request (no `headers`, no `path_prefix`), so the routes "
                    "after it and the entry's own target would never be used; give it "
                    "`headers` or `path_prefix`",
                )
                catch_all = catch_all or (route_path, checker.location(item))
                route = None
            if route is None:
                routes_ok = False
                continue
            routes.append(route)
    if target is None or not routes_ok or host is None or protocol is None:
        return None
    if isinstance(target, LocalAddress):
        return ServiceEntry(
            host=host.lower(),
            namespace="",
            service="",
            protocol=protocol,
            location=checker.location(node),
            local=target,
            routes=tuple(routes),
            inferred=inferred,
        )
    return ServiceEntry(
        host=host.lower(),
        namespace=target.namespace,
        service=target.service,
        protocol=protocol,
        port_name=target.port_name,
        port=target.port,
        location=checker.location(node),
        routes=tuple(routes),
        inferred=inferred,
    )


def _target(
    checker: _Checker, node: MappingNode, fields: dict[str, Node], path: str, what: str
) -> ServiceRef | LocalAddress | None:
    """Exactly one target: `local`, or a Service port (namespace, service, port_name|port)."""
    service_keys = [k for k in _SERVICE_REF_KEYS if k in fields]
    if "local" in fields and service_keys:
        checker.add(
            fields[service_keys[0]],
            f"{path}.{service_keys[0]}",
            f"two targets: give either `local` or a Service (`namespace`, `service`, "
            f"`port_name`/`port`), not both (`local` at {checker.location(fields['local'])})",
        )
        return None
    if "local" in fields:
        return _local_address(checker, fields["local"], f"{path}.local")
    if not service_keys:
        checker.add(
            node,
            path,
            f"the {what} has no target: give `local` (a port of a process on this machine) "
            "or a Service (`namespace`, `service` and `port_name` or `port`)",
        )
        return None
    return _service_ref(checker, node, fields, path)


def _service_ref(
    checker: _Checker, node: MappingNode, fields: dict[str, Node], path: str
) -> ServiceRef | None:
    ok = True
    for key in ("namespace", "service"):
        if key not in fields:
            checker.add(node, path, f"missing required key `{key}`")
            ok = False
    namespace = checker.string(fields.get("namespace"), f"{path}.namespace", namespace_problem)
    service = checker.string(fields.get("service"), f"{path}.service", service_problem)
    port_name: str | None = None
    port: int | None = None
    if "port_name" in fields and "port" in fields:
        checker.add(fields["port"], f"{path}.port", "give either `port_name` or `port`, not both")
        ok = False
    elif "port_name" in fields:
        port_name = checker.string(fields["port_name"], f"{path}.port_name", port_name_problem)
        ok = ok and port_name is not None
    elif "port" in fields:
        port = checker.port(fields["port"], f"{path}.port", None)
        ok = ok and port is not None
    # Neither: the Service's only port (one with several ports is reported with them).
    if not ok or namespace is None or service is None:
        return None
    return ServiceRef(namespace, service, port_name, port)


def _local_address(checker: _Checker, node: Node, path: str) -> LocalAddress | None:
    """`local:` as a port (127.0.0.1), `address:port`, `[v6]:port` or a unix socket path."""
    if isinstance(node, ScalarNode) and node.tag == _INT:
        port = checker.port(node, path, None)
        return None if port is None else LocalAddress("127.0.0.1", port)
    if not isinstance(node, ScalarNode) or node.tag != _STR:
        checker.add(
            node,
            path,
            f"expected a port, `address:port` or a unix socket path, got {_describe(node)}",
        )
        return None
    text = node.value.strip()
    if text.startswith("/"):
        if len(text.encode()) > 107:
            checker.add(node, path, "the unix socket path is too long (at most 107 bytes)")
            return None
        return LocalAddress(text, 0)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        checker.add(node, path, f"{text!r}: expected a port, `address:port` or a unix socket path")
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        checker.add(node, path, f"{host!r} is not an IP address (use 127.0.0.1 or localhost)")
        return None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        checker.add(node, path, f"port {port_text!r} is out of range (1..65535)")
        return None
    return LocalAddress(address, int(port_text))


def _route_entry(
    checker: _Checker, node: Node, path: str, default: Protocol, *, inferred: bool
) -> RouteEntry | None:
    fields = checker.mapping(node, path, _ROUTE_KEYS)
    if not isinstance(node, MappingNode):
        return None
    protocol: Protocol | None = default
    if "type" in fields:
        inferred = False
        protocol = checker.choice(fields["type"], f"{path}.type", _PROTOCOLS, Protocol)
    headers = _headers(checker, fields["headers"], f"{path}.headers") if "headers" in fields else ()
    prefix: str | None = "/"
    if "path_prefix" in fields:
        prefix = checker.string(fields["path_prefix"], f"{path}.path_prefix", _prefix_problem)
    target = _target(checker, node, fields, path, what="route")
    if target is None or headers is None or prefix is None or protocol is None:
        return None
    return RouteEntry(target, protocol, prefix, headers, checker.location(node), inferred)


def _matches_everything(node: Node) -> bool:
    """A route mapping without `headers` whose path prefix (if any) is `/`: judged on the
    keys alone, so that it is reported even when its target has problems of its own."""
    if not isinstance(node, MappingNode):
        return False
    keys = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
    if "headers" in keys:
        return False
    prefix = keys.get("path_prefix")
    return prefix is None or (isinstance(prefix, ScalarNode) and prefix.value == "/")


def _prefix_problem(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} must start with '/'"
    if any(c.isspace() for c in value):
        return f"{value!r} must not contain whitespace"
    return None


def _headers(checker: _Checker, node: Node, path: str) -> tuple[HeaderMatch, ...] | None:
    """`{name: value | true | {exact|present|regex|member: ...}}`; all must match."""
    if not isinstance(node, MappingNode):
        checker.add(node, path, f"expected a mapping of header names, got {_describe(node)}")
        return None
    if not node.value:
        checker.add(node, path, "is empty: give at least one header, or drop `headers`")
        return None
    found: list[HeaderMatch] = []
    ok = True
    seen: dict[str, Location] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
            checker.add(key_node, path, f"header names must be strings, got {_describe(key_node)}")
            ok = False
            continue
        name = key_node.value.lower()
        key_path = f"{path}.{key_node.value}"
        problem = _header_name_problem(name)
        if problem is None and name in seen:
            problem = f"header `{name}` is given twice (first at {seen[name]})"
        if problem is not None:
            checker.add(key_node, key_path, problem)
            ok = False
            continue
        seen[name] = checker.location(key_node)
        match = _header_match(checker, name, value_node, key_path)
        if match is None:
            ok = False
        else:
            found.append(match)
    return tuple(found) if ok else None


def _header_name_problem(name: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a valid header name"
    if name in _RESERVED_HEADERS:
        return f"`{name}` cannot be matched here (the host picks the entry)"
    return None


def _header_match(checker: _Checker, name: str, node: Node, path: str) -> HeaderMatch | None:
    if isinstance(node, ScalarNode) and node.tag == _BOOL:
        if node.value.lower() not in ("true", "yes", "on"):
            checker.add(node, path, "only `true` (the header is present) can be matched")
            return None
        return HeaderMatch(name, MatchKind.PRESENT)
    if isinstance(node, ScalarNode):
        value = checker.string(node, path, _value_problem)
        return None if value is None else HeaderMatch(name, MatchKind.EXACT, value)
    fields = checker.mapping(node, path, _MATCH_KEYS)
    if not isinstance(node, MappingNode):
        return None
    if len(fields) > 1 or not node.value:
        choices = ", ".join(f"`{k}`" for k in _MATCH_KEYS)
        checker.add(node, path, f"give exactly one of {choices}")
    if len(fields) != 1:
        return None  # unknown keys were reported by mapping()
    kind, value_node = next(iter(fields.items()))
    sub = f"{path}.{kind}"
    if kind == "present":
        if not (isinstance(value_node, ScalarNode) and value_node.tag == _BOOL):
            checker.add(value_node, sub, f"expected true, got {_describe(value_node)}")
            return None
        return _header_match(checker, name, value_node, sub)
    if kind == "regex":
        regex = checker.string(value_node, sub, _regex_problem)
        return None if regex is None else HeaderMatch(name, MatchKind.REGEX, regex)
    value = checker.string(value_node, sub, _member_problem if kind == "member" else _value_problem)
    if value is None:
        return None
    if kind == "member":
        return HeaderMatch(name, MatchKind.REGEX, member_regex(value))
    return HeaderMatch(name, MatchKind.EXACT, value)


def member_regex(member: str) -> str:
    """An RE2 regex for a whole header value that has `member` as one of its comma-separated
    list members (W3C baggage: `k1=v1;prop, dev=alice`): spaces around it and member
    properties (`;...`) allowed, `dev=alice2` or `xdev=alice` not matched."""
    return rf"(?:.*,)?[ \t]*{re.escape(member)}[ \t]*(?:;[^,]*)?(?:,.*)?"


def _value_problem(value: str) -> str | None:
    if not value:
        return "an empty value never matches; use `true` to match any value"
    if any(c in value for c in "\r\n\0"):
        return "must not contain line breaks"
    return None


def _member_problem(value: str) -> str | None:
    problem = _value_problem(value)
    if problem is None and ("," in value or "=" not in value):
        return f"{value!r}: expected one `key=value` list member (e.g. dev=alice)"
    return problem


def _regex_problem(value: str) -> str | None:
    if not value:
        return "an empty regex matches only an empty value; use `true` to match any value"
    try:
        re.compile(value)
    except re.error as exc:
        return f"invalid regex: {exc}"
    if any(look in value for look in ("(?=", "(?!", "(?<=", "(?<!")):
        return "lookarounds are not supported (Envoy matches with RE2)"
    return None


def _check_duplicate_hosts(checker: _Checker) -> None:
    # Checked on every valid host, even of entries with other errors: report all at once.
    first: dict[str, tuple[str, Location]] = {}
    for host, path, location in checker.hosts:
        earlier = first.setdefault(host, (path, location))
        if earlier[1] != location:
            checker.issues.append(
                ConfigIssue(
                    location,
                    path,
                    f"duplicate host {host!r}: also used by {earlier[0]} at {earlier[1]}",
                )
            )


def _mock_entry(checker: _Checker, node: Node, path: str) -> MockEntry | None:
    fields = checker.mapping(
        node, path, _MOCK_KEYS, required=("namespace", "service", "resolved_port")
    )
    if not isinstance(node, MappingNode):
        return None
    namespace = checker.string(fields.get("namespace"), f"{path}.namespace", namespace_problem)
    service = checker.string(fields.get("service"), f"{path}.service", service_problem)
    port_name: str | None = ""
    if "port_name" in fields:
        port_name = checker.string(
            fields["port_name"],
            f"{path}.port_name",
            lambda v: port_name_problem(v) if v else None,
            allow_null=True,
        )
    resolved = checker.port(fields.get("resolved_port"), f"{path}.resolved_port", None)
    if namespace is None or service is None or port_name is None or resolved is None:
        return None
    return MockEntry(namespace, service, port_name, resolved, location=checker.location(node))


def _check_duplicate_mocks(checker: _Checker, mocks: list[MockEntry]) -> None:
    seen: dict[tuple[str, str, str], MockEntry] = {}
    for mock in mocks:
        key = (mock.namespace, mock.service, mock.port_name)
        first = seen.setdefault(key, mock)
        if first is mock:
            continue
        assert mock.location is not None
        checker.issues.append(
            ConfigIssue(
                mock.location,
                f"mocks[{checker.item_index[mock.location]}]",
                f"duplicate mock for {mock.namespace}/{mock.service} port_name "
                f"'{mock.port_name}' (first defined at {first.location})",
            )
        )


# --------------------------------------------------------------------------- the checker

_T = TypeVar("_T")

_TAG_NAMES = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:map": "a mapping",
    "tag:yaml.org,2002:seq": "a list",
}


# libyaml's parser when PyYAML was built with it: ~8x faster on a 1,000-entry file (which
# `up --watch` re-reads on every save), with the same nodes and marks.
_BASE_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)
MAX_FILE_BYTES = 8 * 1024 * 1024  # services.yaml of 10,000 entries is ~1.5 MiB
MAX_FILE_SIZE_TEXT = "8 MiB"
MAX_ISSUES_SHOWN = 50  # a broken generator can make a million; the first ones say enough


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_SIZE_TEXT}, the limit for services.yaml and mocks.yaml"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{path}:{line}:{column}: not UTF-8 text ({exc.reason})") from None


# Characters YAML does not allow in a stream (a NUL byte, most C0 controls, lone
# surrogates...): found before parsing, so that the message points at them.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class _CoreSchemaLoader(_BASE_LOADER):  # type: ignore[misc,valid-type]
    """YAML 1.2's core schema for plain scalars, not 1.1's: `yes`, `on`, `5:0:1`,
    `1_000` and `017` mean what they say (text, text, text, text, the number 17)."""

    yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
):
    _CoreSchemaLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def _core_int(text: str) -> int:
    """The value of a core-schema integer (SafeConstructor's is 1.1's: `017` is octal)."""
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _describe(node: Node) -> str:
    name = _TAG_NAMES.get(node.tag, node.tag)
    if isinstance(node, ScalarNode) and node.tag != "tag:yaml.org,2002:null":
        return f"{name} ({node.value!r})" if node.tag == _STR else f"{name} ({node.value})"
    return name


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"


class _Checker:
    """Collects issues for one file; each method checks one node and returns its value."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[ConfigIssue] = []
        self.item_index: dict[Location, int] = {}  # list item location -> its index
        self.hosts: list[tuple[str, str, Location]] = []  # (host, path, location) seen
        self._constructor = SafeConstructor()

    def location(self, node: Node) -> Location:
        mark = node.start_mark
        return Location(self.filename, mark.line + 1, mark.column + 1)

    def add(self, node: Node, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.location(node), path, message))

    def raise_if_any(self) -> None:
        if self.issues:
            raise ConfigValidationError(self.issues)

    def document(self, text: str) -> Node:
        """The root node; a file that is not one YAML document stops here."""
        root = self._compose(text)
        if root is None:
            self.raise_if_any()
            raise AssertionError("no root node and no issue")  # pragma: no cover
        return root

    def _compose(self, text: str) -> Node | None:
        if bad := _NOT_PRINTABLE.search(text):
            line = text.count("\n", 0, bad.start()) + 1
            column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
            self.issues.append(
                ConfigIssue(
                    Location(self.filename, line, column),
                    "",
                    f"character U+{ord(bad.group()):04X} is not allowed in YAML",
                )
            )
            return None
        try:
            root = yaml.compose(text, Loader=_CoreSchemaLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                problem = f"{exc.context}, {exc.problem}"
            self.issues.append(
                ConfigIssue(
                    Location(self.filename, line, column), "", f"YAML syntax error: {problem}"
                )
            )
            return None
        except yaml.YAMLError as exc:
            self.issues.append(
                ConfigIssue(Location(self.filename, 1, 1), "", f"YAML syntax error: {exc}")
            )
            return None
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            self.issues.append(ConfigIssue(Location(self.filename, 1, 1), "", "the file is empty"))
            return None
        return root

    def mapping(
        self, node: Node, path: str, known: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        """The mapping's values by key; flags unknown, duplicate and missing keys."""
        if not isinstance(node, MappingNode):
            self.add(node, path, f"expected a mapping, got {_describe(node)}")
            return {}
        values: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                self.add(key_node, path, f"keys must be strings, got {_describe(key_node)}")
                continue
            key = key_node.value
            key_path = f"{path}.{key}" if path else key
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                suggestion = f" (did you mean `{hint[0]}`?)" if hint else ""
                self.add(
                    key_node,
                    key_path,
                    f"unknown key `{key}`{suggestion}; known keys: {', '.join(known)}",
                )
                continue
            if key in values:
                self.add(
                    key_node,
                    key_path,
                    f"duplicate key `{key}` (first at {self.location(values[key])})",
                )
                continue
            values[key] = value_node
        for key in required:
            if key not in values:
                self.add(node, path, f"missing required key `{key}`")
        return values

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.add(node, path, f"expected a list, got {_describe(node)}")
            return []
        for index, item in enumerate(node.value):
            self.item_index[self.location(item)] = index
        return list(node.value)

    def string(
        self,
        node: Node | None,
        path: str,
        problem: Callable[[str], str | None],
        allow_null: bool = False,
    ) -> str | None:
        if node is None:
            return None  # a missing required key is reported by mapping()
        if allow_null and isinstance(node, ScalarNode) and node.tag == _NULL:
            value = ""
        elif not isinstance(node, ScalarNode) or node.tag != _STR:
            hint = " (quote it if you mean the text)" if isinstance(node, ScalarNode) else ""
            self.add(node, path, f"expected a string, got {_describe(node)}{hint}")
            return None
        else:
            value = node.value
        reason = problem(value)
        if reason is not None:
            self.add(node, path, reason)
            return None
        return value

    def port(self, node: Node | None, path: str, default: _T) -> int | _T:
        if node is None:
            return default
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            self.add(node, path, f"expected a port number (1..65535), got {_describe(node)}")
            return default
        try:
            value = _core_int(node.value)
        except ValueError:
            self.add(node, path, f"expected a port number (1..65535), got {node.value!r}")
            return default
        if not 1 <= value <= 65535:
            self.add(node, path, f"{value} is out of range (1..65535)")
            return default
        return int(value)

    def choice(
        self, node: Node, path: str, choices: tuple[str, ...], convert: Callable[[str], _T]
    ) -> _T | None:
        if not isinstance(node, ScalarNode) or node.tag != _STR:
            self.add(node, path, f"expected one of {', '.join(choices)}; got {_describe(node)}")
            return None
        if node.value not in choices:
            hint = difflib.get_close_matches(node.value.lower(), choices, n=1, cutoff=0.6)
            suggestion = f" (did you mean `{hint[0]}`?)" if hint else ""
            self.add(
                node,
                path,
                f"unknown type {node.value!r}{suggestion}; expected one of {', '.join(choices)}",
            )
            return None
        return convert(node.value)
