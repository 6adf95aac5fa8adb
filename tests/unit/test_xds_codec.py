"""codec.encode writes exactly what betterproto2's bytes() writes, for every field kind."""

from __future__ import annotations

from datetime import timedelta

import betterproto2
import pytest
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterCommonLbConfig,
)
from envoy_data_plane.envoy.config.core.v3 import (
    HeaderValue,
    HeaderValueOption,
    Metadata,
    RoutingPriority,
    RuntimeFractionalPercent,
)
from envoy_data_plane.envoy.config.route.v3 import RetryPolicy, RouteMatch
from envoy_data_plane.envoy.type.v3 import (
    FractionalPercent,
    FractionalPercentDenominatorType,
    Percent,
)
from envoy_data_plane.google.protobuf import ListValue, Struct, Value

from localmesh.xds.codec import encode, field_bytes, varint

MESSAGES: list[betterproto2.Message] = [
    Cluster(  # Duration, wrappers, enums, doubles, maps of Struct, bools
        name="c",
        connect_timeout=timedelta(seconds=1, microseconds=5000),
        circuit_breakers=CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(priority=RoutingPriority.HIGH, max_connections=100)
            ]
        ),
        common_lb_config=ClusterCommonLbConfig(healthy_panic_threshold=Percent(value=12.5)),
        metadata=Metadata(
            filter_metadata={
                "a": Struct(
                    fields={
                        "k": Value(string_value="v"),
                        "n": Value(number_value=-1.5),
                        "l": Value(list_value=ListValue(values=[Value(bool_value=True)])),
                    }
                )
            }
        ),
        respect_dns_ttl=True,
    ),
    # packed repeated uint32, a zero wrapper (present), a negative int64
    RetryPolicy(
        retry_on="5xx",
        retriable_status_codes=[503, 504, 70000],
        num_retries=0,
        host_selection_retry_max_attempts=-5,
    ),
    RouteMatch(
        prefix="/",
        runtime_fraction=RuntimeFractionalPercent(
            default_value=FractionalPercent(
                numerator=5, denominator=FractionalPercentDenominatorType.MILLION
            ),
            runtime_key="x",
        ),
    ),
    HeaderValueOption(header=HeaderValue(key="k", raw_value=b"\x00\xff")),  # bytes
    Cluster(),  # empty
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_encode_matches_betterproto(message: betterproto2.Message) -> None:
    assert encode(message) == bytes(message)


def test_varint_and_length_delimited_field() -> None:
    assert varint(0) == b"\x00"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert field_bytes(2, b"abc") == b"\x12\x03abc"
