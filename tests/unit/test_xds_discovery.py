"""DiscoveryRequests read from their bytes give what envoy-data-plane's typed classes read."""

from __future__ import annotations

import pytest
from envoy_data_plane.envoy.config.core.v3 import BuildVersion, Extension, Node
from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    ResourceLocator,
)
from envoy_data_plane.google.rpc import Status

from localmesh.xds.discovery import DeltaRequest, SotwRequest, parse_delta, parse_sotw

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
# A first request carries the whole Node, as Envoy sends it (extensions and all).
ENVOY_NODE = Node(
    id="localmesh-router",
    cluster="mesh",
    user_agent_name="envoy",
    user_agent_build_version=BuildVersion(),
    extensions=[Extension(name=f"envoy.ext.{i}", category="envoy.filters") for i in range(50)],
    client_features=["envoy.lb.does_not_support_overprovisioning"],
)


def typed_status(request: DiscoveryRequest | DeltaDiscoveryRequest) -> str | None:
    status = request.error_detail
    if status is None:
        return None
    return status.message or f"rejected (code {status.code})"


@pytest.mark.parametrize(
    "request_",
    [
        DiscoveryRequest(node=ENVOY_NODE, type_url=CDS),
        DiscoveryRequest(version_info="v1", resource_names=["a", "b"], type_url=CDS,
                         response_nonce="3"),
        DiscoveryRequest(type_url=CDS, response_nonce="4",
                         error_detail=Status(code=3, message="bad cluster")),
        DiscoveryRequest(type_url=CDS, response_nonce="5", error_detail=Status()),
        DiscoveryRequest(type_url=CDS, error_detail=Status(code=13)),
        DiscoveryRequest(type_url=CDS, resource_locators=[ResourceLocator(name="x")]),
        DiscoveryRequest(),
    ],
    ids=["first", "ack", "nack", "empty-status", "code-only", "locators", "empty"],
)  # fmt: skip
def test_sotw_request_matches_the_typed_parse(request_: DiscoveryRequest) -> None:
    data = bytes(request_)
    typed = DiscoveryRequest.parse(data)
    assert parse_sotw(data) == SotwRequest(
        type_url=typed.type_url,
        resource_names=list(typed.resource_names),
        response_nonce=typed.response_nonce,
        error_detail=typed_status(typed),
        node_id=typed.node.id if typed.node is not None else "",
    )


@pytest.mark.parametrize(
    "request_",
    [
        DeltaDiscoveryRequest(node=ENVOY_NODE, type_url=CDS, resource_names_subscribe=["*"],
                              initial_resource_versions={"a": "v1", "b": ""}),
        DeltaDiscoveryRequest(type_url=CDS, resource_names_subscribe=["c"],
                              resource_names_unsubscribe=["a", "b"], response_nonce="7"),
        DeltaDiscoveryRequest(type_url=CDS, response_nonce="8",
                              error_detail=Status(code=3, message="no")),
        DeltaDiscoveryRequest(type_url=CDS, error_detail=Status()),
        DeltaDiscoveryRequest(),
    ],
    ids=["first", "resubscribe", "nack", "empty-status", "empty"],
)  # fmt: skip
def test_delta_request_matches_the_typed_parse(request_: DeltaDiscoveryRequest) -> None:
    data = bytes(request_)
    typed = DeltaDiscoveryRequest.parse(data)
    assert parse_delta(data) == DeltaRequest(
        type_url=typed.type_url,
        subscribe=list(typed.resource_names_subscribe),
        unsubscribe=list(typed.resource_names_unsubscribe),
        initial_versions=dict(typed.initial_resource_versions),
        response_nonce=typed.response_nonce,
        error_detail=typed_status(typed),
        node_id=typed.node.id if typed.node is not None else "",
    )


def test_a_nack_with_an_empty_status_is_still_a_nack() -> None:
    data = bytes(DiscoveryRequest(type_url=CDS, error_detail=Status()))
    assert parse_sotw(data).error_detail == "rejected (code 0)"
    assert parse_sotw(bytes(DiscoveryRequest(type_url=CDS))).error_detail is None
