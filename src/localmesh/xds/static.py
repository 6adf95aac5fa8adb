"""The one renderer of a static Envoy config: an xDS view becomes `envoy -c` input.

    render_static_config(view) -> dict      view: `render_xds_view(...)`'s shape (bootstrap
                                            + resources by type), from services.yaml or
                                            from a running instance (`--live`)
    static_config_of(state) -> dict         the same for a DesiredState

Routes fetched by RDS go inline into their listener, EDS clusters become STATIC clusters
carrying their ClusterLoadAssignment, static clusters stay as they are: the same routing,
no control plane. Admin listens where the view's bootstrap says, else on loopback.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from localmesh.desired import DesiredState
from localmesh.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

DEFAULT_ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def _named(view: Mapping[str, Any], type_url: str) -> dict[str, dict[str, Any]]:
    # Shallow copies: the renderer replaces top-level keys of a resource and copies the
    # few nested dicts it changes (deep copies were a third of a 1,000-entry dump).
    listed = view.get("resources", {}).get(type_url, {}).get("resources", [])
    found = {}
    for r in listed:
        resource = dict(r["resource"])
        resource.pop("@type", None)
        found[r["name"]] = resource
    return found


def _inline_routes(listener: dict[str, Any], routes: Mapping[str, Any]) -> dict[str, Any]:
    """The listener with each RDS reference replaced by its route configuration."""
    chains = []
    for chain in listener.get("filter_chains", []):
        filters = []
        for original in chain.get("filters", []):
            network_filter = dict(original)
            hcm = network_filter.get("typed_config")
            if hcm is not None:
                hcm = network_filter["typed_config"] = dict(hcm)
                rds = hcm.pop("rds", None)
                if rds is not None:
                    name = rds.get("route_config_name", "")
                    hcm["route_config"] = routes.get(name, {"name": name})
            filters.append(network_filter)
        chains.append({**chain, "filters": filters} if "filters" in chain else dict(chain))
    if "filter_chains" in listener:
        listener["filter_chains"] = chains
    return listener


def render_static_config(view: Mapping[str, Any]) -> dict[str, Any]:
    """One self-contained static Envoy config with the view's listeners, routes, clusters."""
    routes, endpoints = _named(view, ROUTE_TYPE), _named(view, ENDPOINT_TYPE)
    listeners = [_inline_routes(lis, routes) for lis in _named(view, LISTENER_TYPE).values()]
    clusters = []
    for name, cluster in _named(view, CLUSTER_TYPE).items():
        if cluster.pop("eds_cluster_config", None) is not None or cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = endpoints.get(name, {"cluster_name": name})
        clusters.append(cluster)
    admin = view.get("bootstrap", {}).get("admin") or copy.deepcopy(DEFAULT_ADMIN)
    return {"admin": admin, "static_resources": {"listeners": listeners, "clusters": clusters}}


def static_config_of(state: DesiredState) -> dict[str, Any]:
    """The static config of a desired state (benchmarks, tests): snapshot, view, render."""
    from localmesh.xds.snapshot import build_snapshot, render_xds_view

    return render_static_config(render_xds_view(build_snapshot(state).check(), {}))


__all__ = ["render_static_config", "static_config_of"]
