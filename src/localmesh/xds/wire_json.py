"""Proto3 JSON of encoded resources, straight from their wire bytes: what `to_dict` gives.

`dump-envoy-config` prints every resource of a snapshot, which holds them as bytes.
betterproto2's `parse` + `to_dict` re-validates every nested message with pydantic and
resolves type hints per call: 13 s for 1,000 entries. This walks the generated schema
table (localmesh.xds.schema_table, read from envoy-data-plane's own metadata) and writes the
same dict (a unit test checks equality on every resource the builders produce), without
importing envoy-data-plane. The well-known types with a JSON form of their own (Duration,
wrappers, Struct, Value, Any) are written as betterproto2 writes them.

    to_json(message, data) -> dict    message: a schema key ("envoy.config.cluster.v3.Cluster")
                                      or a typed envoy-data-plane class
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from typing import Any

from localmesh.xds.proto import FIXED, URL_PREFIX, Field, fields
from localmesh.xds.schema_table import ENUMS, MESSAGES

_INT_64 = frozenset({"int64", "uint64", "sint64", "fixed64", "sfixed64"})
_SIGNED_VARINT = frozenset({"int32", "int64"})
_ZIGZAG = frozenset({"sint32", "sint64"})
_WRAPPERS = frozenset(
    "google.protobuf." + name
    for name in (
        "BoolValue",
        "BytesValue",
        "DoubleValue",
        "FloatValue",
        "Int32Value",
        "Int64Value",
        "StringValue",
        "UInt32Value",
        "UInt64Value",
    )
)
# Types whose JSON is not a plain object of their fields (`to_dict` of their own).
_OWN_JSON = _WRAPPERS | {
    "google.protobuf." + name for name in ("Any", "Duration", "ListValue", "Struct", "Value")
}
_PACKAGE = "envoy_data_plane."

# Per message: field number -> field row.
_by_number: dict[str, dict[int, Field]] = {}
_key_by_url: dict[str, str] = {}


def key_of(message: str | type) -> str:
    """The schema key of a typed class (or the key itself)."""
    if isinstance(message, str):
        return message
    return f"{message.__module__.removeprefix(_PACKAGE)}.{message.__name__}"


def key_by_url(type_url: str) -> str | None:
    if not _key_by_url:
        _key_by_url.update({URL_PREFIX + row[0]: key for key, row in MESSAGES.items()})
    return _key_by_url.get(type_url)


def _numbers(key: str) -> dict[int, Field]:
    found = _by_number.get(key)
    if found is None:
        found = {f[1]: f for f in fields(key)}
        _by_number[key] = found
    return found


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def records(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of each field on the wire."""
    pos, end = 0, len(data)
    value: Any
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value = data[pos : pos + size]
            pos += size
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _dump_float(value: float) -> float | str:
    # As betterproto2 writes floats: JSON has no literal for these three.
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    if math.isnan(value):
        return "NaN"
    return value


def _scalar(proto_type: str, value: Any, ref: str | None) -> Any:
    """The JSON of one decoded non-message value (`value` is an int for varints, bytes
    for fixed-width and length-delimited ones)."""
    if proto_type in FIXED:
        number = struct.unpack(FIXED[proto_type][0], value)[0]
        if proto_type in ("float", "double"):
            return _dump_float(number)
        return str(number) if proto_type in _INT_64 else number
    if proto_type == "string":
        return bytes(value).decode("utf-8")
    if proto_type == "bytes":
        return base64.b64encode(value).decode("utf8")
    if proto_type in _ZIGZAG:
        value = (value >> 1) ^ -(value & 1)
    elif proto_type in _SIGNED_VARINT and value >= 1 << 63:
        value -= 1 << 64
    elif proto_type == "uint32":
        value &= 0xFFFFFFFF
    if proto_type == "bool":
        return bool(value)
    if proto_type == "enum":
        names: dict[int, str] = ENUMS[ref]["json"] if ref is not None else {}
        return names.get(value, value)
    if proto_type == "int32" and value >= 1 << 31:
        value -= 1 << 32
    return str(value) if proto_type in _INT_64 else value


def _plain(key: str, data: bytes) -> dict[int, Any]:
    """A small message's fields by number, as python values (well-known types)."""
    numbers = _numbers(key)
    found: dict[int, Any] = {}
    for number, _, raw in records(data):
        field = numbers.get(number)
        if field is None:
            continue
        _, _, proto_type, repeated, ref, _, _, _ = field
        if proto_type == "message":
            value = _message(ref or "", bytes(raw))
        elif proto_type in ("float", "double"):  # the number itself, not its JSON
            value = struct.unpack(FIXED[proto_type][0], raw)[0]
        else:
            value = _scalar(proto_type, raw, ref)
        if repeated:
            found.setdefault(number, []).append(value)
        else:
            found[number] = value
    return found


