"""One developer's mesh of one Service: checks, join, Lease renewal, leave.

    session = MeshSession(kube, MeshOptions(namespace, service, mark, exposed))
    joined = await session.join()     # MeshError (nothing left changed) or the router is in
    ...                               # session.lost is set if the Lease could not be kept
    await session.leave()             # the last one out restores the Service

Nothing in the cluster changes before every check passed: the Service exists, has a
selector and is not meshed in manual mode, the exposed ports are Service ports, the local
ports accept a connection (unless skipped), and every permission needed is granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from localmesh.clustermesh import manifests as m
from localmesh.clustermesh.marks import ExposedPort, VersionMark
from localmesh.clustermesh.membership import (
    LeaveResult,
    MeshError,
    cas_service,
    create_owned,
    delete_session_objects,
    ensure,
    lease_expires_in,
    lease_live,
    mesh_state,
    remove_sessions,
    routed,
    session_leases,
    with_session,
)
from localmesh.clustermesh.pods import pod_ready
from localmesh.clustermesh.port_protocols import declared_not_http
from localmesh.clustermesh.raw_http import http_get
from localmesh.clustermesh.tunnel_wire import new_secret
from localmesh.errors import KubeError
from localmesh.forward import Connector, PodForwarder
from localmesh.kube import Target
from localmesh.kube.objects import Conflict, KubeObjects
from localmesh.kube.targets import JSON, PortNotFound, describe_port

log = structlog.get_logger(__name__)

# Pod states that will not become Ready by waiting: fail at once, with the kubelet's reason.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)
POLL_SECONDS = 0.1  # only while joining: pods start in a second or two
ROUTED_POLL_SECONDS = 10.0  # the router holds a /routed request open this long


@dataclass(frozen=True)
class MeshOptions:
    namespace: str
    service: str
    mark: VersionMark
    exposed: tuple[ExposedPort, ...]
    image: str = m.DEFAULT_ROUTER_IMAGE
    mode: str = "auto"
    skip_port_checking: bool = False
    ready_timeout: float = 60.0
    lease_seconds: int = m.LEASE_DURATION_SECONDS
    holder: str = field(default_factory=lambda: f"{getpass.getuser()}@{socket.gethostname()}")
    session_id: str = field(default_factory=lambda: secrets.token_hex(3))
    # Seconds without a live session before the router restores the Service (None: the
    # router's default). The session that creates the router sets it.
    router_idle_timeout: float | None = None


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str  # plural, with /subresource where one is meant
    group: str = ""
    name: str | None = None

    def can_i(self, namespace: str) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        if self.name:
            what = f"{what}/{self.name}"
        return f"kubectl auth can-i {self.verb} {what} -n {namespace}"


def session_permissions() -> list[Permission]:
    """One developer's own objects, in either mode: shadow pod, its tunnel, Secret, Lease."""
    return [
        Permission("list", "pods"),
        Permission("get", "pods"),
        Permission("create", "pods"),
        Permission("delete", "pods"),
        Permission("create", "pods/portforward"),
        Permission("get", "secrets"),
        Permission("create", "secrets"),
        Permission("delete", "secrets"),
        *(
            Permission(verb, "leases", "coordination.k8s.io")
            for verb in ("get", "list", "create", "update", "delete")
        ),
    ]


def needed_permissions(namespace: str, service: str) -> list[Permission]:
    """What `mesh` does with the user's credentials, then every right of the router's Role
    (Kubernetes lets a user grant only rights the user holds)."""
    origin, router = m.origin_name(service), m.router_name(service)
    rbac = "rbac.authorization.k8s.io"
    wanted = [
        Permission("get", "services", name=service),
        Permission("update", "services", name=service),
        Permission("create", "services"),
        Permission("get", "services", name=origin),
        Permission("update", "services", name=origin),
        Permission("delete", "services", name=origin),
        *session_permissions(),
    ]
    for resource, group in (
        ("deployments", "apps"),
        ("serviceaccounts", ""),
        ("roles", rbac),
        ("rolebindings", rbac),
    ):
        wanted.append(Permission("create", resource, group))
        wanted += [Permission(v, resource, group, router) for v in ("get", "update", "delete")]
    role = next(o for o in m.router_rbac(namespace, service) if o["kind"] == "Role")
    for rule in role["rules"]:
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                for name in rule.get("resourceNames") or [None]:
                    wanted.append(Permission(verb, resource, rule["apiGroups"][0], name))
    return list(dict.fromkeys(wanted))


