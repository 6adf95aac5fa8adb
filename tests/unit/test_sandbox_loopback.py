"""The sandbox's loopback mode: an address per pod where the machine binds them, else
distinct ports on 127.0.0.1 (macOS), forced by option or LOCALMESH_SANDBOX_LOOPBACK."""

from __future__ import annotations

import pytest

from localmesh.errors import ConfigError
from localmesh.sandbox import ips


def test_the_option_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ips.LOOPBACK_ENV, "per-pod")
    assert ips.loopback_mode("shared") == ips.SHARED
    assert ips.loopback_mode() == ips.PER_POD
    monkeypatch.setenv(ips.LOOPBACK_ENV, "Shared")
    assert ips.loopback_mode() == ips.SHARED


def test_auto_probes_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ips.LOOPBACK_ENV, raising=False)
    expected = ips.PER_POD if ips.extra_loopback_bindable() else ips.SHARED
    assert ips.loopback_mode() == expected
    monkeypatch.setattr(ips, "extra_loopback_bindable", lambda: False)  # as on macOS
    assert ips.loopback_mode("auto") == ips.SHARED


def test_a_wrong_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ips.LOOPBACK_ENV, "mac")
    with pytest.raises(ConfigError, match="LOCALMESH_SANDBOX_LOOPBACK='mac': expected auto"):
        ips.loopback_mode()


def test_dial_maps_a_shared_pods_address_while_it_is_served() -> None:
    assert ips.dial("127.20.1.2", 8080) == ("127.20.1.2", 8080)
    ips.share_port("127.20.1.2", 8080, 41000)
    try:
        assert ips.dial("127.20.1.2", 8080) == ("127.0.0.1", 41000)
        assert ips.dial("127.20.1.2", 9090) == ("127.20.1.2", 9090)
        ips.unshare_port("127.20.1.2", 8080, 40999)  # not its port: an older listener's
        assert ips.dial("127.20.1.2", 8080) == ("127.0.0.1", 41000)
    finally:
        ips.unshare_port("127.20.1.2", 8080, 41000)
    assert ips.dial("127.20.1.2", 8080) == ("127.20.1.2", 8080)


def test_shared_pod_ips_are_distinct_across_sandboxes_of_a_process() -> None:
    first = ips.LoopbackAllocator(seed=7, shared=True)
    second = ips.LoopbackAllocator(seed=7, shared=True)  # the same random sequence
    a = [first.allocate() for _ in range(50)]
    b = [second.allocate() for _ in range(50)]
    assert not set(a) & set(b)
    assert first.listen_host == "127.0.0.1" and ips.LoopbackAllocator().listen_host is None
    for ip in a:
        first.release(ip)
    for ip in b:
        second.release(ip)
