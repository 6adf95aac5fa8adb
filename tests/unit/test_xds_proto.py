"""localmesh.xds.proto: the builders' messages, encoded from the generated schema table.

The table must be what envoy-data-plane's metadata says (regenerated and compared), and
`dump-envoy-config` must print its config without loading the typed bindings (checked by
what a real process has imported, not by the clock)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from localmesh.xds import proto, resources as rs, schema_gen, wire_json
from localmesh.xds.schema_table import ENUMS, MESSAGES
from tests.unit.cli_helpers import EXAMPLES, cli_env


def test_the_schema_table_is_what_envoy_data_plane_says() -> None:
    messages, enums = schema_gen.collect()
    assert messages == MESSAGES, "regenerate: python -m localmesh.xds.schema_gen"
    assert enums == ENUMS, "regenerate: python -m localmesh.xds.schema_gen"


def test_unknown_fields_are_refused_like_the_typed_classes() -> None:
    with pytest.raises(TypeError, match="no field 'nmae'"):
        rs.Cluster(nmae="x")
    cluster = rs.Cluster(name="x")
    with pytest.raises(AttributeError):
        cluster.nmae = "y"
    with pytest.raises(AttributeError):
        _ = rs.ClusterDiscoveryType.EDSS


def test_unset_fields_read_as_their_defaults() -> None:
    cluster = rs.Cluster(name="x")
    assert cluster.load_assignment is None
    assert cluster.transport_socket_matches == []
    assert cluster.typed_extension_protocol_options == {}
    assert rs.Route().name == ""
    assert rs.RouteAction().cluster is None  # a oneof member, as in the typed class


@pytest.mark.parametrize(
    "message",
    [
        # wrapped values: Duration (timedelta, zero and fractional), BoolValue false, UInt32Value
        rs.RouteAction(
            cluster="c",
            timeout=timedelta(0),
            idle_timeout=timedelta(seconds=1.5),
            retry_policy=rs.RetryPolicy(num_retries=0, retry_on="reset"),
        ),
        rs.Listener(name="l", enable_reuse_port=False),
        # enums (V3 is 0 and still written: a oneof/explicit field), maps of messages, Structs
        rs.ConfigSource(ads=rs.AggregatedConfigSource(), resource_api_version=rs.ApiVersion.V3),
        rs.Metadata(filter_metadata={"m": rs.Struct(fields={"k": rs.Value(string_value="v")})}),
        rs.Cluster(name="c", type=rs.ClusterDiscoveryType.STATIC, connect_timeout=timedelta(1)),
    ],
    ids=["wrapped", "bool-false", "enum-zero", "struct-map", "enum"],
)
def test_bytes_and_json_match_the_typed_bindings(message: proto.Message) -> None:
    typed = rs.typed(message)
    assert proto.encode(message) == bytes(typed)
    assert rs.to_json(message) == rs.to_json(typed)
    assert wire_json.to_json(type(typed), bytes(typed)) == rs.to_json(typed)


def test_dump_envoy_config_never_loads_the_typed_bindings() -> None:
    probe = (
        "import io, contextlib, json, sys\n"
        "from localmesh.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(sys.argv[1:])\n"
        "heavy = ('envoy_data_plane', 'betterproto2', 'pydantic')\n"
        "print(json.dumps({'code': code, 'size': len(out.getvalue()),"
        " 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    services, mocks = EXAMPLES / "services.yaml", EXAMPLES / "mocks.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "dump-envoy-config",
            str(services),
            "--mock-config",
            str(mocks),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["code"] == 0, result.stderr
    assert outcome["size"] > 1000
    assert outcome["loaded"] == []


def test_a_typed_message_inside_one_of_ours_encodes_the_same() -> None:
    from envoy_data_plane.envoy.config.core.v3 import Http2ProtocolOptions as TypedH2

    ours = rs.HttpProtocolOptionsExplicitHttpConfig(
        http2_protocol_options=rs.Http2ProtocolOptions()
    )
    mixed = rs.HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=TypedH2())
    assert proto.encode(mixed) == proto.encode(ours)
