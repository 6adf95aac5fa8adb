"""Writes localmesh/xds/schema_table.py: the wire schema of the Envoy messages localmesh builds.

The table is read from envoy-data-plane's own metadata (field numbers, types, defaults,
enum names), so it cannot drift from the typed bindings: a unit test regenerates it and
compares. localmesh.xds.proto uses it to build and encode messages without importing
envoy-data-plane (0.4 s) or building its pydantic validators (0.4 s on first use).

    .venv/bin/python -m localmesh.xds.schema_gen       # rewrite the table

ROOTS lists the messages the builders construct (and what goes into their Any fields;
the bootstrap's admin and node: its envelope is plain JSON, Bootstrap itself reaches
hundreds of types);
every message and enum reachable from them through their fields is included.
"""

from __future__ import annotations

import importlib
import pprint
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "envoy.config.bootstrap.v3.Admin",
    "envoy.config.core.v3.Node",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.accesslog.v3.AccessLog",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
)
TABLE = Path(__file__).with_name("schema_table.py")
_PACKAGE = "envoy_data_plane."
_URL_PREFIX = "type.googleapis.com/"


def _load(name: str) -> Any:
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(_PACKAGE + module), cls)


def _key(cls: Any) -> str:
    return f"{cls.__module__.removeprefix(_PACKAGE)}.{cls.__name__}"


def _enum_row(cls: Any) -> dict[str, Any]:
    # Attribute name -> number, and number -> the name proto3 JSON prints.
    return {
        "values": {m.name: int(m) for m in cls},
        "json": {int(m): (getattr(m, "proto_name", None) or m.name) for m in cls},
    }


def collect() -> tuple[dict[str, Any], dict[str, Any]]:
    """(messages, enums) by key; a message row: type URL and its fields in encoding order:
    (name, number, type, repeated, reference, default, wrapped, map)."""
    from betterproto2 import Enum, Message
    from envoy_data_plane.message_pool import default_message_pool

    messages: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    pending = [_load(name) for name in ROOTS]
    while pending:
        cls = pending.pop()
        key = _key(cls)
        if key in messages:
            continue
        meta = cls._betterproto
        fields = []
        for name, fm in meta.meta_by_field_name.items():
            default = meta.default_gen[name]()
            if isinstance(default, Enum):
                default = int(default)
            elif isinstance(default, list | dict | Message):
                default = None
            ref = None
            target = meta.cls_by_field.get(name)
            if fm.unwrap is not None:
                target = fm.unwrap()
            map_row = None
            if fm.map_meta:
                key_meta, value_meta = fm.map_meta
                value_cls = meta.cls_by_field.get(f"{name}.value")
                value_ref = None
                if value_cls is not None and isinstance(value_cls, type):
                    if issubclass(value_cls, Message):
                        pending.append(value_cls)
                        value_ref = _key(value_cls)
                    elif issubclass(value_cls, Enum):
                        enums[_key(value_cls)] = _enum_row(value_cls)
                        value_ref = _key(value_cls)
                map_row = (key_meta.proto_type, value_meta.proto_type, value_ref)
            elif isinstance(target, type) and issubclass(target, Message):
                pending.append(target)
                ref = _key(target)
            elif isinstance(target, type) and issubclass(target, Enum):
                enums[_key(target)] = _enum_row(target)
                ref = _key(target)
            fields.append(
                (
                    name,
                    fm.number,
                    fm.proto_type,
                    bool(fm.repeated),
                    ref,
                    default,
                    fm.unwrap is not None,
                    map_row,
                )
            )
        url = default_message_pool.type_to_url.get(cls, "")
        messages[key] = (url.removeprefix(_URL_PREFIX), tuple(fields))
    return messages, enums


def generate() -> str:
    messages, enums = collect()
    body = pprint.pformat(dict(sorted(messages.items())), width=99, compact=True)
    enum_body = pprint.pformat(dict(sorted(enums.items())), width=99, compact=True)
    return (
        '"""Generated by localmesh.xds.schema_gen from envoy-data-plane: do not edit."""\n\n'
        "# ruff: noqa: E501\n"
        "# fmt: off\n"
        "from typing import Any\n\n"
        f"MESSAGES: dict[str, Any] = {body}\n\n"
        f"ENUMS: dict[str, Any] = {enum_body}\n"
    )


def main() -> None:
    TABLE.write_text(generate())
    print(f"wrote {TABLE}", file=sys.stderr)


if __name__ == "__main__":
    main()
