"""Pod state as localmesh's mesh code reads it (pure, no I/O; the router imports it)."""

from __future__ import annotations

from typing import Any


def pod_ready(pod: dict[str, Any] | None) -> bool:
    """The kubelet calls the pod Ready and it is not being deleted (a pod on its way out
    serves no one for long)."""
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