async def missing_permissions(kube: KubeObjects, namespace: str, service: str) -> list[str]:
    """`kubectl auth can-i ...` lines for each needed permission the user lacks."""
    wanted = needed_permissions(namespace, service)

    async def allowed(p: Permission) -> bool:
        resource, _, sub = p.resource.partition("/")
        return await kube.can_i(
            p.verb, resource, namespace, group=p.group, name=p.name, subresource=sub or None
        )

    answers = await asyncio.gather(*(allowed(p) for p in wanted))
    return [p.can_i(namespace) for p, ok in zip(wanted, answers, strict=True) if not ok]


async def local_port_open(port: int, seconds: float = 1.0) -> bool:
    """Something on this machine accepts connections on `port` (IPv4 or IPv6 loopback)."""
    for host in ("127.0.0.1", "::1"):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), seconds)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


def _running(pod: JSON) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in (s.get("state") or {}) for s in statuses)


def _stuck(pod: JSON) -> str | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            detail = waiting.get("message") or ""
            return f"{waiting['reason']}" + (f": {detail}" if detail else "")
    return None


async def wait_pod_ready(
    kube: KubeObjects,
    namespace: str,
    selector: str,
    *,
    what: str,
    image: str,
    seconds: float,
    running_is_enough: bool = False,
) -> JSON:
    """The first Ready (or, with `running_is_enough`, running) pod matching `selector`;
    MeshError when one cannot start (image pull, crash loop) or none is in `seconds`."""
    done = _running if running_is_enough else pod_ready
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    last = "no pod yet"
    while True:
        pods = await kube.list("Pod", namespace, selector)
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue  # a router on its way out (a leaver's) serves no one for long
            if done(pod):
                return pod
            reason = _stuck(pod)
            if reason is not None:
                name = pod["metadata"]["name"]
                if "Image" in reason:
                    hint = (
                        f"; image {image}: build it from localmesh's Dockerfile, push it "
                        "to a registry the cluster can pull from and pass --router-image "
                        '(README, section "mesh": The image)'
                    )
                else:
                    hint = f"; see kubectl logs -p -n {namespace} {name}"
                raise MeshError(f"{what} pod {namespace}/{name} cannot start: {reason}{hint}")
            last = f"pod {pod['metadata']['name']} is {pod.get('status', {}).get('phase')}"
        if loop.time() >= until:
            state = "running" if running_is_enough else "Ready"
            raise MeshError(f"{what} was not {state} within {seconds:g}s ({last})")
        await asyncio.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Joined:
    spec: m.SessionSpec
    secret: bytes
    created: list[str]
    reused: list[str]
    first: bool  # this session created the router
    router_pod: str = ""  # the Ready router pod the Service was swapped to
    router_health_port: int = m.ROUTER_HEALTH_PORT


def health_port_of(pod: JSON) -> int:
    """The port of the router pod's health server (its container port `lm-health`)."""
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "lm-health":
                return int(port["containerPort"])
    return m.ROUTER_HEALTH_PORT


@dataclass(frozen=True)
class RouterAnswer:
    """The router's answer to GET /routed/<session>."""

    routed: bool
    held_by: str | None = None  # an older session routes this mark: `holder (session …)`


ANSWER_GRACE = 5.0  # beyond ?wait=, for the port-forward and the router to answer


