"""Proto3 JSON of encoded resources, straight from their wire bytes: what `to_dict` gives.

`dump-envoy-config` prints every resource of a snapshot, which holds them as the bytes
localmesh.xds.codec wrote. betterproto2's `parse` + `to_dict` re-validates every nested
message with pydantic and resolves type hints per call: 13 s for 1,000 entries. This
walks the same field metadata as the codec and writes the same dict (a unit test checks
equality on every resource the builders produce). Well-known types with a JSON form of
their own (Duration, wrappers, Struct, ...) are small and go through betterproto2.

    to_json(message_class, data) -> dict
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import betterproto2
from betterproto2 import Message

_INT_64 = frozenset(betterproto2.INT_64_TYPES)
_SIGNED_VARINT = frozenset({betterproto2.TYPE_INT32, betterproto2.TYPE_INT64})
_ZIGZAG = frozenset({betterproto2.TYPE_SINT32, betterproto2.TYPE_SINT64})
_VARINT = frozenset(
    {betterproto2.TYPE_ENUM, betterproto2.TYPE_BOOL, betterproto2.TYPE_UINT32}
    | {betterproto2.TYPE_UINT64}
    | _SIGNED_VARINT
    | _ZIGZAG
)
_FIXED = {
    betterproto2.TYPE_DOUBLE: ("<d", 8),
    betterproto2.TYPE_FIXED64: ("<Q", 8),
    betterproto2.TYPE_SFIXED64: ("<q", 8),
    betterproto2.TYPE_FLOAT: ("<f", 4),
    betterproto2.TYPE_FIXED32: ("<I", 4),
    betterproto2.TYPE_SFIXED32: ("<i", 4),
}
_ANY_URL = "type.googleapis.com/google.protobuf.Any"

# Per class: field number -> (JSON name, metadata, class of the field's values).
_Fields = dict[int, tuple[str, Any, Any]]
_fields_cache: dict[type[Message], _Fields] = {}


def _fields(cls: type[Message]) -> _Fields:
    found = _fields_cache.get(cls)
    if found is None:
        meta: Any = getattr(cls, "_betterproto")  # noqa: B009 - a classproperty
        found = {
            fm.number: (name.rstrip("_"), fm, meta.cls_by_field.get(name))
            for name, fm in meta.meta_by_field_name.items()
        }
        _fields_cache[cls] = found
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


def _records(data: bytes) -> Iterator[tuple[int, int, Any]]:
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


def _has_own_json(cls: Any) -> bool:
    return cls.to_dict is not Message.to_dict


def _scalar(proto_type: str, value: Any, value_cls: Any) -> Any:
    """The JSON of one decoded non-message value (`value` is an int for varints, bytes
    for fixed-width and length-delimited ones)."""
    if proto_type in _FIXED:
        number = struct.unpack(_FIXED[proto_type][0], value)[0]
        if proto_type in (betterproto2.TYPE_FLOAT, betterproto2.TYPE_DOUBLE):
            return betterproto2._dump_float(number)
        return str(number) if proto_type in _INT_64 else number
    if proto_type == betterproto2.TYPE_STRING:
        return bytes(value).decode("utf-8")
    if proto_type == betterproto2.TYPE_BYTES:
        return base64.b64encode(value).decode("utf8")
    if proto_type in _ZIGZAG:
        value = (value >> 1) ^ -(value & 1)
    elif proto_type in _SIGNED_VARINT and value >= 1 << 63:
        value -= 1 << 64
    elif proto_type == betterproto2.TYPE_UINT32:
        value &= 0xFFFFFFFF
    if proto_type == betterproto2.TYPE_BOOL:
        return bool(value)
    if proto_type == betterproto2.TYPE_ENUM:
        try:
            member = value_cls(value)
        except ValueError:
            return value
        return (getattr(member, "proto_name", None) or member.name) or value
    if proto_type == betterproto2.TYPE_INT32 and value >= 1 << 31:
        value -= 1 << 32
    return str(value) if proto_type in _INT_64 else value


def _message(cls: Any, data: bytes, unwrap: Any = None) -> Any:
    if unwrap is not None:
        cls = unwrap()
    if cls.__name__ == "Any" and cls.__module__.endswith("google.protobuf"):
        return _any(data)
    if _has_own_json(cls):
        return cls.parse(data).to_dict(casing=betterproto2.Casing.SNAKE)
    return to_json(cls, data)


def _any(data: bytes) -> dict[str, Any]:
    from envoy_data_plane.message_pool import default_message_pool

    type_url, value = "", b""
    for number, _, raw in _records(data):
        if number == 1:
            type_url = bytes(raw).decode("utf-8")
        elif number == 2:
            value = bytes(raw)
    output: dict[str, Any] = {"@type": type_url}
    if not type_url:
        return output
    inner = default_message_pool.url_to_type[type_url]
    if _has_own_json(inner):
        output["value"] = _message(inner, value)
    else:
        output.update(to_json(inner, value))
    return output


def _value(fm: Any, value_cls: Any, wire: int, raw: Any) -> Any:
    if fm.proto_type == betterproto2.TYPE_MESSAGE:
        return _message(value_cls, bytes(raw), fm.unwrap)
    return _scalar(fm.proto_type, raw, value_cls)


def to_json(cls: type[Message], data: bytes) -> dict[str, Any]:
    """What `cls.parse(data).to_dict(casing=Casing.SNAKE)` returns, without either."""
    if _has_own_json(cls):
        return dict(_message(cls, data))
    fields = _fields(cls)
    output: dict[str, Any] = {}
    for number, wire, raw in _records(data):
        spec = fields.get(number)
        if spec is None:
            continue  # unknown to these bindings: to_dict drops it too
        name, fm, value_cls = spec
        if fm.proto_type == betterproto2.TYPE_MAP:
            key_meta, value_meta = fm.map_meta
            key: Any = None
            item: Any = None
            item_cls = _map_value_cls(cls, number)
            for entry_number, entry_wire, entry_raw in _records(bytes(raw)):
                if entry_number == 1:
                    key = _scalar(key_meta.proto_type, entry_raw, None)
                elif entry_number == 2:
                    item = _value(value_meta, item_cls, entry_wire, entry_raw)
            output.setdefault(name, {})[key] = item
        elif fm.repeated:
            items = output.setdefault(name, [])
            if wire == 2 and fm.proto_type not in (
                betterproto2.TYPE_MESSAGE,
                betterproto2.TYPE_STRING,
                betterproto2.TYPE_BYTES,
            ):
                items.extend(_packed(fm.proto_type, bytes(raw), value_cls))
            else:
                items.append(_value(fm, value_cls, wire, raw))
        else:
            output[name] = _value(fm, value_cls, wire, raw)
    return output


def _map_value_cls(cls: Any, number: int) -> Any:
    meta = cls._betterproto
    return meta.cls_by_field.get(f"{meta.field_name_by_number[number]}.value")


def _packed(proto_type: str, data: bytes, value_cls: Any) -> list[Any]:
    values: list[Any] = []
    pos = 0
    if proto_type in _FIXED:
        size = _FIXED[proto_type][1]
        while pos < len(data):
            values.append(_scalar(proto_type, data[pos : pos + size], value_cls))
            pos += size
        return values
    while pos < len(data):
        number, pos = _varint(data, pos)
        values.append(_scalar(proto_type, number, value_cls))
    return values
