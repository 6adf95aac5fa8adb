"""Kubernetes access: the only package that imports `kubernetes`.

Public surface: `Cluster` (resolve entries, watch ready targets), `ClusterAccess`
(credentials for other HTTP clients), `TargetWatch`, `TargetUpdate`, `Target`, `ServiceKey`.
"""

from localmesh.kube.access import ClusterAccess, load_access
from localmesh.kube.cluster import Cluster, ServiceKey, TargetUpdate, TargetWatch, entry_label
from localmesh.kube.targets import ServiceInfo, ServicePort, Target

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
