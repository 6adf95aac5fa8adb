"""A stand-in Kubernetes cluster in one process, for the demo and the tests.

Real clients (kubectl, the official Python client) talk to it over HTTPS with a bearer
token; its pods are real servers on their own loopback IPs. See `Sandbox`.
"""

from __future__ import annotations

from localmesh.sandbox.faults import Faults
from localmesh.sandbox.sandbox import Sandbox, SandboxTimeout
from localmesh.sandbox.scenario import Scenario, scale_scenario

__all__ = ["Faults", "Sandbox", "SandboxTimeout", "Scenario", "scale_scenario"]
