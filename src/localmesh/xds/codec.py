"""Protobuf wire encoding of localmesh's messages (localmesh.xds.proto) and of
envoy-data-plane (betterproto2) messages, without re-validation.

localmesh's own builders make `proto.Message`s, encoded from the generated schema table.
Typed messages (hand-made resources and comparisons in tests) go through the rest of
this module:

`bytes(msg)` in betterproto2 rebuilds a pydantic validator for every nested message on every
call, which is about 90% of its cost. The messages localmesh encodes were already validated
when they were constructed and are never mutated afterwards, so this encoder walks the same
field metadata betterproto2 uses and writes the same bytes (a unit test checks byte identity
on every resource the builders produce) without validating again.

    encode(msg) -> bytes
    field_bytes(number, payload) -> bytes   # one length-delimited field, for assembling
                                            # repeated message fields from cached pieces
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from localmesh.xds import proto
from localmesh.xds.proto import PACKED, field_bytes, map_field, packed_field, value_bytes, varint

__all__ = ["encode", "field_bytes", "varint"]

if TYPE_CHECKING:
    from betterproto2 import Message

_NO_DEFAULT = object()


# Per message class: (field name, number, proto type, unwrap, repeated, map meta, default).
_Plan = tuple[tuple[str, int, str, Callable[[], type] | None, bool | None, Any, Any], ...]
_plans: dict[type[Message], _Plan] = {}


def _plan(cls: type[Message]) -> _Plan:
    from betterproto2 import Message

    plan = _plans.get(cls)
    if plan is not None:
        return plan
    meta: Any = getattr(cls, "_betterproto")  # noqa: B009 - a classproperty mypy cannot see
    rows = []
    for name, fm in meta.meta_by_field_name.items():
        default = meta.default_gen[name]()
        # Mutable defaults (lists, dicts, messages) are compared by emptiness/None instead.
        if isinstance(default, list | dict | Message):
            default = _NO_DEFAULT
        rows.append((name, fm.number, fm.proto_type, fm.unwrap, fm.repeated, fm.map_meta, default))
    plan = tuple(rows)
    _plans[cls] = plan
    return plan


def _scalar(proto_type: str, unwrap: Callable[[], type] | None, value: Any) -> tuple[int, bytes]:
    """(wire type, encoded value without key) of one non-repeated value."""
    if proto_type == "message":
        if unwrap is not None:
            value = unwrap().from_wrapped(value)  # type: ignore[attr-defined]
        body = encode(value)
        return 2, varint(len(body)) + body
    return value_bytes(proto_type, value)


def encode(msg: Message | proto.Message) -> bytes:
    """The protobuf encoding of `msg`, byte-identical to `bytes(msg)`."""
    if isinstance(msg, proto.Message):
        return proto.encode(msg)
    out = bytearray()
    for name, number, proto_type, unwrap, repeated, map_meta, default in _plan(type(msg)):
        value = getattr(msg, name)
        if value is None:
            continue
        if repeated:
            if not value:
                continue
            if proto_type in PACKED:
                out += packed_field(number, proto_type, value)
                continue
            for item in value:
                wire, body = _scalar(proto_type, unwrap, item)
                out += varint((number << 3) | wire) + body
            continue
        if map_meta:
            if not value:
                continue
            key_meta, value_meta = map_meta
            for k, v in value.items():
                key = _scalar(key_meta.proto_type, None, k)
                out += map_field(number, key, _scalar(value_meta.proto_type, value_meta.unwrap, v))
            continue
        if default is not _NO_DEFAULT and value == default:
            continue
        wire, body = _scalar(proto_type, unwrap, value)
        out += varint((number << 3) | wire) + body
    out += msg._unknown_fields
    return bytes(out)
