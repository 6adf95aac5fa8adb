"""The router's own verification of shadow pods the kubelet has not called Ready yet:
which pods it asks, how long an answer counts, and what the plan makes of it. The
shadow asked here is the real shadow agent (its /readyz) with a real tunnel connection."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from localmesh.clustermesh import (
    manifests as m,
    router_plan as rp,
    shadow_verify as sv,
    tunnel_wire as wire,
)
from localmesh.clustermesh.router import RouterAgent
from localmesh.clustermesh.tunnel_shadow import ShadowAgent
from localmesh.kube.targets import JSON
from tests.integration.tunnel_helpers import wait_until

NOW = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)
SPEC = m.SessionSpec(
    namespace="billing",
    service="billing-api",
    session_id="a1b2c3",
    header="version",
    value="dev",
    slug="dev",
    holder="ana@laptop",
    ports=(m.PortMap(9090, 8080, 8081),),
    image="img:1",
)


def shadow(
    *, ready: bool = False, uid: str = "uid-1", phase: str = "Running", ip: str | None = "10.0.1.1"
) -> JSON:
    """The shadow pod as `mesh` creates it, as the API server shows it once scheduled."""
    pod = copy.deepcopy(m.shadow_pod(SPEC))
    pod["metadata"]["uid"] = uid
    pod["status"] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        **({"podIP": ip} if ip else {}),
    }
    return pod


def plan(pod: JSON, verified: frozenset[str], *, now: datetime = NOW) -> rp.RouterPlan:
    return rp.plan(
        "10.0.0.9",
        [8081],
        leases=[m.session_lease(SPEC, NOW)],
        pods={SPEC.name: pod},
        slices=[],
        now=now,
        verified=verified,
    )


# -- the plan --------------------------------------------------------------------------------
def test_an_unready_shadow_is_routed_only_while_the_router_verified_that_very_pod() -> None:
    unready = shadow()
    (session,) = plan(unready, frozenset()).sessions
    assert not session.routed  # as before: the kubelet has not said Ready
    (session,) = plan(unready, frozenset({"uid-1"})).sessions
    assert session.routed and session.shadow_ip == "10.0.1.1"
    assert [r.cluster for r in plan(unready, frozenset({"uid-1"})).routes(8081)] == [
        f"shadow.{SPEC.name}.8081",
        "origin.8081",
    ]
    # A pod re-created under the same name is not the one verified.
    (session,) = plan(shadow(uid="uid-2"), frozenset({"uid-1"})).sessions
    assert not session.routed
    # Being deleted wins over a verification.
    deleting = shadow()
    deleting["metadata"]["deletionTimestamp"] = m.micro_time(NOW)
    (session,) = plan(deleting, frozenset({"uid-1"})).sessions
    assert not session.routed
    # No live Lease, no session, verified or not.
    later = NOW + timedelta(seconds=m.LEASE_DURATION_SECONDS + 1)
    assert plan(unready, frozenset({"uid-1"}), now=later).sessions == ()


def test_the_kubelets_ready_routes_without_any_verification() -> None:
    (session,) = plan(shadow(ready=True), frozenset()).sessions
    assert session.routed and session.shadow_ip == "10.0.1.1"


# -- which pods are asked, and where ------------------------------------------------------------
def test_a_running_unready_shadow_is_asked_on_its_readiness_probe_at_its_pod_ip() -> None:
    target = sv.probe_target(shadow())
    assert target == sv.ProbeTarget("uid-1", "10.0.1.1", m.shadow_health_port(SPEC), "/readyz")
    named = shadow()
    (container,) = named["spec"]["containers"]
    container["readinessProbe"]["httpGet"]["port"] = "lm-health"
    assert sv.probe_target(named) == target


def test_ready_pending_deleted_or_addressless_shadows_are_not_asked() -> None:
    deleting = shadow()
    deleting["metadata"]["deletionTimestamp"] = m.micro_time(NOW)
    no_probe = shadow()
    del no_probe["spec"]["containers"][0]["readinessProbe"]
    for pod in (
        None,
        shadow(ready=True),  # the kubelet's word is authoritative
        shadow(phase="Pending"),
        shadow(ip=None),
        deleting,
        no_probe,
    ):
        assert sv.probe_target(pod) is None


# -- freshness ----------------------------------------------------------------------------------
def test_an_ok_answer_counts_for_a_short_time_after_it_was_asked() -> None:
    checks = sv.Verifications(fresh_for=0.5)
    assert checks.next_expiry(0.0) is None
    assert checks.answered("a", True, asked=10.0, now=10.1)  # became fresh: re-plan
    assert checks.fresh(10.1) == {"a"}
    assert checks.next_expiry(10.1) == pytest.approx(0.4)
    assert not checks.answered("a", True, asked=10.2, now=10.25)  # still fresh: nothing to do
    assert checks.fresh(10.7) == {"a"}
    assert checks.fresh(10.71) == frozenset()  # nobody answered since: stale by the clock
    assert checks.next_expiry(10.71) is None
    # An OK to a question asked too long ago does not make it fresh.
    assert not checks.answered("b", True, asked=20.0, now=20.6)
    assert checks.fresh(20.6) == frozenset()


def test_a_failed_answer_makes_a_verification_stale_at_once() -> None:
    checks = sv.Verifications(fresh_for=0.5)
    checks.answered("a", True, asked=1.0, now=1.0)
    assert checks.answered("a", False, asked=1.1, now=1.15)  # changed: re-plan
    assert checks.fresh(1.15) == frozenset()
    assert not checks.answered("a", False, asked=1.2, now=1.2)  # already stale
    checks.answered("a", True, asked=1.3, now=1.3)
    checks.forget("a")
    assert checks.fresh(1.3) == frozenset()


# -- the pollers, against the real shadow agent ----------------------------------------------------
@asynccontextmanager
async def shadow_agent() -> AsyncIterator[ShadowAgent]:
    agent = ShadowAgent(b"s" * wire.SECRET_SIZE, [0], tunnel_port=0, health_port=0)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def connect_tunnel(agent: ShadowAgent) -> asyncio.StreamWriter:
    """One tunnel connection, as the developer's machine opens it."""
    reader, writer = await asyncio.open_connection(*agent.tunnel_address)
    writer.write(wire.MAGIC + b"s" * wire.SECRET_SIZE)
    assert await reader.readexactly(1) == wire.ACCEPTED
    return writer


