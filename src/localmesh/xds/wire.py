"""DiscoveryResponse bytes assembled from resources serialized once (no message objects).

A response with 1,000 resources is a concatenation of cached `Any` bytes: about a
millisecond, instead of re-encoding every resource for every Envoy and every push.

    encode_response(response: SotwResponse | DeltaResponse) -> bytes
"""

from __future__ import annotations

from localmesh.xds.cache import DeltaResponse, Response, SotwResponse
from localmesh.xds.codec import field_bytes


def _string(number: int, value: str) -> bytes:
    return field_bytes(number, value.encode()) if value else b""


def encode_sotw(response: SotwResponse) -> bytes:
    # envoy.service.discovery.v3.DiscoveryResponse: version_info = 1, resources = 2 (Any),
    # type_url = 4, nonce = 5.
    out = bytearray(_string(1, response.version_info))
    for resource in response.resources:
        out += field_bytes(2, resource.packed)
    out += _string(4, response.type_url)
    out += _string(5, response.nonce)
    return bytes(out)


def encode_delta(response: DeltaResponse) -> bytes:
    # DeltaDiscoveryResponse: system_version_info = 1, resources = 2 (Resource),
    # type_url = 4, nonce = 5, removed_resources = 6.
    # Resource: version = 1, resource = 2 (Any), name = 3.
    out = bytearray(_string(1, response.system_version_info))
    for resource in response.resources:
        body = (
            _string(1, resource.version)
            + field_bytes(2, resource.packed)
            + _string(3, resource.name)
        )
        out += field_bytes(2, body)
    out += _string(4, response.type_url)
    out += _string(5, response.nonce)
    for name in response.removed:
        out += _string(6, name)
    return bytes(out)


def encode_response(response: Response) -> bytes:
    if isinstance(response, DeltaResponse):
        return encode_delta(response)
    return encode_sotw(response)
