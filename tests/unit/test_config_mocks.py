"""mocks.yaml loading and the offline port resolver built on it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from localmesh.config import (
    ConfigValidationError,
    Location,
    MockConfig,
    MockEntry,
    load_config,
    load_mocks,
    parse_config,
    parse_mocks,
)
from localmesh.desired import Protocol
from localmesh.errors import TargetError
from localmesh.resolve import MockResolver, resolve_all

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def issues_of(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(ConfigValidationError) as info:
        parse_mocks(textwrap.dedent(text), "m.yaml")
    return [(i.location.line, i.location.column, i.path, i.message) for i in info.value.issues]


def test_seed_mocks_example() -> None:
    mocks = load_mocks(EXAMPLES / "mocks.yaml")
    assert mocks == MockConfig(
        (
            MockEntry("users", "users-api", "grpc", 50051),
            MockEntry("billing", "billing-api", "http", 8080),
            MockEntry("admin", "admin-web", "", 8080),
        )
    )
    assert mocks.source == EXAMPLES / "mocks.yaml"
    assert mocks.mocks[2].location == Location(str(EXAMPLES / "mocks.yaml"), 13, 5)


def test_port_name_may_be_omitted_or_null() -> None:
    mocks = parse_mocks(
        "mocks:\n"
        "  - {namespace: a, service: a, resolved_port: 1}\n"
        "  - {namespace: b, service: b, port_name: null, resolved_port: 2}\n"
        "  - {namespace: c, service: c, port_name: ~, resolved_port: 3}\n"
    )
    assert [m.port_name for m in mocks.mocks] == ["", "", ""]


def test_empty_mocks_list_is_valid() -> None:
    assert parse_mocks("mocks: []\n") == MockConfig(())


def test_every_mock_error_at_once() -> None:
    got = issues_of(
        """\
        mock: []
        mocks:
          - namespace: Users
            service: users-api
            port_name: GRPC
            resolved_port: 70000
          - service: billing-api
            port: 80
          - {namespace: a, service: a, port_name: http, resolved_port: 1}
          - {namespace: a, service: a, port_name: http, resolved_port: 2}
          - 3
        """
    )
    assert [(line, column, path) for line, column, path, _ in got] == [
        (1, 1, "mock"),
        (3, 16, "mocks[0].namespace"),
        (5, 16, "mocks[0].port_name"),
        (6, 20, "mocks[0].resolved_port"),
        (7, 5, "mocks[1]"),
        (7, 5, "mocks[1]"),
        (8, 5, "mocks[1].port"),
        (10, 5, "mocks[3]"),
        (11, 5, "mocks[4]"),
    ]
    messages = [message for *_, message in got]
    assert "did you mean `mocks`?" in messages[0]
    assert messages[3] == "70000 is out of range (1..65535)"
    assert messages[4] == "missing required key `namespace`"
    assert messages[5] == "missing required key `resolved_port`"
    assert "did you mean `port_name`?" in messages[6]
    assert messages[7] == ("duplicate mock for a/a port_name 'http' (first defined at m.yaml:9:5)")
    assert messages[8] == "expected a mapping, got an integer (3)"


def test_missing_mocks_key_and_empty_file() -> None:
    assert issues_of("listener_port: 80\n")[1][2:] == ("", "missing required key `mocks`")
    assert issues_of("")[0][3] == "the file is empty"


def test_load_mocks_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("mocks:\n  - {namespace: a, service: a, resolved_port: '1'}\n")
    with pytest.raises(ConfigValidationError) as info:
        load_mocks(path)
    assert str(info.value) == (
        f"{path}:2:47: mocks[0].resolved_port: expected a port number (1..65535), "
        "got a string ('1')"
    )


# -- MockResolver ----------------------------------------------------------------------------


def test_mock_resolver_resolves_the_seed_example() -> None:
    config = load_config(EXAMPLES / "services.yaml")
    resolver = MockResolver(load_mocks(EXAMPLES / "mocks.yaml"))
    ports = resolve_all(config, resolver)
    assert [(e.host, ports[e]) for e in config.services] == [
        ("users-api.localhost", 50051),
        ("billing-api.localhost", 8080),
        ("admin.localhost", 8080),
    ]


def test_empty_port_name_matches_entries_with_a_port_number_only() -> None:
    mocks = parse_mocks("mocks:\n  - {namespace: a, service: a, port_name: '', resolved_port: 9}\n")
    resolver = MockResolver(mocks)
    by_number = parse_config("services:\n  - {host: x, namespace: a, service: a, port: 80}\n")
    assert resolver.resolve(by_number.services[0]) == 9
    by_name = parse_config("services:\n  - {host: x, namespace: a, service: a, port_name: p}\n")
    with pytest.raises(TargetError):
        resolver.resolve(by_name.services[0])


def test_missing_mock_names_the_entry_and_the_mocks_file(tmp_path: Path) -> None:
    mocks_path = tmp_path / "mocks.yaml"
    mocks_path.write_text(
        "mocks:\n  - {namespace: a, service: a, port_name: http, resolved_port: 1}\n"
    )
    config = parse_config(
        "services:\n"
        "  - {host: one.localhost, namespace: a, service: a, port_name: http}\n"
        "  - {host: two.localhost, namespace: a, service: a, port_name: grpc, type: grpc}\n"
        "  - {host: three.localhost, namespace: b, service: b, port: 8080}\n",
        "services.yaml",
    )
    assert config.services[1].protocol is Protocol.GRPC
    with pytest.raises(TargetError) as info:
        resolve_all(config, MockResolver(load_mocks(mocks_path)))
    assert str(info.value).splitlines() == [
        f"no mock for two.localhost -> a/a:grpc (services.yaml:3:5) in {mocks_path}: "
        "add an entry with namespace: a, service: a, port_name: grpc",
        f"no mock for three.localhost -> b/b:8080 (services.yaml:4:5) in {mocks_path}: "
        'add an entry with namespace: b, service: b, port_name: ""',
    ]
