"""Service addressing without a running cluster: cluster IP and node port admission, DNS
name forms, round robin with the terminating fallback, frontend scenario keys."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from localmesh.errors import ConfigError
from localmesh.sandbox import Scenario
from localmesh.sandbox.dns import ClusterDNS
from localmesh.sandbox.errors import ApiError
from localmesh.sandbox.ips import SERVICE_CIDR, LoopbackAllocator, ServiceIPAllocator
from localmesh.sandbox.scenario import deployment_manifest
from localmesh.sandbox.serviceproxy import ServicePortRoute


def service(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "shop"}, "spec": spec}


@pytest.fixture
def ips() -> Iterator[ServiceIPAllocator]:
    allocator = ServiceIPAllocator(seed=1)
    yield allocator
    allocator.release_all()


def created(ips: ServiceIPAllocator, **spec: Any) -> dict[str, Any]:
    svc = service(**spec)
    if "clusterIP" not in spec:
        svc["spec"]["clusterIP"] = ips.allocate()  # as objects.prepare_create does
    ips.admit(svc, None)
    return svc


def test_cluster_ips_are_loopback_unique_and_reusable_after_release(
    ips: ServiceIPAllocator,
) -> None:
    taken = {created(ips, ports=[{"port": 80}])["spec"]["clusterIP"] for _ in range(50)}
    assert len(taken) == 50
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(SERVICE_CIDR) for ip in taken)
    other = ServiceIPAllocator(seed=1)  # a second sandbox in this process never shares one
    try:
        assert other.allocate() not in taken
    finally:
        other.release_all()
    ip = taken.pop()
    ips.forget(service(clusterIP=ip))
    again = service(clusterIP=ip, ports=[{"port": 80}])
    ips.admit(again, None)  # free again: a client may ask for it
    assert LoopbackAllocator(seed=3).allocate().split(".")[1] != "96"


def test_requested_cluster_ips_must_be_in_range_and_free(ips: ServiceIPAllocator) -> None:
    with pytest.raises(ApiError, match=r"not in the valid range\. The range of valid IPs is 127"):
        created(ips, clusterIP="10.0.0.7", ports=[{"port": 80}])
    first = created(ips, ports=[{"port": 80}])["spec"]["clusterIP"]
    with pytest.raises(ApiError, match="provided IP is already allocated") as info:
        created(ips, clusterIP=first, ports=[{"port": 80}])
    assert info.value.code == 422
    assert created(ips, clusterIP="None", ports=[])["spec"]["clusterIP"] == "None"


def test_updates_keep_allocated_values_and_refuse_to_change_the_ip(
    ips: ServiceIPAllocator,
) -> None:
    old = created(ips, type="NodePort", ports=[{"name": "http", "port": 80}])
    ip, node_port = old["spec"]["clusterIP"], old["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    new = service(type="NodePort", ports=[{"name": "http", "port": 80}])  # as `kubectl replace`
    ips.admit(new, old)
    assert new["spec"]["clusterIP"] == ip and new["spec"]["ports"][0]["nodePort"] == node_port
    moved = service(clusterIP="127.96.0.1", ports=[{"name": "http", "port": 80}])
    with pytest.raises(ApiError, match="may not change once set"):
        ips.admit(moved, old)
    back = service(type="ClusterIP", ports=[{"name": "http", "port": 80, "nodePort": node_port}])
    ips.admit(back, new)
    assert "nodePort" not in back["spec"]["ports"][0]
    with pytest.raises(ApiError, match="may not be used when `type` is 'ClusterIP'"):
        ips.admit(service(ports=[{"port": 80, "nodePort": 30001}]), back)
    with pytest.raises(ApiError, match="The range of valid ports is 30000-32767"):
        created(ips, type="NodePort", ports=[{"port": 80, "nodePort": 80}])
    with pytest.raises(ApiError, match='Unsupported value: "Bridge"'):
        created(ips, type="Bridge", ports=[{"port": 80}])


def test_dns_name_forms() -> None:
    split = ClusterDNS.split
    for host in ("api.billing", "api.billing.svc", "api.billing.svc.cluster.local."):
        assert split(host) == ("api", "billing")
    assert split("api", "users") == ("api", "users")  # the pod's own namespace first
    assert split("api") is None
    assert split("example.com.au") is None
    assert split("API.Billing.SVC") == ("api", "billing")


def test_round_robin_with_the_terminating_fallback() -> None:
    route = ServicePortRoute("shop", "web", "http")
    assert route.candidates() == []
    route.serving_terminating = [("127.1.0.9", 8080)]
    assert route.candidates() == [("127.1.0.9", 8080)]
    route.ready = [("127.1.0.1", 8080), ("127.1.0.2", 8080), ("127.1.0.3", 8080)]
    picks = [route.candidates() for _ in range(4)]
    assert [p[0][0] for p in picks] == ["127.1.0.2", "127.1.0.3", "127.1.0.1", "127.1.0.2"]
    assert all(sorted(p) == sorted(route.ready) for p in picks)  # the rest: retries


def test_frontend_scenario_keys_become_container_env() -> None:
    sc = Scenario.from_dict(
        {
            "deployments": [
                {
                    "name": "web",
                    "workload": "frontend",
                    "downstream": "http://api.billing:8080",
                    "propagateHeaders": ["Version", "x-tenant"],
                    "downstreamKeepAlive": True,
                }
            ]
        }
    )
    (container,) = deployment_manifest(sc.deployments[0])["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localmesh.dev/sandbox/frontend:latest"
    assert container["ports"][0]["containerPort"] == 8080
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "DOWNSTREAM_URL": "http://api.billing:8080",
        "PROPAGATE_HEADERS": "version,x-tenant",
        "DOWNSTREAM_KEEPALIVE": "true",
    }


def test_bad_frontend_keys_are_listed() -> None:
    with pytest.raises(ConfigError) as info:
        Scenario.from_dict(
            {
                "deployments": [
                    {"name": "a", "workload": "frontend"},
                    {"name": "b", "workload": "frontend", "downstream": "http://10.0.0.1/"},
                    {"name": "c", "workload": "frontend", "downstream": "ftp://x"},
                    {"name": "d", "downstream": "http://x.y"},
                    {
                        "name": "e",
                        "workload": "frontend",
                        "downstream": "http://x.y",
                        "propagateHeaders": "version",
                        "downstreamKeepAlive": "yes",
                    },
                ]
            }
        )
    text = str(info.value)
    assert "deployments[0].downstream: a frontend needs its downstream URL" in text
    assert "deployments[1].downstream: http://10.0.0.1/ is not on this machine" in text
    assert "deployments[2].downstream: 'ftp://x' is not an http:// URL" in text
    assert "deployments[3]: downstream and propagateHeaders are for frontend workloads" in text
    assert "deployments[4].propagateHeaders: must be a list of header names" in text
    assert "deployments[4].downstreamKeepAlive: must be true or false" in text


def test_a_cluster_ip_whose_port_another_process_serves_is_not_handed_out() -> None:
    probe = ServiceIPAllocator(seed=7)
    first = probe.allocate()
    probe.release_all()
    with socket.socket() as other:  # another sandbox process serving first:80
        other.bind((first, 80))
        other.listen()
        ips = ServiceIPAllocator(seed=7)  # would pick `first` again
        try:
            svc = created(ips, ports=[{"port": 80}])
            assert svc["spec"]["clusterIP"] != first
            assert svc["spec"]["clusterIPs"] == [svc["spec"]["clusterIP"]]
        finally:
            ips.release_all()
