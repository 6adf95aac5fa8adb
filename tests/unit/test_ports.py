"""tests/ports.free_port: a port outside the kernel's ephemeral range, that no other test
process is handed while this one holds it, and that a server can bind."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localmesh import ports
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# Another test process: takes 40 ports, prints them, holds them until stdin closes.
OTHER = """
import json, sys
from localmesh import ports
from tests.ports import free_port
print(json.dumps([free_port() for _ in range(40)]), flush=True)
sys.stdin.read()
"""


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_are_outside_the_ephemeral_range_and_bindable() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for port in ports:
        assert not low <= port <= high
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_another_process_is_never_handed_a_port_this_one_holds() -> None:
    mine = {free_port() for _ in range(40)}
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        theirs = set(json.loads(other.stdout.readline()))
        mine |= {free_port() for _ in range(40)}
    finally:
        other.communicate("", timeout=30)
    assert len(theirs) == 40
    assert not mine & theirs


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports.free_port()))
        busy.listen()
        taken: int = busy.getsockname()[1]
        assert not ports.bindable("127.0.0.1", taken)
        # The busy port comes up first, then the usual random picks.
        first = iter([taken])
        choose = random.choice
        monkeypatch.setattr(random, "choice", lambda seq: next(first, None) or choose(seq))
        assert ports.free_port() != taken
