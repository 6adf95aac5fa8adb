"""The JSON Schemas shipped for editors agree with the loader on the examples and on mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; only this test uses it
import pytest
import yaml

from localmesh.config import parse_config, parse_mocks
from localmesh.errors import ConfigError
from localmesh.schema import MOCKS_SCHEMA, SERVICES_SCHEMA, load_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def validator(name: str) -> Any:
    schema = load_schema(name)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_schemas_ship_inside_the_package() -> None:
    import localmesh.schema

    folder = Path(localmesh.schema.__file__).parent
    assert (folder / SERVICES_SCHEMA).is_file()
    assert (folder / MOCKS_SCHEMA).is_file()


def test_services_schema_accepts_the_example() -> None:
    document = yaml.safe_load((EXAMPLES / "services.yaml").read_text())
    assert list(validator(SERVICES_SCHEMA).iter_errors(document)) == []


def test_mocks_schema_accepts_the_example() -> None:
    document = yaml.safe_load((EXAMPLES / "mocks.yaml").read_text())
    assert list(validator(MOCKS_SCHEMA).iter_errors(document)) == []


GOOD_ENTRY = {"host": "a.localhost", "namespace": "a", "service": "a", "port": 80}


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"services": {}},
        {"services": [], "listen_port": 80},
        {"services": [], "listener_port": 0},
        {"services": [], "listener_port": 65536},
        {"services": [{**GOOD_ENTRY, "prot": 80}]},
        {"services": [{**GOOD_ENTRY, "port_name": "http"}]},
        {"services": [{**GOOD_ENTRY, "port": "80"}]},
        {"services": [{**GOOD_ENTRY, "port": 70000}]},
        {"services": [{**GOOD_ENTRY, "type": "tcp"}]},
        {"services": [{**GOOD_ENTRY, "host": "bad_host"}]},
        {"services": [{**GOOD_ENTRY, "host": "a.localhost:80"}]},
        {"services": [{**GOOD_ENTRY, "namespace": "Users"}]},
        {"services": [{**GOOD_ENTRY, "service": "1abc"}]},
        {"services": [{k: v for k, v in GOOD_ENTRY.items() if k != "namespace"}]},
        {"services": [{"host": "a"}]},
        {"services": [{**GOOD_ENTRY, "local": 3000}]},
        {"services": [{"host": "a", "local": 70000}]},
        {"services": [{"host": "a", "local": "example.com:80"}]},
        {"services": [{**GOOD_ENTRY, "routes": [{"local": 9090}]}]},
        {"services": [{**GOOD_ENTRY, "routes": [{"headers": {"x-dev": "a"}}]}]},
        {"services": [{**GOOD_ENTRY, "routes": [{"path_prefix": "v2", "local": 1}]}]},
        {"services": [{**GOOD_ENTRY, "routes": [{"headers": {}, "local": 1}]}]},
        {
            "services": [
                {
                    **GOOD_ENTRY,
                    "routes": [{"headers": {"x": {"regex": "a", "exact": "b"}}, "local": 1}],
                }
            ]
        },
        {
            "services": [
                {
                    **GOOD_ENTRY,
                    "routes": [
                        {
                            "headers": {"x": "a"},
                            "local": 1,
                            "port": 80,
                            "namespace": "b",
                            "service": "b",
                        }
                    ],
                }
            ]
        },
        {
            "services": [
                {**GOOD_ENTRY, "routes": [{"headers": {"x": "a"}, "local": 1, "verb": "GET"}]}
            ]
        },
    ],
)
def test_services_schema_and_loader_both_reject(document: dict[str, Any]) -> None:
    assert list(validator(SERVICES_SCHEMA).iter_errors(document)) != []
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(document) if document else "{}\n")


@pytest.mark.parametrize(
    "document",
    [
        {"services": [GOOD_ENTRY]},
        {"listener_port": 8080, "services": [{**GOOD_ENTRY, "type": "grpc"}]},
        {"services": [{"host": "b", "namespace": "b", "service": "b", "port_name": "h2c"}]},
        {"services": [{"host": "web.localhost", "local": 3000, "type": "http"}]},
        {
            "services": [
                {"host": "web", "local": "127.0.0.1:3000"},
                {"host": "u", "local": "/run/u.sock"},
            ]
        },
        {
            "services": [
                {
                    **GOOD_ENTRY,
                    "routes": [
                        {"headers": {"x-dev": "alice"}, "local": 9090, "type": "grpc"},
                        {
                            "headers": {"x-dev": True, "x-b": {"regex": "a.*"}},
                            "local": "localhost:9091",
                        },
                        {"headers": {"baggage": {"member": "dev=alice"}}, "local": 9092},
                        {
                            "path_prefix": "/v2/",
                            "namespace": "b",
                            "service": "b2",
                            "port_name": "http",
                        },
                    ],
                }
            ]
        },
    ],
)
def test_services_schema_and_loader_both_accept(document: dict[str, Any]) -> None:
    assert list(validator(SERVICES_SCHEMA).iter_errors(document)) == []
    parse_config(yaml.safe_dump(document))


@pytest.mark.parametrize(
    "document",
    [
        {"mock": []},
        {"mocks": [{"namespace": "a", "service": "a"}]},
        {"mocks": [{"namespace": "a", "service": "a", "resolved_port": 0}]},
        {"mocks": [{"namespace": "a", "service": "a", "port_name": "GRPC", "resolved_port": 1}]},
        {"mocks": [{"namespace": "a", "service": "a", "port": 1, "resolved_port": 1}]},
    ],
)
def test_mocks_schema_and_loader_both_reject(document: dict[str, Any]) -> None:
    assert list(validator(MOCKS_SCHEMA).iter_errors(document)) != []
    with pytest.raises(ConfigError):
        parse_mocks(yaml.safe_dump(document))


def test_an_entry_without_port_name_or_port_is_valid_for_both() -> None:
    """The Service's only port: services.yaml may leave the port out."""
    document = {"services": [{k: v for k, v in GOOD_ENTRY.items() if k != "port"}]}
    assert list(validator(SERVICES_SCHEMA).iter_errors(document)) == []
    parse_config(yaml.safe_dump(document))
