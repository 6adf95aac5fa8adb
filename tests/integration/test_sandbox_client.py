"""The official Kubernetes Python client against the sandbox: list, watch, write, errors.

The client is synchronous, so every call runs in a thread while the sandbox serves on the
test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from localmesh.sandbox import Sandbox, scale_scenario
from localmesh.sandbox.certs import make_serving_certs
from tests import sandbox_fixtures
from tests.sandbox_fixtures import SandboxFactory, kube_client, kubectl

pytestmark = pytest.mark.integration
sandbox = sandbox_fixtures.sandbox
sandbox_factory = sandbox_fixtures.sandbox_factory


def core(sb: Sandbox, token: str | None = None) -> Any:
    return client.CoreV1Api(kube_client(sb, token))


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def api_error(
    fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as info:
        await call(fn, *args, **kwargs)
    return info.value.status, json.loads(str(info.value.body))


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def test_list_with_label_and_field_selectors(sandbox: Sandbox) -> None:
    v1 = core(sandbox)
    pods = await call(v1.list_pod_for_all_namespaces)
    assert sorted(p.metadata.namespace for p in pods.items) == [
        "admin",
        "billing",
        "users",
        "users",
    ]
    assert int(pods.metadata.resource_version) == sandbox.store.rv

    async def names(**kw: Any) -> list[str]:
        found = await call(v1.list_pod_for_all_namespaces, **kw)
        return sorted(p.metadata.labels["app"] for p in found.items)

    assert await names(label_selector="app=billing-api") == ["billing-api"]
    assert await names(label_selector="app in (users-api, admin-web)") == [
        "admin-web",
        "users-api",
    ]
    assert await names(label_selector="app!=users-api,pod-template-hash") == [
        "admin-web",
        "billing-api",
        "frontend",
    ]
    assert await names(label_selector="!app") == []
    one = pods.items[0].metadata.name
    assert len(await names(field_selector=f"metadata.name={one}")) == 1
    assert len(await names(field_selector="status.phase=Running")) == 4
    assert await names(field_selector="status.phase=Pending") == []
    assert len(await names(field_selector="metadata.namespace!=users")) == 2
    svcs = await call(v1.list_namespaced_service, "billing")
    assert [s.metadata.name for s in svcs.items] == ["billing-api"]
    assert svcs.items[0].spec.ports[0].target_port == "http"


async def test_tls_is_verified(sandbox: Sandbox, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(make_serving_certs().ca_pem)
    api = kube_client(sandbox)
    assert api.configuration.verify_ssl
    api.configuration.ssl_ca_cert = str(other_ca)
    api.configuration.retries = 0
    # A new ApiClient builds its pool from the configuration: the wrong CA must fail.
    with pytest.raises(urllib3.exceptions.MaxRetryError) as info:
        await call(client.CoreV1Api(client.ApiClient(api.configuration)).list_namespace)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    # Plain HTTP to the TLS port gets nothing useful either.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(sandbox.url.replace("https", "http") + "/api/v1/pods") as r:
                await r.read()


async def test_wrong_token_is_401_and_readonly_token_is_403(sandbox: Sandbox) -> None:
    status, body = await api_error(core(sandbox, "wrong").list_pod_for_all_namespaces)
    assert status == 401
    assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401
    viewer = core(sandbox, sandbox.readonly_token)
    assert (await call(viewer.list_namespace)).items
    status, body = await api_error(
        viewer.create_namespaced_config_map, "billing", configmap("x", {})
    )
    assert status == 403 and body["reason"] == "Forbidden"
    assert 'cannot create resource "configmaps"' in body["message"]


async def test_create_update_patch_delete_with_real_errors(sandbox: Sandbox) -> None:
    v1 = core(sandbox)
    created = await call(v1.create_namespaced_config_map, "billing", configmap("cfg", {"a": "1"}))
    assert created.metadata.uid and created.metadata.resource_version
    status, body = await api_error(v1.create_namespaced_config_map, "billing", configmap("cfg", {}))
    assert (status, body["reason"]) == (409, "AlreadyExists")
    assert body["details"] == {"name": "cfg", "kind": "configmaps"}

    status, body = await api_error(v1.read_namespaced_config_map, "nope", "billing")
    assert (status, body["reason"]) == (404, "NotFound")
    assert body["message"] == 'configmaps "nope" not found'

    status, body = await api_error(
        v1.create_namespaced_config_map, "missing-ns", configmap("cfg", {})
    )
    assert (status, body["reason"]) == (404, "NotFound")

    status, body = await api_error(
        v1.create_namespaced_config_map, "billing", configmap("Bad_Name", {})
    )
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    # Update with the current version works; with the stale one it is a 409 Conflict.
    created.data = {"a": "2"}
    updated = await call(v1.replace_namespaced_config_map, "cfg", "billing", created)
    assert updated.data == {"a": "2"}
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    status, body = await api_error(v1.replace_namespaced_config_map, "cfg", "billing", created)
    assert (status, body["reason"]) == (409, "Conflict")

    # Dict bodies are sent as strategic merge patches; lists as JSON patches.
    patched = await call(
        v1.patch_namespaced_config_map,
        "cfg",
        "billing",
        {"metadata": {"labels": {"tier": "gold"}}, "data": {"b": "3"}},
    )
    assert patched.data == {"a": "2", "b": "3"} and patched.metadata.labels == {"tier": "gold"}
    patched = await call(
        v1.patch_namespaced_config_map,
        "cfg",
        "billing",
        [{"op": "remove", "path": "/data/a"}],
    )
    assert patched.data == {"b": "3"}

    deleted = await call(v1.delete_namespaced_config_map, "cfg", "billing")
    assert deleted["status"] == "Success" and deleted["details"]["name"] == "cfg"
    status, _ = await api_error(v1.read_namespaced_config_map, "cfg", "billing")
    assert status == 404


async def test_strategic_merge_on_deployment_rolls_pods(sandbox: Sandbox) -> None:
    apps = client.AppsV1Api(kube_client(sandbox))
    before = {p["metadata"]["name"] for p in sandbox.pods("admin")}
    patch = {
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"version": "v2"}},
                "spec": {
                    "containers": [{"name": "http-echo", "env": [{"name": "X", "value": "1"}]}]
                },
            },
        }
    }
    dep = await call(apps.patch_namespaced_deployment, "admin-web", "admin", patch)
    containers = dep.spec.template.spec.containers
    assert len(containers) == 1 and containers[0].image.endswith("http-echo:latest")
    assert containers[0].env[0].name == "X"
    assert dep.metadata.generation == 2

    def rolled() -> bool:
        pods = sandbox.service_pods("admin", "admin-web")
        return (
            len(pods) == 2
            and not before & {p["metadata"]["name"] for p in pods}
            and all(p["metadata"]["labels"].get("version") == "v2" for p in pods)
        )

    await sandbox.wait_for(rolled, what="new pods of the patched template")
    await sandbox.wait_ready_endpoints("admin", "admin-web", count=2)


def start_watch(
    fn: Callable[..., Any], until: Callable[[list[dict[str, Any]]], bool], **kwargs: Any
) -> tuple[threading.Thread, list[dict[str, Any]], list[BaseException]]:
    """Run a client watch in a thread, collecting raw events until `until(events)`."""
    events: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def run() -> None:
        w: Any = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for ev in w.stream(fn, **kwargs):
                events.append({"type": ev["type"], "object": ev["raw_object"]})
                if until(events):
                    w.stop()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, events, failures


async def join(thread: threading.Thread, seconds: float = 15.0) -> None:
    await asyncio.to_thread(thread.join, seconds)
    assert not thread.is_alive(), "the watch did not finish"


async def test_watch_without_version_starts_with_added(sandbox: Sandbox) -> None:
    v1 = core(sandbox)
    thread, events, failures = start_watch(
        v1.list_pod_for_all_namespaces, lambda evs: len(evs) == 3, timeout_seconds=10
    )
    await join(thread)
    assert not failures
    assert [e["type"] for e in events] == ["ADDED"] * 3


async def test_watch_sees_objects_enter_and_leave_its_selector(sandbox: Sandbox) -> None:
    v1 = core(sandbox)
    listed = await call(v1.list_namespaced_pod, "billing", label_selector="app=billing-api")
    thread, events, failures = start_watch(
        v1.list_namespaced_pod,
        lambda evs: evs[-1]["type"] == "DELETED",
        namespace="billing",
        label_selector="app=billing-api",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=20,
    )
    pod = {
        "metadata": {"name": "extra", "labels": {"app": "other"}},
        "spec": {"containers": [{"name": "c", "image": "localmesh.dev/sandbox/http-echo"}]},
    }
    await call(v1.create_namespaced_pod, "billing", pod)
    await sandbox.wait_for(
        lambda: sandbox.ready_pod("billing", "extra"), what="the extra pod to be ready"
    )
    await call(
        v1.patch_namespaced_pod,
        "extra",
        "billing",
        {"metadata": {"labels": {"app": "billing-api"}}},
    )
    await call(
        v1.patch_namespaced_pod, "extra", "billing", {"metadata": {"labels": {"app": "gone"}}}
    )
    await join(thread)
    assert not failures
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    assert all(e["object"]["metadata"]["name"] == "extra" for e in events)
    assert events[0]["object"]["metadata"]["labels"]["app"] == "billing-api"
    assert events[1]["object"]["metadata"]["labels"]["app"] == "gone"


async def test_watch_from_expired_version_gets_410_and_relists(sandbox: Sandbox) -> None:
    v1 = core(sandbox)
    old = (await call(v1.list_namespaced_config_map, "billing")).metadata.resource_version
    await call(v1.create_namespaced_config_map, "billing", configmap("one", {}))
    sandbox.faults.expire_watch_history()
    thread, events, failures = start_watch(
        v1.list_namespaced_config_map,
        lambda evs: True,
        namespace="billing",
        resource_version=old,
        timeout_seconds=5,
    )
    await join(thread)
    assert not events
    assert isinstance(failures[0], ApiException) and failures[0].status == 410
    assert "Expired" in str(failures[0].reason)

    # The raw stream: HTTP 200, then one ERROR event carrying a 410 Expired Status.
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {sandbox.token}"}
    ) as session:
        url = f"{sandbox.url}/api/v1/namespaces/billing/configmaps?watch=1&resourceVersion={old}"
        async with session.get(url, ssl=False) as resp:
            assert resp.status == 200
            lines = (await resp.read()).decode().splitlines()
    error = json.loads(lines[0])
    assert error["type"] == "ERROR"
    assert error["object"]["code"] == 410 and error["object"]["reason"] == "Expired"

    # Relist, then watch from the fresh version: the next change arrives.
    fresh = await call(v1.list_namespaced_config_map, "billing")
    assert [c.metadata.name for c in fresh.items] == ["one"]
    thread, events, failures = start_watch(
        v1.list_namespaced_config_map,
        lambda evs: True,
        namespace="billing",
        resource_version=fresh.metadata.resource_version,
        timeout_seconds=10,
    )
    await call(v1.create_namespaced_config_map, "billing", configmap("two", {}))
    await join(thread)
    assert not failures
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "two")]


async def test_watch_bookmarks_and_timeout(sandbox: Sandbox) -> None:
    sandbox.faults.bookmark_interval = 0.05
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {sandbox.token}"}
    ) as session:
        url = (
            f"{sandbox.url}/api/v1/namespaces/users/pods?watch=true&allowWatchBookmarks=true"
            f"&resourceVersion={sandbox.store.rv}&timeoutSeconds=1"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with session.get(url, ssl=False) as resp:
            lines = (await resp.read()).decode().splitlines()
        elapsed = loop.time() - started
    assert 0.9 <= elapsed < 5, elapsed
    events = [json.loads(line) for line in lines]
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"]["kind"] == "Pod"
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) == sandbox.store.rv


async def test_endpoints_follow_readiness_and_termination(sandbox: Sandbox) -> None:
    v1 = core(sandbox)
    discovery = client.DiscoveryV1Api(kube_client(sandbox))
    pod = sandbox.pods("billing")[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]

    def slice_conditions() -> dict[str, dict[str, bool]]:
        out = {}
        for s in sandbox.store.iter(sandbox_fixtures.ENDPOINTSLICES, "billing"):
            for e in s.get("endpoints") or []:
                out[e["addresses"][0]] = e["conditions"]
        return out

    sandbox.faults.set_ready("billing", name, False)
    await sandbox.wait_for(lambda: not sandbox.ready_endpoints("billing", "billing-api"))
    ep = await call(v1.read_namespaced_endpoints, "billing-api", "billing")
    assert ep.subsets[0].addresses is None
    assert [a.ip for a in ep.subsets[0].not_ready_addresses] == [ip]
    assert ep.subsets[0].ports[0].port == 8080 and ep.subsets[0].ports[0].name == "http"
    slices = await call(
        discovery.list_namespaced_endpoint_slice,
        "billing",
        label_selector="kubernetes.io/service-name=billing-api",
    )
    assert slices.items[0].endpoints[0].conditions.ready is False
    sandbox.faults.set_ready("billing", name, None)
    await sandbox.wait_ready_endpoints("billing", "billing-api")

    # A deleted pod keeps serving while it terminates: ready false, terminating true.
    sandbox.faults.termination_delay = 30
    await call(v1.delete_namespaced_pod, name, "billing")
    await sandbox.wait_for(
        lambda: slice_conditions().get(ip, {}).get("terminating"), what="terminating endpoint"
    )
    assert slice_conditions()[ip] == {"ready": False, "serving": True, "terminating": True}
    ep = await call(v1.read_namespaced_endpoints, "billing-api", "billing")
    assert ip not in [a.ip for s in ep.subsets or [] for a in (s.addresses or [])]
    new_ips = await sandbox.wait_ready_endpoints("billing", "billing-api")
    assert new_ips != [ip]
    # Deleting again with a zero grace period removes it at once.
    await call(v1.delete_namespaced_pod, name, "billing", grace_period_seconds=0)
    await sandbox.wait_for(lambda: ip not in slice_conditions(), what="endpoint removal")


async def test_chunked_list_with_limit_and_continue(sandbox_factory: SandboxFactory) -> None:
    sb = await sandbox_factory(scale_scenario(7))
    v1 = core(sb)
    names: list[str] = []
    token = None
    pages = 0
    while True:
        page = await call(v1.list_namespaced_service, "scale-0", limit=3, _continue=token)
        names.extend(s.metadata.name for s in page.items)
        pages += 1
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 7 - len(names)
    assert pages == 3
    assert names == [f"svc-{i:04d}" for i in range(7)]
    res = await kubectl(sb, "get", "svc", "-n", "scale-0", "--chunk-size=2", "--no-headers")
    assert len(res.check().stdout.splitlines()) == 7


async def test_watch_list_initial_events_end_with_a_bookmark(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {sandbox.token}"}
    ) as session:
        url = (
            f"{sandbox.url}/api/v1/pods?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
            "&resourceVersionMatch=NotOlderThan&timeoutSeconds=5"
        )
        async with session.get(url, ssl=False) as resp:
            events: list[dict[str, Any]] = []
            while len(events) < 5:
                events.append(json.loads(await asyncio.wait_for(resp.content.readline(), 5)))
    assert [e["type"] for e in events] == ["ADDED"] * 4 + ["BOOKMARK"]
    marker = events[4]["object"]["metadata"]
    assert marker["annotations"] == {"k8s.io/initial-events-end": "true"}