def _duration(data: bytes) -> str:
    values = _plain("google.protobuf.Duration", data)
    seconds, nanos = int(values.get(1, 0)), int(values.get(2, 0))
    if nanos == 0:
        return f"{seconds}s"
    text = f"{nanos:09d}".rstrip("0")
    return f"{seconds}.{text.ljust(3, '0')}s"


def _wrapper(key: str, data: bytes) -> Any:
    value = _plain(key, data).get(1)
    if value is not None:
        return value
    return fields(key)[0][5]  # the field's default: False, 0, ""


def _struct(data: bytes) -> dict[str, Any]:
    # google.protobuf.Struct: fields = 1, a map<string, Value> (entry: key = 1, value = 2)
    output: dict[str, Any] = {}
    for number, _, raw in records(data):
        if number != 1:
            continue
        key, value = "", None
        for entry_number, _, entry_raw in records(bytes(raw)):
            if entry_number == 1:
                key = bytes(entry_raw).decode("utf-8")
            elif entry_number == 2:
                value = _value(bytes(entry_raw))
        output[key] = value
    return output


def _value(data: bytes) -> Any:
    # google.protobuf.Value: null = 1, number = 2, string = 3, bool = 4, struct = 5, list = 6
    values = _plain("google.protobuf.Value", data)
    if 1 in values:
        return None
    for number in (4, 2, 3, 6, 5):
        if number in values:
            return values[number]
    return None


def _message(key: str, data: bytes) -> Any:
    if key == "google.protobuf.Any":
        return _any(data)
    if key == "google.protobuf.Duration":
        return _duration(data)
    if key in _WRAPPERS:
        return _wrapper(key, data)
    if key == "google.protobuf.Struct":
        return _struct(data)
    if key == "google.protobuf.Value":
        return _value(data)
    if key == "google.protobuf.ListValue":
        return _plain("google.protobuf.ListValue", data).get(1, [])
    return to_json(key, data)


def _any(data: bytes) -> dict[str, Any]:
    type_url, value = "", b""
    for number, _, raw in records(data):
        if number == 1:
            type_url = bytes(raw).decode("utf-8")
        elif number == 2:
            value = bytes(raw)
    output: dict[str, Any] = {"@type": type_url}
    if not type_url:
        return output
    key = key_by_url(type_url)
    if key is None:
        return _typed_any(type_url, value)
    if key in _OWN_JSON:
        output["value"] = _message(key, value)
    else:
        output.update(to_json(key, value))
    return output


def _typed_any(type_url: str, value: bytes) -> dict[str, Any]:
    """An Any of a type the schema table does not hold (hand-made resources in tests):
    the typed bindings decode it."""
    import betterproto2
    from envoy_data_plane.google.protobuf import Any as AnyMessage

    from localmesh.xds.proto import load_typed_bindings

    load_typed_bindings()
    found: dict[str, Any] = AnyMessage(type_url=type_url, value=value).to_dict(
        casing=betterproto2.Casing.SNAKE
    )
    return found


def to_json(message: str | type, data: bytes) -> dict[str, Any]:
    """What `cls.parse(data).to_dict(casing=Casing.SNAKE)` returns, without either."""
    key = key_of(message)
    if key in _OWN_JSON:
        return dict(_message(key, data))
    numbers = _numbers(key)
    output: dict[str, Any] = {}
    for number, wire, raw in records(data):
        field = numbers.get(number)
        if field is None:
            continue  # unknown to these bindings: to_dict drops it too
        name, _, proto_type, repeated, ref, _, _, map_row = field
        name = name.rstrip("_")
        if map_row is not None:
            key_type, value_type, value_ref = map_row
            entry_key: Any = None
            item: Any = None
            for entry_number, _, entry_raw in records(bytes(raw)):
                if entry_number == 1:
                    entry_key = _scalar(key_type, entry_raw, None)
                elif entry_number == 2:
                    item = _field_value(value_type, value_ref, entry_raw)
            output.setdefault(name, {})[entry_key] = item
        elif repeated:
            items = output.setdefault(name, [])
            if wire == 2 and proto_type not in ("message", "string", "bytes"):
                items.extend(_packed(proto_type, bytes(raw), ref))
            else:
                items.append(_field_value(proto_type, ref, raw))
        else:
            output[name] = _field_value(proto_type, ref, raw)
    return output


def _field_value(proto_type: str, ref: str | None, raw: Any) -> Any:
    if proto_type == "message":
        return _message(ref or "", bytes(raw))
    return _scalar(proto_type, raw, ref)


def _packed(proto_type: str, data: bytes, ref: str | None) -> list[Any]:
    values: list[Any] = []
    pos = 0
    if proto_type in FIXED:
        size = FIXED[proto_type][2]
        while pos < len(data):
            values.append(_scalar(proto_type, data[pos : pos + size], ref))
            pos += size
        return values
    while pos < len(data):
        number, pos = _varint(data, pos)
        values.append(_scalar(proto_type, number, ref))
    return values
