"""Port-forwarders: asyncio, one websocket (`v4.channel.k8s.io`) per local connection.

Public surface: `ForwardManager` (supervises everything), `ForwarderEvent` (what it reports),
`ForwardOptions`, and the building blocks `PodForwarder`, `Connector`, `Tunnel`.
"""

from localmesh.forward.limits import raise_open_files_limit
from localmesh.forward.manager import (
    ForwarderEvent,
    ForwardManager,
    ForwardOptions,
    ServiceForwarder,
)
from localmesh.forward.pod import PodForwarder
from localmesh.forward.tunnel import Connector, ForwardStats, Tunnel, TunnelError

__all__ = [
    "Connector",
    "ForwardManager",
    "ForwardOptions",
    "ForwardStats",
    "ForwarderEvent",
    "PodForwarder",
    "ServiceForwarder",
    "Tunnel",
    "TunnelError",
    "raise_open_files_limit",
]
