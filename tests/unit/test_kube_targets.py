"""Which service port an entry means and which endpoints count as ready targets."""

from __future__ import annotations

from typing import Any

import pytest

from localmesh.kube.targets import (
    PortNotFound,
    Target,
    service_info,
    service_port,
    targets_from_endpoints,
    targets_from_slices,
)


def _service(ports: list[dict[str, Any]], *, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": ports, "selector": {"app": "x"}}
    if headless:
        spec["clusterIP"] = "None"
    return {"metadata": {"name": "svc", "namespace": "ns"}, "spec": spec}


SERVICE = _service(
    [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "grpc", "port": 9090, "targetPort": "grpc-port"},
    ]
)


def _pod(name: str, ip: str, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [{"ports": [{"name": n, "containerPort": p} for n, p in ports.items()]}]
        },
        "status": {"podIP": ip},
    }


def _endpoint(ip: str, pod: str | None, **conditions: bool) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod is not None:
        endpoint["targetRef"] = {"kind": "Pod", "name": pod}
    return endpoint


def test_port_by_name_and_number() -> None:
    assert service_port(SERVICE, "http").target_port == 8080
    assert service_port(SERVICE, 9090).target_port == "grpc-port"
    assert service_port(SERVICE, 9090).name == "grpc"


def test_unknown_port_lists_the_available_ones() -> None:
    with pytest.raises(PortNotFound) as caught:
        service_port(SERVICE, "metrics")
    assert caught.value.available == ["http:80->8080", "grpc:9090->grpc-port"]
    assert "http:80->8080, grpc:9090->grpc-port" in str(caught.value)


def test_headless_service_without_ports_forwards_to_the_number() -> None:
    info = service_info(_service([], headless=True), 5432)
    assert info.headless
    assert info.port.target_port == 5432
    with pytest.raises(PortNotFound):
        service_info(_service([], headless=True), "db")


def test_slices_keep_only_ready_and_not_terminating() -> None:
    info = service_info(SERVICE, "http")
    slices = [
        {
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                _endpoint("127.1.0.1", "a", ready=True),
                _endpoint("127.1.0.2", "b", ready=False),
                _endpoint("127.1.0.3", "c", ready=True, terminating=True),
                _endpoint("127.1.0.4", "d"),  # unset `ready` means ready
            ],
        }
    ]
    result = targets_from_slices(info, slices, {}, {})
    assert result.targets == {Target("a", "127.1.0.1", 8080), Target("d", "127.1.0.4", 8080)}
    assert not result.uses_pods


def test_serving_terminating_endpoints_only_when_none_is_ready() -> None:
    info = service_info(SERVICE, "http")
    old = _endpoint("127.1.0.1", "old", ready=False, serving=True, terminating=True)
    stopped = _endpoint("127.1.0.2", "stopped", ready=False, serving=False, terminating=True)
    new = _endpoint("127.1.0.3", "new", ready=True, serving=True, terminating=False)
    starting = _endpoint("127.1.0.3", "new", ready=False, serving=False, terminating=False)

    def targets(*endpoints: dict[str, Any]) -> set[str]:
        piece = {"ports": [{"name": "http", "port": 8080}], "endpoints": list(endpoints)}
        return {t.pod for t in targets_from_slices(info, [piece], {}, {}).targets}

    assert targets(old, stopped, starting) == {"old"}  # the only one still serving
    assert targets(old, stopped, new) == {"new"}  # a ready one wins
    assert targets(stopped, starting) == set()


def test_named_target_port_resolved_per_pod_when_the_slice_omits_it() -> None:
    info = service_info(SERVICE, "grpc")
    pods = {
        "a": _pod("a", "127.1.0.1", {"grpc-port": 50051}),
        "b": _pod("b", "127.1.0.2", {"grpc-port": 50052}),
    }
    slices = [{"endpoints": [_endpoint("127.1.0.1", "a"), _endpoint("127.1.0.2", "b")]}]
    result = targets_from_slices(info, slices, pods, {})
    assert result.targets == {Target("a", "127.1.0.1", 50051), Target("b", "127.1.0.2", 50052)}
    assert result.uses_pods


def test_selectorless_endpoints_found_by_pod_ip() -> None:
    info = service_info(SERVICE, "http")
    endpoints = {
        "subsets": [
            {
                "ports": [{"name": "http", "port": 8080}],
                "addresses": [{"ip": "127.1.0.9"}, {"ip": "10.9.9.9"}],
                "notReadyAddresses": [{"ip": "127.1.0.8"}],
            }
        ]
    }
    result = targets_from_endpoints(info, endpoints, {}, {"127.1.0.9": "pod-9"})
    assert result.targets == {Target("pod-9", "127.1.0.9", 8080)}
    assert result.uses_pods


def test_no_port_named_means_the_only_one() -> None:
    only = _service([{"name": "http", "port": 8080, "targetPort": "http"}])
    assert service_port(only, "").port == 8080


def test_no_port_named_with_several_lists_them() -> None:
    with pytest.raises(PortNotFound) as caught:
        service_port(SERVICE, "")
    assert caught.value.explain("billing/web") == (
        "service billing/web has several ports, name one with port_name; it has: http:80, grpc:9090"
    )


def test_an_unknown_port_is_explained_as_users_name_ports() -> None:
    with pytest.raises(PortNotFound) as caught:
        service_port(SERVICE, "web")
    assert caught.value.explain("billing/web") == (
        "service billing/web has no port 'web'; it has: http:80, grpc:9090"
    )
