"""What the router's Envoy makes of the tunnel: a real Envoy (static config) in front of
the real shadow agent, as the router will be. While the developer's local process is down
the shadow resets the connection before any response byte; Envoy then answers 503 at once
with the response flag UC, which a `local_reply_config` mapper turns into a body that says
what happened."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from localmesh.clustermesh import tunnel_wire
from localmesh.clustermesh.tunnel_laptop import TcpDialer
from tests.integration.backends import curl
from tests.integration.conftest import SupervisorFactory, free_port
from tests.integration.test_envoy_supervisor import static_bootstrap
from tests.integration.tunnel_helpers import (
    LOOPBACK,
    ShadowFactory,
    TunnelFactory,
    shadows,
    tcp_server,
    tunnels,
)

pytestmark = pytest.mark.integration
__all__ = ["shadows", "tunnels"]

HOST = "billing-api.billing"
LOCAL_DOWN_BODY = "the developer's local process is not answering (%RESPONSE_FLAGS%)\n"


def with_local_reply(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The listener's HTTP connection manager gets a mapper for upstream resets (UC)."""
    listener = bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["local_reply_config"] = {
        "mappers": [
            {
                "filter": {"response_flag_filter": {"flags": ["UC"]}},
                "body_format_override": {"text_format": LOCAL_DOWN_BODY},
            }
        ]
    }
    return bootstrap


async def test_local_process_down_is_a_503_that_says_so(
    envoy_supervisors: SupervisorFactory, shadows: ShadowFactory, tunnels: TunnelFactory
) -> None:
    secret = tunnel_wire.new_secret()
    remote, tunnel_port, listener = free_port(), free_port(), free_port()
    local_port = free_port()
    # A long wait: the 503 must come from the local refusal, not from a timeout.
    await shadows(secret, [remote], tunnel_port=tunnel_port, wait=60.0)
    client = await tunnels(TcpDialer(LOOPBACK, tunnel_port), secret, {remote: local_port})
    envoy = envoy_supervisors(with_local_reply(static_bootstrap(listener, {HOST: remote})))
    await envoy.start()

    began = time.monotonic()
    status, body = await curl(listener, HOST, "/invoices")
    assert status == 503
    assert body.decode() == "the developer's local process is not answering (UC)\n"
    assert time.monotonic() - began < 30  # well before the shadow's 60 s wait
    assert client.stats.local_down == {local_port}

    # The process starts: the same route serves it, through the same Envoy and tunnel.
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nlaptop")
        await writer.drain()
        writer.close()

    async with tcp_server(hello, local_port):
        status, body = await curl(listener, HOST, "/invoices")
    assert (status, body) == (200, b"laptop")
    assert client.stats.local_down == set()
