"""services.yaml `routes:` and `local:`: what loads, and every mistake with file:line:column."""

from __future__ import annotations

import re

import pytest

from localmesh.config import LocalAddress, ServiceRef, member_regex, parse_config
from localmesh.desired import HeaderMatch, MatchKind, Protocol
from localmesh.errors import ConfigError

GOOD = """\
listener_port: 8080
services:
  - host: billing-api.localhost
    namespace: billing
    service: billing-api
    port_name: http
    routes:
      - headers: {x-dev: alice}
        local: 9090
      - headers: {X-Trace: true, baggage: {member: dev=alice}}
        local: "[::1]:9091"
        type: grpc
      - headers: {x-v: {regex: "v[0-9]+"}}
        local: /tmp/app.sock
      - path_prefix: /v2/
        namespace: billing
        service: billing-api-v2
        port: 8080
  - host: web.localhost
    local: localhost:3000
    type: grpc
"""


def test_routes_and_local_targets_load() -> None:
    billing, web = parse_config(GOOD).services
    assert [r.target for r in billing.routes] == [
        LocalAddress("127.0.0.1", 9090),
        LocalAddress("::1", 9091),
        LocalAddress("/tmp/app.sock", 0),
        ServiceRef("billing", "billing-api-v2", None, 8080),
    ]
    first, second, third, fourth = billing.routes
    assert first.headers == (HeaderMatch("x-dev", MatchKind.EXACT, "alice"),)
    assert first.protocol is Protocol.HTTP  # the entry's type
    assert second.protocol is Protocol.GRPC
    assert second.headers[0] == HeaderMatch("x-trace", MatchKind.PRESENT)
    assert second.headers[1].kind is MatchKind.REGEX
    assert third.headers == (HeaderMatch("x-v", MatchKind.REGEX, "v[0-9]+"),)
    assert fourth.path_prefix == "/v2/" and fourth.headers == ()
    assert (web.local, web.protocol, web.forwarded) == (
        LocalAddress("127.0.0.1", 3000),
        Protocol.GRPC,
        False,
    )
    assert web.backends() == ()
    # The entry's own Service and the route's Service are forwarded, without routes.
    assert [(b.service, b.routes) for b in billing.backends()] == [
        ("billing-api", ()),
        ("billing-api-v2", ()),
    ]


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("dev=alice", True),
        ("k=v,dev=alice", True),
        ("k=v, dev=alice ;prop=1, z=1", True),
        ("dev=alice2", False),
        ("xdev=alice", False),
        ("dev=bob", False),
    ],
)
def test_member_regex_matches_one_list_member(value: str, matches: bool) -> None:
    assert bool(re.fullmatch(member_regex("dev=alice"), value)) is matches


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "s.yaml")
    return str(caught.value).splitlines()


ENTRY = """\
services:
  - host: a.localhost
    namespace: a
    service: a
    port: 80
    routes:
"""


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (
            "      - {headers: {x: a}, local: 9090, verb: GET}\n",
            "s.yaml:7:40: services[0].routes[0].verb: unknown key `verb`",
        ),
        (
            "      - {headers: {x: a}, local: 70000}\n",
            "s.yaml:7:34: services[0].routes[0].local: 70000 is out of range (1..65535)",
        ),
        (
            "      - {headers: {x: a}, local: '127.0.0.1:0'}\n",
            "s.yaml:7:34: services[0].routes[0].local: port '0' is out of range (1..65535)",
        ),
        (
            "      - {headers: {x: a}}\n",
            "s.yaml:7:9: services[0].routes[0]: the route has no target",
        ),
        (
            "      - {headers: {x: a}, local: 1, namespace: b, service: b, port: 1}\n",
            "s.yaml:7:48: services[0].routes[0].namespace: two targets",
        ),
        (
            "      - {local: 9090}\n",
            "s.yaml:7:9: services[0].routes[0]: matches every request",
        ),
        (
            "      - {path_prefix: /, local: 9090}\n",
            "s.yaml:7:9: services[0].routes[0]: matches every request",
        ),
        (
            "      - {headers: {x: a}, local: example.com:80}\n",
            "s.yaml:7:34: services[0].routes[0].local: 'example.com' is not an IP address",
        ),
        (
            "      - {headers: {x: {regex: '('}}, local: 1}\n",
            "s.yaml:7:31: services[0].routes[0].headers.x.regex: invalid regex",
        ),
        (
            "      - {headers: {x: {regex: '(?=a)b'}}, local: 1}\n",
            "s.yaml:7:31: services[0].routes[0].headers.x.regex: lookarounds are not supported",
        ),
        (
            "      - {headers: {x: {}}, local: 1}\n",
            "s.yaml:7:23: services[0].routes[0].headers.x: give exactly one of `exact`",
        ),
        (
            "      - {headers: {x: {exact: a, regex: b}}, local: 1}\n",
            "s.yaml:7:23: services[0].routes[0].headers.x: give exactly one of `exact`",
        ),
        (
            "      - {headers: {x: {exakt: a}}, local: 1}\n",
            "s.yaml:7:24: services[0].routes[0].headers.x.exakt: unknown key `exakt`",
        ),
        (
            "      - {headers: {host: a}, local: 1}\n",
            "s.yaml:7:20: services[0].routes[0].headers.host: `host` cannot be matched here",
        ),
        (
            "      - {headers: {x: false}, local: 1}\n",
            "s.yaml:7:23: services[0].routes[0].headers.x: only `true`",
        ),
        (
            "      - {path_prefix: v2, local: 1}\n",
            "s.yaml:7:23: services[0].routes[0].path_prefix: 'v2' must start with '/'",
        ),
    ],
)
def test_route_mistakes_name_file_line_and_column(routes: str, expected: str) -> None:
    found = errors(ENTRY + routes)
    assert any(line.startswith(expected) for line in found), found


def test_a_route_after_a_catch_all_is_reported_too() -> None:
    found = errors(ENTRY + "      - {local: 1}\n      - {headers: {x: a}, local: 2}\n")
    assert found[0].startswith("s.yaml:7:9: services[0].routes[0]: matches every request")
    assert found[1].startswith(
        "s.yaml:8:9: services[0].routes[1]: never used: services[0].routes[0] at s.yaml:7:9"
    )


def test_an_entry_needs_exactly_one_target() -> None:
    assert errors("services:\n  - host: a\n") == [
        "s.yaml:2:5: services[0]: the entry has no target: give `local` (a port of a "
        "process on this machine) or a Service (`namespace`, `service` and `port_name` or "
        "`port`)"
    ]
    found = errors("services:\n  - {host: a, local: 3000, namespace: a, service: a, port: 1}\n")
    assert found[0].startswith("s.yaml:2:39: services[0].namespace: two targets")
