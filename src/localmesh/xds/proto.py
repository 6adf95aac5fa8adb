"""Envoy messages as localmesh builds them: plain objects, encoded by the generated schema.

The builders (localmesh.xds.resources) construct their messages through these types instead
of envoy-data-plane's classes: the same field names, values and wrapped types (a Duration
field takes a timedelta, a BoolValue field a bool), the same protobuf bytes, but neither the
import of the typed bindings (0.4 s) nor their pydantic validation (0.4 s on first use).
`dump-envoy-config`, `up`'s daemon and the in-cluster router (its listeners and the
bootstrap too) therefore never load envoy-data-plane; only tests compare with it.

    Cluster = message_type("envoy.config.cluster.v3.Cluster")
    cluster = Cluster(name="a", connect_timeout=timedelta(seconds=1))
    cluster.name, cluster.load_assignment     # set value, else the field's default
    encode(cluster) -> bytes                  # what the typed message's bytes() gives
    type_url(cluster) -> str
    Kind = enum_type("envoy.config.cluster.v3.ClusterDiscoveryType"); Kind.EDS -> 3

Unknown field names raise TypeError/AttributeError, as the typed classes do; the values
are not validated (the builders are the only callers and tests compare with Envoy itself).
"""

from __future__ import annotations

import struct
from datetime import timedelta
from typing import Any

from localmesh.xds.schema_table import ENUMS, MESSAGES

URL_PREFIX = "type.googleapis.com/"
# (name, number, proto type, repeated, reference, default, wrapped, map row)
Field = tuple[str, int, str, bool, str | None, Any, bool, tuple[str, str, str | None] | None]

VARINT = frozenset({"enum", "bool", "int32", "int64", "uint32", "uint64"})
ZIGZAG = frozenset({"sint32", "sint64"})
FIXED = {
    "double": ("<d", 1, 8),
    "fixed64": ("<Q", 1, 8),
    "sfixed64": ("<q", 1, 8),
    "float": ("<f", 5, 4),
    "fixed32": ("<I", 5, 4),
    "sfixed32": ("<i", 5, 4),
}
PACKED = VARINT | ZIGZAG | frozenset(FIXED)
DURATION = "google.protobuf.Duration"

_fields_by_name: dict[str, dict[str, Field]] = {}


def fields(key: str) -> tuple[Field, ...]:
    row: tuple[Field, ...] = MESSAGES[key][1]
    return row


def field_map(key: str) -> dict[str, Field]:
    found = _fields_by_name.get(key)
    if found is None:
        found = {f[0]: f for f in fields(key)}
        _fields_by_name[key] = found
    return found


def _default(field: Field) -> Any:
    _, _, proto_type, repeated, _, default, _, map_row = field
    if repeated:
        return []
    if map_row is not None:
        return {}
    if proto_type == "message":
        return None
    return default


class Message:
    """One message: its schema key and the fields set on it."""

    __slots__ = ("_key", "_values")
    _key: str
    _values: dict[str, Any]

    def __init__(self, key: str, values: dict[str, Any]) -> None:
        known = field_map(key)
        for name in values:
            if name not in known:
                raise TypeError(f"{key} has no field {name!r}")
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_values", values)

    @property
    def key(self) -> str:
        return self._key

    def __getattr__(self, name: str) -> Any:
        values = self._values
        if name in values:
            return values[name]
        field = field_map(self._key).get(name)
        if field is None:
            raise AttributeError(f"{self._key} has no field {name!r}")
        return _default(field)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in field_map(self._key):
            raise AttributeError(f"{self._key} has no field {name!r}")
        self._values[name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and encode(self) == encode(other)

    def __hash__(self) -> int:
        return hash(encode(self))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{self._key.rpartition('.')[2]}({inner})"


class MessageType:
    """Constructor of one message type: `Cluster(name=...)`."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        if key not in MESSAGES:
            raise KeyError(f"{key} is not in the schema table: add it to schema_gen.ROOTS")
        self.key = key

    def __call__(self, **values: Any) -> Message:
        return Message(self.key, values)


class EnumType:
    """An enum's values by name: `ClusterDiscoveryType.EDS` is 3."""

    __slots__ = ("key", "values")

    def __init__(self, key: str) -> None:
        self.key = key
        self.values: dict[str, int] = ENUMS[key]["values"]

    def __getattr__(self, name: str) -> int:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"{self.key} has no value {name!r}") from None


def message_type(key: str) -> MessageType:
    return MessageType(key)


def enum_type(key: str) -> EnumType:
    return EnumType(key)


def type_url(msg: Message) -> str:
    url: str = MESSAGES[msg.key][0]
    return URL_PREFIX + url


