"""Addresses: a loopback IP per pod (all of 127/8 reaches lo on Linux) and service IPs."""

from __future__ import annotations

import ipaddress
import random


class LoopbackAllocator:
    """Random addresses in 127.16.0.0-127.250.255.254, so sandboxes in several processes
    rarely collide (a collision shows up as a failed bind and the pod takes another IP)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._used: set[str] = set()

    def allocate(self) -> str:
        while True:
            ip = (
                f"127.{self._rng.randint(16, 250)}.{self._rng.randint(0, 255)}."
                f"{self._rng.randint(1, 254)}"
            )
            if ip not in self._used:
                self._used.add(ip)
                return ip

    def release(self, ip: str) -> None:
        self._used.discard(ip)


class ServiceIPAllocator:
    """Cluster IPs from 10.96.0.0/12: they only label services, nothing routes to them."""

    def __init__(self) -> None:
        self._net = ipaddress.ip_network("10.96.0.0/12")
        self._next = 10
        self._used: set[str] = set()

    def reserve(self, ip: str) -> None:
        self._used.add(ip)

    def allocate(self) -> str:
        while True:
            ip = str(self._net[self._next])
            self._next += 1
            if ip not in self._used:
                self._used.add(ip)
                return ip
