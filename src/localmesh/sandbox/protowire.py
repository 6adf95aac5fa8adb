"""The few protobuf bodies kubectl sends without a JSON fallback, decoded by hand.

kubectl >= 1.32 posts SelfSubjectAccessReviews (`kubectl auth can-i`) only as
`application/vnd.kubernetes.protobuf`: a "k8s\\0" magic, then a runtime.Unknown whose raw
field holds the object. Only length-delimited string fields are needed here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAGIC = b"k8s\x00"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> dict[int, list[bytes]]:
    """Length-delimited fields of one message by number (other wire types skipped)."""
    out: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            out.setdefault(number, []).append(data[pos : pos + size])
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def iter_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Every field of one message in order: (number, varint value or bytes)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def varints(data: bytes) -> dict[int, int]:
    """Varint fields of one message by number (the last value of each)."""
    return {n: v for n, v in iter_fields(data) if isinstance(v, int)}


def _first(msg: dict[int, list[bytes]], number: int) -> bytes:
    return msg.get(number, [b""])[0]


def access_review(body: bytes) -> dict[str, Any]:
    """A SelfSubjectAccessReview in protobuf as its JSON form (spec only)."""
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf body")
    unknown = fields(body[len(MAGIC) :])
    review = fields(_first(unknown, 2))
    spec = fields(_first(review, 2))
    out: dict[str, Any] = {}
    if 1 in spec:
        attrs = fields(_first(spec, 1))
        names = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
        out["resourceAttributes"] = {
            n: _first(attrs, i + 1).decode() for i, n in enumerate(names) if i + 1 in attrs
        }
    if 2 in spec:
        attrs = fields(_first(spec, 2))
        out["nonResourceAttributes"] = {
            "path": _first(attrs, 1).decode(),
            "verb": _first(attrs, 2).decode(),
        }
    return {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {},
        "spec": out,
    }