def load_typed_bindings() -> None:
    """Import the envoy-data-plane modules of every type in the table: their classes
    register themselves, so typed `Any`s holding them can be unpacked (tests)."""
    import importlib

    for module in sorted({key.rpartition(".")[0] for key in MESSAGES}):
        importlib.import_module("envoy_data_plane." + module)


def typed_class(type_url: str) -> Any:
    """envoy-data-plane's class for `type_url`, its bindings loaded first (tests, dumps of
    hand-made resources: never on a serving path)."""
    from envoy_data_plane.message_pool import default_message_pool

    load_typed_bindings()
    return default_message_pool.url_to_type[type_url]


# -- encoding ------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """One length-delimited field (message, string or bytes) with its key and length."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def _wrapped(ref: str, value: Any) -> Message:
    """The message a wrapped value stands for (a timedelta, a bool, an int...)."""
    if ref == DURATION:
        assert isinstance(value, timedelta)
        total_us = value // timedelta(microseconds=1)
        return Message(ref, {"seconds": int(total_us / 1e6), "nanos": int((total_us % 1e6) * 1e3)})
    return Message(ref, {"value": value})


def _scalar(proto_type: str, ref: str | None, wrapped: bool, value: Any) -> tuple[int, bytes]:
    """(wire type, encoded value without key) of one non-repeated value."""
    if proto_type == "message":
        if wrapped and ref is not None:
            value = _wrapped(ref, value)
        if isinstance(value, Message):
            body = encode(value)
        else:  # a typed envoy-data-plane message set on one of ours: same bytes, slower
            from localmesh.xds.codec import encode as encode_any

            body = encode_any(value)
        return 2, varint(len(body)) + body
    return value_bytes(proto_type, value)


def value_bytes(proto_type: str, value: Any) -> tuple[int, bytes]:
    """(wire type, encoded value without key) of a string, bytes or number: written the same
    for localmesh's messages and typed ones (localmesh.xds.codec)."""
    if proto_type == "string":
        raw = value.encode("utf-8")
        return 2, varint(len(raw)) + raw
    if proto_type == "bytes":
        return 2, varint(len(value)) + bytes(value)
    if proto_type in VARINT:
        return 0, varint(int(value))
    if proto_type in ZIGZAG:
        return 0, varint(value << 1 if value >= 0 else (value << 1) ^ (~0))
    fmt, wire, _ = FIXED[proto_type]
    return wire, struct.pack(fmt, value)


def packed_item(proto_type: str, value: Any) -> bytes:
    """One element of a packed repeated number field."""
    if proto_type in VARINT:
        return varint(int(value))
    if proto_type in ZIGZAG:
        return varint(value << 1 if value >= 0 else (value << 1) ^ (~0))
    return struct.pack(FIXED[proto_type][0], value)


def packed_field(number: int, proto_type: str, values: list[Any]) -> bytes:
    """A repeated number field, packed into one length-delimited field."""
    return field_bytes(number, b"".join(packed_item(proto_type, v) for v in values))


def map_field(number: int, key: tuple[int, bytes], value: tuple[int, bytes]) -> bytes:
    """One entry of a map field, from the (wire type, bytes) of its key and of its value."""
    entry = varint((1 << 3) | key[0]) + key[1] + varint((2 << 3) | value[0]) + value[1]
    return field_bytes(number, entry)


def encode(msg: Message) -> bytes:
    """The protobuf encoding of `msg`: fields in the typed class's order, defaults left out,
    byte for byte what envoy-data-plane writes for the same message."""
    values = msg._values
    out = bytearray()
    for name, number, proto_type, repeated, ref, default, wrapped, map_row in fields(msg.key):
        value = values.get(name)
        if value is None:
            continue
        if repeated:
            if not value:
                continue
            if proto_type in PACKED:
                out += packed_field(number, proto_type, value)
                continue
            for item in value:
                wire, body = _scalar(proto_type, ref, wrapped, item)
                out += varint((number << 3) | wire) + body
            continue
        if map_row is not None:
            if not value:
                continue
            key_type, value_type, value_ref = map_row
            for k, v in value.items():
                key = _scalar(key_type, None, False, k)
                out += map_field(number, key, _scalar(value_type, value_ref, False, v))
            continue
        if default is not None and value == default:
            continue
        wire, body = _scalar(proto_type, ref, wrapped, value)
        out += varint((number << 3) | wire) + body
    return bytes(out)


__all__ = [
    "EnumType",
    "Message",
    "MessageType",
    "encode",
    "enum_type",
    "field_bytes",
    "load_typed_bindings",
    "map_field",
    "message_type",
    "packed_field",
    "packed_item",
    "type_url",
    "value_bytes",
    "varint",
]
