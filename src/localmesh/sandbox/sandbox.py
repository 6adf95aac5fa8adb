"""`Sandbox`: a whole stand-in cluster in this process, for the demo and the tests.

async with Sandbox.start(scenario=Scenario.default()) as sb:
    subprocess.run(["kubectl", "get", "pods", "-A"], env=sb.env())
    sb.faults.set_ready("billing", pod_name, False)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import resource
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from localmesh.errors import ConfigError
from localmesh.sandbox import errors
from localmesh.sandbox.apiserver import ApiServer
from localmesh.sandbox.certs import ServingCerts, make_serving_certs
from localmesh.sandbox.cluster import Cluster
from localmesh.sandbox.execauth import ExecCredentials
from localmesh.sandbox.faults import Faults
from localmesh.sandbox.ips import NO_PER_POD_ADDRESSES, SHARED, LoopbackAllocator, loopback_mode
from localmesh.sandbox.kubeconfig import write_kubeconfig
from localmesh.sandbox.processes import DEFAULT_PROCESS_IMAGES, NodeConfig
from localmesh.sandbox.rbac import AUTHENTICATED, MASTERS, Identities, User
from localmesh.sandbox.resources import BY_KIND, DEPLOYMENTS, ENDPOINTSLICES, PODS
from localmesh.sandbox.scenario import Scenario
from localmesh.sandbox.selectors import LabelSelector, Selector
from localmesh.sandbox.store import Obj, Store, StoredEvent

log = structlog.get_logger(__name__)

DEFAULT_KUBE_VERSION = "1.32"


class SandboxTimeout(AssertionError):
    """A wait_* helper gave up; the message says what it waited for."""


def _raise_fd_limit(wanted: int) -> None:
    # Every pod listener holds a socket: a thousand pods need more than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


GARBAGE_DELAY_ENV = "LOCALMESH_SANDBOX_GARBAGE_DELAY"


def garbage_delay_of(wanted: float | None) -> float:
    """Seconds the garbage collector waits (faults.garbage_delay): `wanted`, else the
    environment's LOCALMESH_SANDBOX_GARBAGE_DELAY, else 0 (at once)."""
    if wanted is None:
        text = os.environ.get(GARBAGE_DELAY_ENV, "").strip() or "0"
        try:
            wanted = float(text)
        except ValueError:
            raise ConfigError(f"{GARBAGE_DELAY_ENV}={text!r}: a number of seconds") from None
    if not wanted >= 0:
        raise ConfigError(f"garbage delay {wanted!r}: seconds, 0 or more")
    return wanted


