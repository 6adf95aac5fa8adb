"""The v4.channel.k8s.io framing."""

from __future__ import annotations

from localmesh.forward.channel import data_frame, header_port, portforward_path


def test_port_header_is_little_endian() -> None:
    assert header_port(b"\x00\x90\x1f") == 8080
    assert header_port(b"\x01\x90\x1f") == 8080
    assert header_port(b"\x00hello") is None


def test_data_frame_and_path() -> None:
    assert data_frame(b"GET") == b"\x00GET"
    assert (
        portforward_path("ns", "pod-1", 8080)
        == "/api/v1/namespaces/ns/pods/pod-1/portforward?ports=8080"
    )
