"""Port-forwarders, asyncio only: a local listener per ready pod, every accepted connection
carried to the pod through the API server, on one multiplexed SPDY-in-websocket session per
pod (Kubernetes 1.30+) or else one `v4.channel.k8s.io` websocket per connection.

Public surface: `ForwardManager` (supervises everything), `ForwarderEvent` (what it reports),
`ForwardOptions`, and the building blocks `PodForwarder`, `Connector`, `Tunnel`.
"""

from localmesh.errors import TunnelError
from localmesh.forward.limits import raise_open_files_limit
from localmesh.forward.manager import (
    ForwarderEvent,
    ForwardManager,
    ForwardOptions,
    ServiceForwarder,
)
from localmesh.forward.pod import PodForwarder
from localmesh.forward.tunnel import Connector, ForwardStats, Tunnel

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
