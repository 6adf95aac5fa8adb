"""The `v4.channel.k8s.io` framing of a Kubernetes port-forward websocket.

Every binary message is one channel byte followed by payload. For the i-th requested port,
channel 2i carries data and 2i+1 carries errors; the first message the server sends on each
channel is the port number (little-endian uint16), not payload. One websocket carries one
TCP connection per port and cannot half-close.
"""

from __future__ import annotations

SUBPROTOCOL = "v4.channel.k8s.io"
DATA = 0  # the one port localmesh requests per websocket
ERROR = 1
PORT_HEADER_SIZE = 3  # channel byte + uint16 port


def portforward_path(namespace: str, pod: str, port: int) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward?ports={port}"


def data_frame(payload: bytes) -> bytes:
    """The message carrying `payload` to the pod (one copy: the channel byte prepended)."""
    return b"\x00" + payload


def header_port(message: bytes) -> int | None:
    """The port in a channel's first message, or None if `message` is not a port header."""
    if len(message) != PORT_HEADER_SIZE:
        return None
    return int.from_bytes(message[1:3], "little")