async def ask_routed(host: str, port: int, session: str, wait: float) -> RouterAnswer:
    """One GET /routed/<session>?wait=S to a router's health port (200 routed, 404 not
    yet, 409 an older session holds the mark); OSError, TimeoutError or ValueError without
    a whole answer."""
    status, body = await http_get(
        host,
        port,
        f"/routed/{session}?wait={wait:.1f}",
        within=wait + ANSWER_GRACE,
        host_header="router",
    )
    if status == 200:
        return RouterAnswer(True)
    if status == 404:
        return RouterAnswer(False)
    if status == 409:
        held = body.decode("utf-8", "replace").strip().removeprefix("mark held by ")
        return RouterAnswer(False, held or "another session")
    raise OSError(f"the router answers {status}")


async def wait_routed(connector: Connector, namespace: str, joined: Joined, seconds: float) -> None:
    """Until the router's Envoy ACKed a route for this session's mark: its GET
    /routed/<session>, long-polled through a port-forward to the router pod (the user's own
    right; the router needs none to tell). MeshError after `seconds`, or at once when an
    older session holds the same mark (two developers started it at the same moment)."""
    target = Target(joined.router_pod, "", joined.router_health_port)
    forwarder = PodForwarder(connector, namespace, target, spares=0)
    host, port = await forwarder.start()
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    last = "no answer yet"
    try:
        while (left := until - loop.time()) > 0:
            try:
                answer = await ask_routed(
                    host, port, joined.spec.name, min(left, ROUTED_POLL_SECONDS)
                )
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                last = str(exc) or type(exc).__name__
                await asyncio.sleep(POLL_SECONDS)  # the port-forward is retried shortly
                continue
            if answer.routed:
                return
            if answer.held_by is not None:
                spec = joined.spec
                raise MeshError(
                    f"the mark {spec.header}: {spec.value} is already routed to "
                    f"{answer.held_by}, which started first; choose another --version-mark"
                )
            last = "the router answers 404"
    finally:
        await forwarder.stop()
    raise MeshError(
        f"the router {namespace}/{joined.router_pod} did not route this session's mark "
        f"within {seconds:g}s ({last}); see kubectl logs -n {namespace} {joined.router_pod}"
    )


@dataclass(frozen=True)
class Checked:
    service: JSON
    ports: list[m.PortMap]
    router_ports: list[m.RouterPort]