async def until(changed: asyncio.Event, check: Callable[[], bool], what: str) -> None:
    """Wait on the verifier's change signal until `check()` holds (deadline 20 s)."""
    async with asyncio.timeout(20):
        while not check():
            changed.clear()
            await changed.wait()
    assert check(), what


async def test_the_verifier_follows_the_shadows_tunnel_and_stops_when_told() -> None:
    changed = asyncio.Event()
    verifier = sv.ShadowVerifier(changed.set)
    async with shadow_agent() as agent:
        assert agent.health_address is not None
        target = sv.ProbeTarget("uid-1", "127.0.0.1", agent.health_address[1], "/readyz")
        try:
            verifier.track({"uid-1": target})
            assert verifier.polling == {"uid-1"}
            assert not await sv.ask(target)  # no tunnel yet: 503
            assert verifier.fresh() == frozenset()

            tunnel = await connect_tunnel(agent)
            await until(changed, lambda: verifier.fresh() == {"uid-1"}, "verified")
            expiry = verifier.next_expiry()
            assert expiry is not None and 0 <= expiry <= sv.FRESH_FOR

            tunnel.close()  # the developer's machine goes away before the kubelet said Ready
            await until(changed, lambda: verifier.fresh() == frozenset(), "stale again")

            # Ready, deleted or Lease gone: the router tracks it no more, the poll ends.
            tunnel = await connect_tunnel(agent)
            await until(changed, lambda: verifier.fresh() == {"uid-1"}, "verified again")
            (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "verify shadow uid-1"]
            verifier.track({})
            assert verifier.polling == frozenset() and verifier.fresh() == frozenset()
            await asyncio.wait({task}, timeout=20)
            assert task.cancelled()
            tunnel.close()
        finally:
            await verifier.stop()


async def test_an_unanswered_question_fails_and_stop_ends_every_poll() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = sv.ProbeTarget("uid-9", "127.0.0.1", port, "/readyz")
    try:
        assert not await sv.ask(target, within=0.05)
        verifier = sv.ShadowVerifier(lambda: None)
        verifier.track({"uid-9": target, "uid-8": sv.ProbeTarget("uid-8", "127.0.0.1", 1, "/")})
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("verify shadow")]
        assert len(tasks) == 2
        await verifier.stop()
        assert all(t.done() for t in tasks) and verifier.polling == frozenset()
        assert verifier.fresh() == frozenset()
    finally:
        server.close()


async def test_a_request_waiting_for_a_tunnel_does_not_make_the_shadow_look_connected() -> None:
    """The machine is gone, marked requests keep arriving: each waits for a tunnel
    connection that never comes. /readyz must say 503 meanwhile, or the router (and the
    kubelet) would keep the mark off the pods until the session's Lease expires."""
    agent = ShadowAgent(b"s" * wire.SECRET_SIZE, [0], tunnel_port=0, health_port=0, wait=60)
    await agent.start()
    try:
        assert agent.health_address is not None
        target = sv.ProbeTarget("uid-1", "127.0.0.1", agent.health_address[1], "/readyz")
        tunnel = await connect_tunnel(agent)
        assert await sv.ask(target)
        tunnel.close()
        async with asyncio.timeout(20):
            while await sv.ask(target):  # the close reaches the shadow
                pass
        (exposed,) = agent.addresses.values()
        _, waiting = await asyncio.open_connection(*exposed)
        waiting.write(b"GET / HTTP/1.1\r\nHost: billing-api\r\nversion: dev\r\n\r\n")
        await wait_until(lambda: agent.stats.active == 1, "the request waiting for a tunnel")
        assert not await sv.ask(target)
        assert agent.stats.no_tunnel == 0 and agent.stats.active == 1
        # A tunnel connection that comes now carries it, and the shadow is connected.
        tunnel = await connect_tunnel(agent)
        await wait_until(lambda: agent.stats.tunnelled == 1, "the request carried")
        assert await sv.ask(target)
        waiting.close()
        tunnel.close()
    finally:
        await agent.stop()


def test_the_router_asks_only_live_sessions_shadows_that_run_unready() -> None:
    agent = RouterAgent("billing", "billing-api", pod_ip="10.0.0.9", health_port=15021)
    agent.ports = [8081]
    lease = m.session_lease(SPEC)  # renewed now
    agent._objects["Lease"] = {SPEC.name: lease}

    def asked(pod: JSON) -> list[sv.ProbeTarget]:
        agent._objects["Pod"] = {SPEC.name: pod}
        return list(agent._shadows_to_verify(agent.plan(datetime.now(UTC))).values())

    assert asked(shadow()) == [sv.probe_target(shadow())]
    assert asked(shadow(ready=True)) == []  # the kubelet said Ready
    deleting = shadow()
    deleting["metadata"]["deletionTimestamp"] = m.micro_time()
    assert asked(deleting) == []
    agent._objects["Lease"] = {SPEC.name: m.session_lease(SPEC, NOW - timedelta(hours=1))}
    assert asked(shadow()) == []  # its Lease expired
