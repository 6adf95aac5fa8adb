from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.cli.exposure import exposure_warning

CONFIG = Path("services.yaml")


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_is_quiet(bind: str) -> None:
    assert exposure_warning(bind, CONFIG) is None


@pytest.mark.parametrize(
    ("bind", "where"),
    [
        ("0.0.0.0", "every network interface of this machine"),
        ("::", "every network interface of this machine"),
        ("192.168.1.20", "listens on 192.168.1.20"),
        ("devbox.lan", "listens on devbox.lan"),
    ],
)
def test_other_addresses_name_what_becomes_reachable(bind: str, where: str) -> None:
    warning = exposure_warning(bind, CONFIG)
    assert warning is not None
    assert where in warning
    assert "every service in services.yaml" in warning
    assert "credentials" in warning