class MeshSession:
    """One developer session meshing one Service."""

    def __init__(self, kube: KubeObjects, options: MeshOptions) -> None:
        self.kube = kube
        self.options = options
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.spec: m.SessionSpec | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._lease: JSON | None = None
        self.on_shadow: Callable[[m.SessionSpec, bytes], None] | None = None

    @property
    def where(self) -> str:
        return f"{self.options.namespace}/{self.options.service}"

    @property
    def clean_hint(self) -> str:
        return f"`localmesh mesh clean -n {self.options.namespace} {self.options.service}`"

    async def check(self) -> Checked:
        """Every check that must pass before anything changes."""
        o = self.options
        if o.mode not in ("auto", "manual"):
            raise MeshError(f"--mode {o.mode}: use auto (the default) or manual")
        # Independent reads at once; their verdicts below keep the order of the messages.
        service, leases, missing = await asyncio.gather(
            self.kube.get("Service", o.namespace, o.service),
            session_leases(self.kube, o.namespace, o.service),
            self.missing_permissions(),
        )
        if service is None:
            raise MeshError(f"service {self.where} not found")
        state = mesh_state(service)
        if state.mode is not None and state.mode != o.mode:
            raise MeshError(
                f"service {self.where} is meshed in {state.mode} mode; {o.mode} mode cannot "
                f"join it ({self.clean_hint} removes sessions that are gone)"
            )
        # Manual sessions leave the Service as it is: their Leases say which mode they use.
        for lease in leases.values():
            notes = lease["metadata"].get("annotations") or {}
            other = notes.get(m.MODE_ANNOTATION, "auto")
            if other != o.mode and lease_live(lease):
                holder = (lease.get("spec") or {}).get("holderIdentity", "?")
                raise MeshError(
                    f"service {self.where} is meshed in {other} mode by {holder}; "
                    f"{o.mode} mode cannot join it"
                )
        selector = state.original_selector
        if selector is None:
            selector = service.get("spec", {}).get("selector") or None
        if not selector:
            raise MeshError(
                f"service {self.where} has no selector (its endpoints are managed by hand); "
                "mesh needs a Service that selects its pods"
            )
        pods = await self.kube.list("Pod", o.namespace, m.label_selector(selector))
        try:
            ports = m.port_maps(service, ((e.local, e.remote) for e in o.exposed), pods)
            router_ports = m.router_ports(service, pods)
        except PortNotFound as exc:
            raise MeshError(
                f"service {self.where} has no port {exc.wanted}; its ports: "
                f"{', '.join(exc.available) or 'none'} (--expose LOCAL:PORT names a Service port)"
            ) from None
        except m.PortError as exc:
            raise MeshError(str(exc)) from None
        # A mark is an HTTP header: a port declared as another protocol cannot carry it.
        for spec in service.get("spec", {}).get("ports") or []:
            protocol = declared_not_http(spec)
            if protocol is not None and any(p.remote == spec.get("port") for p in ports):
                raise MeshError(
                    f"service {self.where} port {describe_port(spec)} is declared {protocol} "
                    "(its name or appProtocol), not HTTP: marks are HTTP headers, so only an "
                    "HTTP or gRPC port can be exposed"
                )
        # The router serves a mark to its oldest session: a second developer with the same
        # mark on the same port would be told a header whose requests go to the first. The
        # router routes by target port (the pod's), so two Service ports targeting one pod
        # port are the same port here.
        targets = {p.target for p in ports}
        for lease in leases.values():
            mark = m.lease_mark(lease)
            same = mark is not None and (mark.header, mark.value) == (
                o.mark.key.lower(),
                o.mark.value,
            )
            if mark is None or not same or not lease_live(lease):
                continue
            # Unreadable ports: assume they overlap.
            theirs = targets if mark.targets is None else mark.targets
            if shared := targets & theirs:
                spec = lease.get("spec") or {}
                mine = sorted({p.remote for p in ports if p.target in shared})
                # A session that crashed holds its mark until its Lease expires: say when.
                left = lease_expires_in(lease) or 0.0
                raise MeshError(
                    f"the mark `{o.mark.header}` is already in use on {self.where} port "
                    f"{', '.join(map(str, mine))} (pod port {', '.join(map(str, sorted(shared)))})"
                    f" by {spec.get('holderIdentity', '?')} "
                    f"(session {lease['metadata']['name']}; if that `mesh` is gone, its Lease "
                    f"expires in {max(left, 0):.0f}s): pick another --version-mark"
                )
        if not o.skip_port_checking:
            local = sorted({p.local for p in ports})
            answers = await asyncio.gather(*(local_port_open(port) for port in local))
            for port, ok in zip(local, answers, strict=True):
                if not ok:
                    raise MeshError(
                        f"nothing accepts connections on local port {port}: start the process "
                        "that should serve it first, or pass --skip-port-checking"
                    )
        if missing:
            raise MeshError(
                f"missing permissions to mesh {self.where} (nothing was changed):\n  "
                + "\n  ".join(missing)
            )
        return Checked(service, ports, router_ports)

    async def missing_permissions(self) -> list[str]:
        return await missing_permissions(self.kube, self.options.namespace, self.options.service)

    async def join(self) -> Joined:
        """Check, then join. `on_shadow(spec, secret)`, when set, is called once the shadow
        pod runs, so the caller's tunnel connects while the router may still be starting."""
        if self.options.mode != "auto":
            raise MeshError(f"--mode {self.options.mode}: a ManualSession joins in that mode")
        began = time.monotonic()
        phases: dict[str, float] = {}

        def phase(name: str) -> None:
            phases[name] = round(time.monotonic() - began, 3)

        checked = await self.check()
        phase("checked")
        o = self.options
        spec = m.SessionSpec(
            namespace=o.namespace,
            service=o.service,
            session_id=o.session_id,
            header=o.mark.key,
            value=o.mark.value,
            slug=o.mark.slug,
            holder=o.holder,
            ports=tuple(checked.ports),
            image=o.image,
            mode=o.mode,
        )
        self.spec = spec
        secret = new_secret()
        created: list[str] = []
        reused: list[str] = []  # the router and its objects, made by an earlier session
        shadow: asyncio.Task[JSON] | None = None
        try:
            # The Lease first: it owns the session's Secret and shadow pod, so deleting a
            # dead session's Lease removes them, and `clean` finds a crash at any point.
            lease = m.session_lease(spec, duration=o.lease_seconds)
            try:
                self._lease = await self.kube.create("Lease", o.namespace, lease)
            except Conflict:
                self.spec = None  # someone else's: the rollback must not touch it
                raise MeshError(
                    f"a mesh session named {o.namespace}/{spec.name} exists already; "
                    "run mesh again (it picks another name)"
                ) from None
            created.append(f"Lease {o.namespace}/{spec.name}")
            self._renewer = asyncio.create_task(self._renew(), name=f"renew {spec.name}")
            # Owned by this Lease: one of the same name still there was an earlier Lease's.
            secret_obj = m.tunnel_secret(spec, secret, self._lease)
            await create_owned(self.kube, secret_obj)
            created.append(f"Secret {o.namespace}/{spec.name}")
            # The shadow next: its pod starts while the Service and the router are seen to.
            await create_owned(self.kube, m.shadow_pod(spec, self._lease))
            created.append(f"Pod {o.namespace}/{spec.name} (shadow)")
            phase("session objects")
            shadow = asyncio.create_task(self._shadow_running(spec, secret))

            def add(current: JSON) -> JSON:
                state = mesh_state(current)
                if state.mode is not None and state.mode != o.mode:
                    raise MeshError(
                        f"service {self.where} is meshed in {state.mode} mode "
                        f"({self.clean_hint} removes sessions that are gone)"
                    )
                if state.original_selector is None and not current["spec"].get("selector"):
                    raise MeshError(f"service {self.where} has no selector")
                return with_session(current, spec.name, o.mode)

            before, meshed = await cas_service(self.kube, o.namespace, o.service, add)
            first = mesh_state(before).original_selector is None
            phase("listed on the service")
            claim = f"{spec.name} {m.micro_time()}"
            # The origin Service first: it owns the rest (deleting it removes them all).
            # What an earlier, deleted origin Service owned may still be there, waiting for
            # the garbage collector: `ensure` replaces it, and only this origin's router pod
            # is waited for and selected (its uid is in the pod's labels).
            origin, made = await ensure(self.kube, m.origin_service(meshed), claim)
            (created if made else reused).append(
                f"Service {o.namespace}/{m.origin_name(o.service)}"
            )
            origin_uid = str(origin["metadata"]["uid"])
            deployment = m.router_deployment(
                o.namespace,
                o.service,
                o.image,
                checked.router_ports,
                idle_timeout=o.router_idle_timeout,
                origin_uid=origin_uid,
            )
            # The router's ServiceAccount and Role before its Deployment: a pod naming a
            # ServiceAccount that does not exist yet is refused, and the agent reads at once.
            for group in (m.router_rbac(o.namespace, o.service, [spec.name]), [deployment]):
                owned = [m.owned_by(obj, origin) for obj in group]
                made_all = await asyncio.gather(*(ensure(self.kube, obj, claim) for obj in owned))
                for obj, (found, new) in zip(owned, made_all, strict=True):
                    what = f"{obj['kind']} {o.namespace}/{obj['metadata']['name']}"
                    (created if new else reused).append(what)
                    if obj["kind"] == "Deployment":
                        deployment = found
            phase("router objects")
            # The pods of this very Deployment: its template's labels carry the origin's uid
            # (one made by an earlier localmesh has none: its pods are selected as before).
            wanted_selector = m.router_pod_labels(deployment, o.service)
            router_selector = m.label_selector(wanted_selector)
            router_pod, _ = await asyncio.gather(
                wait_pod_ready(
                    self.kube,
                    o.namespace,
                    router_selector,
                    what="router",
                    image=o.image,
                    seconds=o.ready_timeout,
                ),
                shadow,
            )
            phase("router ready, shadow running")

            def swap(current: JSON) -> JSON | None:
                if spec.name not in mesh_state(current).sessions:
                    raise MeshError(
                        f"this session was removed from {self.where} while joining "
                        "(its Lease expired?)"
                    )
                if current["spec"].get("selector") == wanted_selector:
                    return None
                return routed(current, wanted_selector.get(m.ORIGIN_UID_LABEL))

            await cas_service(self.kube, o.namespace, o.service, swap)
            phase("selector on the router")
        except BaseException:
            # Put back whatever this join changed, even on Ctrl-C, then report the cause.
            if shadow is not None:
                shadow.cancel()
                with contextlib.suppress(BaseException):
                    await shadow
            await asyncio.shield(self._rollback())
            raise
        log.debug("mesh joined", session=spec.name, first=first, seconds_since_start=phases)
        return Joined(
            spec,
            secret,
            created,
            reused,
            first,
            router_pod=str(router_pod["metadata"]["name"]),
            router_health_port=health_port_of(router_pod),
        )

    async def _shadow_running(
        self,
        spec: m.SessionSpec,
        secret: bytes,
    ) -> JSON:
        """The shadow pod once its agent runs; then `on_shadow` (the tunnel may connect)."""
        pod = await self._wait_shadow(spec)
        if self.on_shadow is not None:
            self.on_shadow(spec, secret)
        return pod

    async def _wait_shadow(self, spec: m.SessionSpec) -> JSON:
        """The session's shadow pod once its agent runs (both modes)."""
        o = self.options
        return await wait_pod_ready(
            self.kube,
            o.namespace,
            f"{m.SESSION_LABEL}={spec.name}",
            what="shadow",
            image=o.image,
            seconds=o.ready_timeout,
            # Ready only once this machine's tunnel connects, which it does after the pod
            # runs: running is what to wait for.
            running_is_enough=True,
        )

    async def _rollback(self) -> None:
        try:
            await self.leave()
        except Exception as exc:
            log.error("rollback failed; run `localmesh mesh clean`", error=str(exc))

    async def _renew(self) -> None:
        """Keep the Lease live; set `lost` when it is gone or cannot be renewed in time."""
        assert self.spec is not None
        o, name = self.options, self.spec.name
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        interval = min(m.RENEW_INTERVAL_SECONDS, o.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                lease = await self.kube.get("Lease", o.namespace, name)
                if lease is None:
                    self._lose(f"its Lease {o.namespace}/{name} was deleted")
                    return
                lease["spec"]["renewTime"] = m.micro_time()
                self._lease = await self.kube.replace("Lease", o.namespace, name, lease)
                last_ok = loop.time()
            except Conflict:
                continue
            except KubeError as exc:
                log.warning("lease renewal failed", lease=name, error=str(exc))
                if loop.time() - last_ok > o.lease_seconds:
                    self._lose(f"the Lease could not be renewed: {exc}")
                    return

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        log.error("mesh session lost", reason=reason)

    async def leave(self) -> LeaveResult:
        """Remove this session; the last live one restores the Service and removes the
        router, origin Service and RBAC."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        if self.spec is None:
            return LeaveResult(False, [])
        o, name = self.options, self.spec.name
        # Off the Service first (the last one out restores its selector: the moment that
        # counts), then the session's own objects; its Lease keeps the route until then.
        result = await remove_sessions(self.kube, o.namespace, o.service, {name})
        deleted = await delete_session_objects(self.kube, o.namespace, name)
        return LeaveResult(result.restored, deleted + result.deleted)
