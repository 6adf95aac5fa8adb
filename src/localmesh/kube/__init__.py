"""Kubernetes access: the only package that imports `kubernetes`.

Public surface: `Cluster` (resolve entries, watch ready targets), `ClusterAccess`
(credentials for other HTTP clients), `TargetWatch`, `TargetUpdate`, `Target`, `ServiceKey`.

The names load on first use: a module that needs only `localmesh.kube.targets` (the
in-cluster router) must not pay for the official client, which `cluster` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localmesh.kube.access import ClusterAccess, load_access
    from localmesh.kube.cluster import (
        Cluster,
        ServiceKey,
        TargetUpdate,
        TargetWatch,
        entry_label,
    )
    from localmesh.kube.targets import ServiceInfo, ServicePort, Target

_WHERE = {
    "ClusterAccess": "access",
    "load_access": "access",
    "Cluster": "cluster",
    "ServiceKey": "cluster",
    "TargetUpdate": "cluster",
    "TargetWatch": "cluster",
    "entry_label": "cluster",
    "ServiceInfo": "targets",
    "ServicePort": "targets",
    "Target": "targets",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Cluster",
    "ClusterAccess",
    "ServiceInfo",
    "ServiceKey",
    "ServicePort",
    "Target",
    "TargetUpdate",
    "TargetWatch",
    "entry_label",
    "load_access",
]
