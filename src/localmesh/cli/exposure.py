"""The warning `up --bind` prints when the mesh would be reachable from other machines."""

from __future__ import annotations

import ipaddress
from pathlib import Path

_LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


def exposure_warning(bind: str, config: Path) -> str | None:
    """What `--bind bind` makes reachable beyond this machine; None for a loopback address."""
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        address = None  # a host name: only the loopback names are known to stay local
    if address.is_loopback if address is not None else bind.lower() in _LOOPBACK_NAMES:
        return None
    where = (
        "every network interface of this machine"
        if address is not None and address.is_unspecified
        else bind
    )
    return (
        f"--bind {bind}: the mesh listener (listener_port of {config}) listens on {where}: "
        f"anyone who can reach this machine can call every service in {config}, in the "
        "cluster, with your kubeconfig's credentials (the forwarders and Envoy's admin API "
        "stay private); keep the default --bind 127.0.0.1 unless you mean this"
    )
