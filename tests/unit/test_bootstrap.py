from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmesh.bootstrap import AdsMode, BootstrapOptions, build_bootstrap
from tests.unit.golden import assert_golden, envoy_validate

SOCKET = "/run/user/1000/localmesh/xds.sock"


def test_bootstrap_sotw_golden() -> None:
    assert_golden("bootstrap_sotw.json", build_bootstrap(BootstrapOptions(xds_socket_path=SOCKET)))


def test_bootstrap_delta_tcp_golden() -> None:
    options = BootstrapOptions(
        xds_tcp=("127.0.0.1", 18000),
        node_id="dev-1",
        admin_port=19000,
        ads_mode=AdsMode.DELTA,
    )
    assert_golden("bootstrap_delta_tcp.json", build_bootstrap(options))


def test_bootstrap_sets_enums_that_default_to_zero_explicitly() -> None:
    ads = build_bootstrap(BootstrapOptions(xds_socket_path=SOCKET))["dynamic_resources"]
    assert ads["ads_config"]["transport_api_version"] == "V3"
    assert ads["ads_config"]["api_type"] == "GRPC"
    assert ads["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert ads["lds_config"] == {"ads": {}, "resource_api_version": "V3"}


def test_bootstrap_admin_defaults_to_an_ephemeral_loopback_port() -> None:
    admin = build_bootstrap(BootstrapOptions(xds_socket_path=SOCKET))["admin"]
    assert admin["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}


def test_bootstrap_needs_exactly_one_transport() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        BootstrapOptions()
    with pytest.raises(ValueError, match="exactly one"):
        BootstrapOptions(xds_socket_path=SOCKET, xds_tcp=("127.0.0.1", 1))


@pytest.mark.integration
@pytest.mark.parametrize("mode", list(AdsMode))
def test_bootstrap_passes_envoy_validate(mode: AdsMode, tmp_path: Path) -> None:
    envoy_validate(
        build_bootstrap(BootstrapOptions(xds_socket_path=str(tmp_path / "x.sock"), ads_mode=mode)),
        tmp_path,
    )


BOOTSTRAP_CASES = {
    "sotw-unix": BootstrapOptions(xds_socket_path=SOCKET),
    "delta-tcp": BootstrapOptions(
        xds_tcp=("127.0.0.1", 18000), node_id="dev-1", admin_port=19000, ads_mode=AdsMode.DELTA
    ),
    "admin-socket": BootstrapOptions(
        xds_socket_path=SOCKET,
        node_id="localmesh-router",
        node_cluster="mesh",
        admin_socket_path="/run/user/1000/localmesh/admin.sock",
    ),
}


def test_bootstrap_file_text_is_unchanged() -> None:
    """The exact text Envoy reads (key order included), as the typed bindings wrote it."""
    texts = {name: json.dumps(build_bootstrap(o)) for name, o in BOOTSTRAP_CASES.items()}
    assert_golden("bootstrap_texts.json", texts)