class Sandbox:
    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        kubeconfig_path: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        kube_version: str = DEFAULT_KUBE_VERSION,
        token: str | None = None,
        ready_delay: float = 0.0,
        wait_ready: bool = True,
        ready_timeout: float = 60.0,
        history_size: int = 20000,
        process_images: tuple[str, ...] = DEFAULT_PROCESS_IMAGES,
        exec_token_seconds: float | None = None,
        loopback: str | None = None,
        garbage_delay: float | None = None,
    ) -> None:
        if not re.fullmatch(r"1\.\d+(\.\d+)?", kube_version):
            raise ConfigError(
                f"Kubernetes version {kube_version!r} is not of the form 1.MINOR[.PATCH]"
            )
        self.scenario = scenario if scenario is not None else Scenario.default()
        self.cluster = Cluster(history_size=history_size)
        # An address per pod where the machine has them, else ports on 127.0.0.1 (ips.py).
        self.loopback = loopback_mode(loopback)
        if self.loopback == SHARED:
            self.cluster.kubelet.ips = LoopbackAllocator(shared=True)
            self.cluster.service_ips.serve_cluster_ips = False
        self.cluster.faults.ready_delay = ready_delay
        self.cluster.faults.garbage_delay = garbage_delay_of(garbage_delay)
        self.identities = Identities(self.cluster.store)
        self.process_images = process_images
        self.token = token or secrets.token_urlsafe(24)
        self.readonly_token = secrets.token_urlsafe(24)
        self.kube_version = kube_version
        self._host, self._port = host, port
        self._kubeconfig_arg = Path(kubeconfig_path) if kubeconfig_path else None
        self._wait_ready = wait_ready
        self._ready_timeout = ready_timeout
        self._workdir: Path | None = None
        self._server: ApiServer | None = None
        self._changed = asyncio.Event()
        self.kubeconfig_path = Path()
        self.ca_path = Path()
        self._ca_pem = b""
        # With exec_token_seconds the kubeconfig runs an exec plugin printing tokens that
        # live that long (the API server refuses them after).
        self._exec_token_seconds = exec_token_seconds
        self.exec_credentials: ExecCredentials | None = None

    @classmethod
    def start(cls, scenario: Scenario | None = None, **kwargs: Any) -> Sandbox:
        """For `async with Sandbox.start(...) as sb:` (the sandbox starts on entry)."""
        return cls(scenario, **kwargs)

    async def __aenter__(self) -> Sandbox:
        await self.up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()

    # ---- lifecycle -----------------------------------------------------------------------
    async def up(self) -> None:
        """Start the API server and the scenario; on failure, undo what was started."""
        try:
            await self._up()
        except BaseException:
            await self.down()
            raise

    async def _up(self) -> None:
        started = time.monotonic()
        _raise_fd_limit(4 * len(self.scenario.deployments) + 4096)
        if self.loopback == SHARED:
            log.warning(
                "cluster IPs answer only the sandbox's pods; process containers cannot start",
                reason=NO_PER_POD_ADDRESSES,
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="localmesh-sandbox-"))
        certs = make_serving_certs()
        ctx = self._serving_context(certs)
        self.store.subscribe(self._notify)
        self.cluster.bootstrap(self.kube_version)
        self._server = ApiServer(
            self.cluster,
            tokens={self.token: "sandbox-admin"},
            readonly_tokens={self.readonly_token: "sandbox-viewer"},
            identities=self.identities,
            kube_version=self.kube_version,
            host=self._host,
            port=self._port,
            ssl_context=ctx,
        )
        if self._exec_token_seconds is not None:
            self.exec_credentials = ExecCredentials(
                self._workdir / "exec",
                self._exec_token_seconds,
                User("sandbox-admin", (MASTERS, AUTHENTICATED)),
            )
            self._server.exec_credentials = self.exec_credentials
        await self._server.start()
        self.cluster.faults._restart_apiserver = self._restart_apiserver
        self.cluster.kubelet.node = NodeConfig(
            api_host=self._host,
            api_port=self._server.port,
            ca_pem=certs.ca_pem,
            pods_dir=self._workdir / "pods",
            identities=self.identities,
            process_images=self.process_images,
        )
        self._ca_pem = certs.ca_pem
        self._write_kubeconfig()
        self.apply(self.scenario.manifests())
        if self._wait_ready:
            await self.wait_all_ready(self._ready_timeout)
        log.info(
            "sandbox up",
            url=self.url,
            kubeconfig=str(self.kubeconfig_path),
            services=len(self.scenario.services),
            seconds=round(time.monotonic() - started, 3),
        )

    def _serving_context(self, certs: ServingCerts) -> ssl.SSLContext:
        assert self._workdir is not None
        ca_path, cert_path, key_path = certs.write(self._workdir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)
        self.ca_path = ca_path
        return ctx

    def _write_kubeconfig(self) -> None:
        assert self._workdir is not None and self._server is not None
        self.kubeconfig_path = write_kubeconfig(
            self._kubeconfig_arg or self._workdir / "kubeconfig",
            self._server.url,
            self._ca_pem,
            self.token,
            user=self.exec_credentials.kubeconfig_user() if self.exec_credentials else None,
        )

    async def _restart_apiserver(self, downtime: float, rotate_credentials: bool) -> None:
        server = self.apiserver
        await server.stop()
        if rotate_credentials:
            self.rotate_credentials()
        if downtime > 0:
            await asyncio.sleep(downtime)  # the outage a test asked for
        await server.start()

    def rotate_credentials(self) -> None:
        """A new CA, serving certificate and admin token, as when a cluster is recreated;
        the kubeconfig is rewritten in place and the old token stops working. The new
        certificate is served from the next start of the API server on."""
        certs = make_serving_certs()
        self.apiserver.ssl_context = self._serving_context(certs)
        self._ca_pem = certs.ca_pem
        self.identities.remove_static(self.token)
        self.token = secrets.token_urlsafe(24)
        self.identities.add_static(self.token, User("sandbox-admin", (MASTERS, AUTHENTICATED)))
        node = self.cluster.kubelet.node
        if node is not None:
            self.cluster.kubelet.node = dataclasses.replace(node, ca_pem=certs.ca_pem)
        self._write_kubeconfig()
        log.info("sandbox credentials rotated", kubeconfig=str(self.kubeconfig_path))

    async def down(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        await self.cluster.shutdown()
        if self._kubeconfig_arg is not None:
            self._kubeconfig_arg.unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ---- access --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "the sandbox is not running"
        return self._server.url

    @property
    def port(self) -> int:
        assert self._server is not None, "the sandbox is not running"
        return self._server.port

    @property
    def apiserver(self) -> ApiServer:
        assert self._server is not None, "the sandbox is not running"
        return self._server

    @property
    def store(self) -> Store:
        return self.cluster.store

    @property
    def faults(self) -> Faults:
        return self.cluster.faults

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for subprocesses (kubectl, localmesh) that should use this cluster.

        kubectl caches discovery per host:port; a private cache directory keeps a later
        sandbox on a reused port from seeing an earlier one's answers.
        """
        cache = (self._workdir or Path(tempfile.gettempdir())) / "kube-cache"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig_path),
            "KUBECACHEDIR": str(cache),
            **extra,
        }

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token of the service account, as `kubectl create token` gets one."""
        return self.identities.issue(namespace, name, seconds)[0]

    def apply(self, manifests: list[Obj]) -> list[Obj]:
        """Create Kubernetes objects (dicts with apiVersion and kind) as a client would."""
        created = []
        for m in manifests:
            rtype = BY_KIND.get(m.get("kind", ""))
            if rtype is None:
                raise errors.bad_request(f"the sandbox does not serve kind {m.get('kind')!r}")
            created.append(self.cluster.create(rtype, m))
        return created

    def pods(self, namespace: str, selector: str | dict[str, str] | None = None) -> list[Obj]:
        """Pods in a namespace (a label selector string or dict), oldest first."""
        labels = (
            LabelSelector.from_match_labels(selector)
            if isinstance(selector, dict)
            else LabelSelector.parse(selector)
        )
        items, _ = self.store.list(PODS, namespace, Selector(labels))
        return sorted(items, key=lambda p: int(p["metadata"]["resourceVersion"]))

    def service_pods(self, namespace: str, service: str) -> list[Obj]:
        """The pods a service selects (live ones, not terminating)."""
        svc = self.store.get(BY_KIND["Service"], namespace, service)
        return [
            p
            for p in self.pods(namespace, svc["spec"].get("selector") or {})
            if not p["metadata"].get("deletionTimestamp")
        ]

    def ready_pod(self, namespace: str, name: str) -> Obj | None:
        """The pod if it exists and its Ready condition is True, else None."""
        pod = self.store.peek(PODS, namespace, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        return pod if ready else None

    def ready_endpoints(self, namespace: str, service: str) -> list[str]:
        """IPs of a service's endpoints whose condition is ready, from its EndpointSlices."""
        ips = []
        for s in self.store.iter(ENDPOINTSLICES, namespace):
            if s["metadata"].get("labels", {}).get("kubernetes.io/service-name") != service:
                continue
            for e in s.get("endpoints") or []:
                if e.get("conditions", {}).get("ready"):
                    ips.extend(e.get("addresses", []))
        return sorted(ips)

    # ---- waiting -------------------------------------------------------------------------
    def _notify(self, ev: StoredEvent) -> None:
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[], Any], seconds: float = 10.0, what: str = "condition"
    ) -> Any:
        """Re-evaluate `predicate` after every change in the cluster until it returns a
        truthy value (returned), or fail with SandboxTimeout after `seconds` seconds."""
        deadline = time.monotonic() + seconds
        while True:
            self._changed.clear()
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxTimeout(f"timed out after {seconds}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_ready_endpoints(
        self, namespace: str, service: str, count: int = 1, seconds: float = 10.0
    ) -> list[str]:
        """Wait until a service has at least `count` ready endpoints; returns their IPs."""
        return list(
            await self.wait_for(
                lambda: (
                    (ips := self.ready_endpoints(namespace, service)) and len(ips) >= count and ips
                ),
                seconds,
                f"{count} ready endpoint(s) of {namespace}/{service}",
            )
        )

    async def wait_all_ready(self, seconds: float = 60.0) -> None:
        """Wait until every deployment has all its replicas ready."""

        def all_ready() -> bool:
            return all(
                d.get("status", {}).get("readyReplicas", 0) >= d["spec"].get("replicas", 1)
                and d.get("status", {}).get("replicas", 0) == d["spec"].get("replicas", 1)
                for d in self.store.iter(DEPLOYMENTS)
            )

        await self.wait_for(all_ready, seconds, "every deployment to be ready")

    async def replace_pod(self, namespace: str, pod: str, seconds: float = 10.0) -> str:
        """Delete a pod now and wait for its deployment's replacement to be Ready;
        returns the replacement's name."""
        old = self.store.get(PODS, namespace, pod)
        owner = next((r["uid"] for r in old["metadata"].get("ownerReferences", [])), None)
        if owner is None:
            raise errors.bad_request(f"pod {pod} has no owner to replace it")
        before = {p["metadata"]["name"] for p in self.pods(namespace)}
        self.faults.delete_pod(namespace, pod)

        def replacement() -> str | None:
            for p in self.store.iter(PODS, namespace):
                md = p["metadata"]
                if md["name"] in before or md.get("deletionTimestamp"):
                    continue
                if any(r["uid"] == owner for r in md.get("ownerReferences", [])) and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", [])
                ):
                    return str(md["name"])
            return None

        return str(await self.wait_for(replacement, seconds, f"a replacement for {pod}"))
