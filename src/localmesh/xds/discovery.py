"""DiscoveryRequest and DeltaDiscoveryRequest read from their bytes: only what the ADS
server needs, without envoy-data-plane's typed classes (their import and validation are
most of a small process's start-up, the in-cluster router's included).

    parse_sotw(data) -> SotwRequest       envoy.service.discovery.v3.DiscoveryRequest
    parse_delta(data) -> DeltaRequest     envoy.service.discovery.v3.DeltaDiscoveryRequest

`error_detail` is None when the request carries no Status (an ACK or a first request) and
the Status's message otherwise (a NACK, even with an empty Status). Fields the server does
not use (resource locators, dynamic parameters, the rest of the Node) are skipped; a unit
test checks the field numbers against the typed classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from localmesh.xds.wire_json import records

__all__ = ["DeltaRequest", "SotwRequest", "parse_delta", "parse_sotw"]


@dataclass(frozen=True, slots=True)
class SotwRequest:
    type_url: str = ""
    resource_names: list[str] = field(default_factory=list)
    response_nonce: str = ""
    error_detail: str | None = None
    node_id: str = ""


@dataclass(frozen=True, slots=True)
class DeltaRequest:
    type_url: str = ""
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    initial_versions: dict[str, str] = field(default_factory=dict)
    response_nonce: str = ""
    error_detail: str | None = None
    node_id: str = ""


def _text(raw: bytes) -> str:
    return bytes(raw).decode("utf-8")


def _node_id(data: bytes) -> str:
    # envoy.config.core.v3.Node: id = 1.
    node_id = ""
    for number, wire, raw in records(data):
        if number == 1 and wire == 2:
            node_id = _text(raw)
    return node_id


def _error_text(data: bytes) -> str:
    # google.rpc.Status: code = 1 (int32), message = 2.
    code, message = 0, ""
    for number, wire, raw in records(data):
        if number == 1 and wire == 0:
            code = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif number == 2 and wire == 2:
            message = _text(raw)
    return message or f"rejected (code {code})"


def _map_entry(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, wire, raw in records(data):
        if number == 1 and wire == 2:
            key = _text(raw)
        elif number == 2 and wire == 2:
            value = _text(raw)
    return key, value


def parse_sotw(data: bytes) -> SotwRequest:
    # DiscoveryRequest: version_info = 1, node = 2, resource_names = 3, type_url = 4,
    # response_nonce = 5, error_detail = 6, resource_locators = 7.
    type_url = nonce = node_id = ""
    names: list[str] = []
    error: str | None = None
    for number, wire, raw in records(data):
        if wire != 2:
            continue
        if number == 2:
            node_id = _node_id(bytes(raw))
        elif number == 3:
            names.append(_text(raw))
        elif number == 4:
            type_url = _text(raw)
        elif number == 5:
            nonce = _text(raw)
        elif number == 6:
            error = _error_text(bytes(raw))
    return SotwRequest(type_url, names, nonce, error, node_id)


def parse_delta(data: bytes) -> DeltaRequest:
    # DeltaDiscoveryRequest: node = 1, type_url = 2, resource_names_subscribe = 3,
    # resource_names_unsubscribe = 4, initial_resource_versions = 5 (map<string, string>),
    # response_nonce = 6, error_detail = 7, resource_locators_(un)subscribe = 8, 9.
    type_url = nonce = node_id = ""
    subscribe: list[str] = []
    unsubscribe: list[str] = []
    versions: dict[str, str] = {}
    error: str | None = None
    for number, wire, raw in records(data):
        if wire != 2:
            continue
        if number == 1:
            node_id = _node_id(bytes(raw))
        elif number == 2:
            type_url = _text(raw)
        elif number == 3:
            subscribe.append(_text(raw))
        elif number == 4:
            unsubscribe.append(_text(raw))
        elif number == 5:
            key, value = _map_entry(bytes(raw))
            versions[key] = value
        elif number == 6:
            nonce = _text(raw)
        elif number == 7:
            error = _error_text(bytes(raw))
    return DeltaRequest(type_url, subscribe, unsubscribe, versions, nonce, error, node_id)
