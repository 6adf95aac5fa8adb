"""The sandbox's kube-proxy: every Service's cluster IP (a loopback address) answers.

For each port of a Service with a cluster IP the proxy listens on clusterIP:port (and on
the node's IP at the nodePort for NodePort and LoadBalancer services). Each new connection
goes to the next ready endpoint of the Service's EndpointSlices, round robin; endpoints that
are terminating but still serving are used only when no ready one is left (kube-proxy since
Kubernetes 1.28). The endpoint lists follow every EndpointSlice write synchronously, so a
selector patch, a scale-up or a pod deletion changes where the next connection goes at once;
connections already open keep their pod, as conntrack keeps them with kube-proxy.

Where kube-proxy differs: with no endpoint the connection is accepted and reset (kube-proxy
rejects the SYN); a refused connect to one endpoint is retried on the next ones (a pod
deleted a moment ago may still be listed), as kube-proxy's old userspace mode did.
Headless (clusterIP None) and ExternalName services get no listener: cluster DNS answers
for them (`dns`). Endpoints outside 127.0.0.0/8 (a selectorless Service's manual Endpoints
may name any address) are never dialled: the sandbox's traffic stays on this machine.

A shared sandbox (ips.py: only 127.0.0.1 binds, as on macOS) cannot listen on cluster IPs:
each cluster IP port then listens on a port of its own on 127.0.0.1, which the sandbox's
pods reach through cluster DNS and `ips.dial`; other clients cannot, and the Service gets a
Warning event saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import structlog

from localmesh.sandbox.controllers import SERVICE_NAME_LABEL
from localmesh.sandbox.ips import (
    NO_PER_POD_ADDRESSES,
    NODE_IP,
    SHARED_HOST,
    ServiceIPAllocator,
    dial,
    share_port,
    unshare_port,
)
from localmesh.sandbox.resources import ENDPOINTSLICES, SERVICES
from localmesh.sandbox.store import Obj, Store, StoredEvent
from localmesh.sandbox.tasks import TaskSet

log = structlog.get_logger(__name__)

Address = tuple[str, int]
# Per direction: stop reading one side while this much waits to be written to the other.
WRITE_HIGH_WATER = 1 << 20
WRITE_LOW_WATER = 1 << 18
CONNECT_TIMEOUT = 5.0
LISTEN_BACKLOG = 1024


def _local(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class ServicePortRoute:
    """Where new connections to one service port go."""

    namespace: str
    service: str
    port_name: str
    ready: list[Address] = field(default_factory=list)
    serving_terminating: list[Address] = field(default_factory=list)
    _next: int = 0

    def candidates(self) -> list[Address]:
        """Endpoints to try for one new connection: the round robin pick first, then the rest
        in order (tried only if the pick refuses)."""
        pool = self.ready or self.serving_terminating
        if not pool:
            return []
        start = self._next % len(pool)
        self._next = start + 1
        return pool[start:] + pool[:start]


class _Splice(asyncio.Protocol):
    """One side of a proxied connection: what it reads, its peer writes. Back-pressure:
    when the peer's write buffer is full this side stops reading."""

    def __init__(self, proxy: ServiceProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer: _Splice | None = None
        self.got_eof = False
        self.sent_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's are not asyncio.Transport subclasses, hence no check).
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return False
        peer.transport.write_eof()
        peer.sent_eof = True
        if self.sent_eof:
            return False  # both directions are done: close
        if peer.got_eof and peer.transport is not None:
            peer.transport.close()
        return True  # keep the other direction open (half-close)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._forget(self)
        peer, self.peer = self.peer, None
        if peer is not None and peer.transport is not None:
            peer.peer = None
            peer.transport.close()  # flushes what is still buffered

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Client(_Splice):
    """The accepted side: holds its reads until the endpoint connection is up."""

    def __init__(self, proxy: ServiceProxy, route: ServicePortRoute | None) -> None:
        super().__init__(proxy)
        self.route = route
        self.early: list[bytes] = []  # read before the endpoint connection was up
        self.early_eof = False
        self.connecting = True

    def data_received(self, data: bytes) -> None:
        if self.connecting:
            # uvloop starts reading after connection_made even when it paused reading.
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.connecting:
            self.early_eof = True
            return True
        return super().eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self.proxy._track(self)
        candidates = self.route.candidates() if self.route is not None else []
        self.proxy._tasks.spawn(self._connect(candidates), "service-connection")

    async def _connect(self, candidates: list[Address]) -> None:
        loop = asyncio.get_running_loop()
        for address in candidates:
            if self.transport is None or self.transport.is_closing():
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, upstream = await loop.create_connection(
                        lambda: _Splice(self.proxy), *dial(*address)
                    )
            except (OSError, TimeoutError):
                continue  # a pod deleted a moment ago: the next endpoint
            if self.transport.is_closing():
                upstream.abort()
                return
            self.proxy._track(upstream)
            self.peer, upstream.peer = upstream, self
            self.connecting = False
            assert upstream.transport is not None
            for data in self.early:
                upstream.transport.write(data)
            self.early.clear()
            if self.early_eof:
                super().eof_received()
            else:
                self.transport.resume_reading()
            return
        self._reset()

    def _reset(self) -> None:
        """No endpoint: close with a TCP reset, as close to a refused connection as an
        accepted one gets."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.close()


@dataclass(eq=False)
class _Listener:
    address: Address
    sock: socket.socket
    shared_port: int = 0  # a shared sandbox's cluster IP port: served on 127.0.0.1 here
    server: asyncio.Server | None = None
    route: ServicePortRoute | None = None
    starting: bool = False
    closed: bool = False


class ServiceProxy:
    """Listeners on every Service's cluster IP and node ports, fed by the store's events."""

    def __init__(
        self,
        store: Store,
        tasks: TaskSet,
        ips: ServiceIPAllocator,
        warn: Callable[[Obj, str, str], None],
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._ips = ips
        self._warn = warn  # records a Warning event on a Service
        self._lag = lag  # seconds before an endpoint change takes effect (a fault)
        # (namespace, service) -> routes by service port name
        self._routes: dict[tuple[str, str], dict[str, ServicePortRoute]] = {}
        self._unserved: set[tuple[str, str]] = set()  # Services told their cluster IP is not served
        self._listeners: dict[Address, _Listener] = {}
        self._by_service: dict[tuple[str, str], set[Address]] = {}
        self._connections: set[_Splice] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    # ---- introspection -------------------------------------------------------------------
    def route(self, namespace: str, service: str, port_name: str = "") -> ServicePortRoute | None:
        return self._routes.get((namespace, service), {}).get(port_name)

    def listening(self, namespace: str, service: str) -> list[Address]:
        """The addresses the proxy listens on for a service (cluster IP and node ports)."""
        return sorted(self._by_service.get((namespace, service), set()))

    @property
    def open_connections(self) -> int:
        """Sockets open through the proxy (a proxied connection counts two)."""
        return len(self._connections)

    async def wait_idle(self, seconds: float = 10.0) -> None:
        """Wait until no proxied connection is open (TimeoutError after `seconds`)."""
        await asyncio.wait_for(self._idle.wait(), seconds)

    def _track(self, conn: _Splice) -> None:
        self._connections.add(conn)
        self._idle.clear()

    def _forget(self, conn: _Splice) -> None:
        self._connections.discard(conn)
        if not self._connections:
            self._idle.set()

    # ---- events --------------------------------------------------------------------------
    def on_event(self, ev: StoredEvent) -> None:
        if self._closed:
            return
        md = ev.obj["metadata"]
        if ev.rtype is SERVICES:
            if ev.type == "DELETED":
                self._ips.forget(ev.obj)
            self._sync_service(md.get("namespace", ""), md["name"])
        elif ev.rtype is ENDPOINTSLICES:
            service = (md.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if service:
                self._sync_endpoints(md.get("namespace", ""), service)

    def _sync_service(self, ns: str, name: str) -> None:
        key = (ns, name)
        svc = self._store.peek(SERVICES, ns, name)
        wanted: dict[Address, str] = {}  # address -> service port name
        if svc is not None:
            spec = svc.get("spec", {})
            ip = spec.get("clusterIP")
            served = spec.get("type", "ClusterIP") != "ExternalName" and ip and ip != "None"
            for p in spec.get("ports") or [] if served else []:
                if p.get("protocol", "TCP") != "TCP":
                    continue  # UDP and SCTP are not proxied
                if self._ips.contains(ip):
                    wanted[(ip, int(p["port"]))] = p.get("name", "")
                    if not self._ips.serve_cluster_ips and key not in self._unserved:
                        self._unserved.add(key)  # said once per Service
                        self._warn(
                            svc,
                            "ClusterIPNotServed",
                            f"cluster IP {ip} is not served on this machine, only to the "
                            f"sandbox's pods: {NO_PER_POD_ADDRESSES}; reach the Service by "
                            "port-forward, `localmesh up` or a NodePort on 127.0.0.1",
                        )
                if p.get("nodePort"):
                    wanted[(NODE_IP, int(p["nodePort"]))] = p.get("name", "")
        old_routes = self._routes.get(key, {})
        routes = {n: old_routes.get(n) or ServicePortRoute(ns, name, n) for n in wanted.values()}
        if routes:
            self._routes[key] = routes
        else:
            self._routes.pop(key, None)
        have = self._by_service.get(key, set())
        for address in have - set(wanted):
            self._close_listener(address)
        for address, port_name in wanted.items():
            listener = self._listeners.get(address)
            if listener is None and svc is not None:
                listener = self._open_listener(svc, address)
            if listener is not None:
                listener.route = routes[port_name]
        if wanted:
            self._by_service[key] = {a for a in wanted if a in self._listeners}
        else:
            self._by_service.pop(key, None)
        self._sync_endpoints(ns, name)

    def _sync_endpoints(self, ns: str, name: str) -> None:
        lag = self._lag()
        if lag > 0:
            # Applied late, from the store as it is then, like a lagging kube-proxy.
            asyncio.get_running_loop().call_later(lag, self._apply_endpoints, ns, name)
        else:
            self._apply_endpoints(ns, name)

    def _apply_endpoints(self, ns: str, name: str) -> None:
        if self._closed:
            return
        routes = self._routes.get((ns, name))
        if not routes:
            return
        slices = self._store.select(ENDPOINTSLICES, ns, {SERVICE_NAME_LABEL: name})
        for port_name, route in routes.items():
            ready: list[Address] = []
            fallback: list[Address] = []
            for s in slices:
                number = next(
                    (
                        p.get("port")
                        for p in s.get("ports") or []
                        if (p.get("name") or "") == port_name and p.get("protocol", "TCP") == "TCP"
                    ),
                    None,
                )
                if number is None:
                    continue
                for e in s.get("endpoints") or []:
                    cond = e.get("conditions") or {}
                    # Only this machine: a manual endpoint elsewhere is never dialled.
                    addresses = [(ip, int(number)) for ip in e.get("addresses") or [] if _local(ip)]
                    # An absent `ready` means ready (the EndpointSlice API's rule).
                    if cond.get("ready") is not False:
                        ready.extend(addresses)
                    elif cond.get("serving") and cond.get("terminating"):
                        fallback.extend(addresses)
            route.ready = sorted(set(ready))
            route.serving_terminating = sorted(set(fallback))

    # ---- listeners -----------------------------------------------------------------------
    def _open_listener(self, svc: Obj, address: Address) -> _Listener | None:
        # Bound and listening before this returns: a client that reads the Service back
        # can connect at once (the kernel queues it until the server accepts).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        shared = not self._ips.serve_cluster_ips and self._ips.contains(address[0])
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((SHARED_HOST, 0) if shared else address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"{address[0]}:{address[1]}"
            log.warning("service address taken", service=svc["metadata"]["name"], address=where)
            self._warn(svc, "FailedToListen", f"the service proxy cannot listen on {where}: {exc}")
            return None
        listener = _Listener(address, sock)
        if shared:
            listener.shared_port = int(sock.getsockname()[1])
            share_port(*address, listener.shared_port)
        self._listeners[address] = listener
        self._tasks.spawn(self._serve(listener), f"service-listener/{address[0]}:{address[1]}")
        return listener

    async def _serve(self, listener: _Listener) -> None:
        if listener.closed:
            return
        listener.starting = True
        listener.server = await asyncio.get_running_loop().create_server(
            lambda: _Client(self, listener.route), sock=listener.sock
        )
        if listener.closed:
            listener.server.close()

    def _close_listener(self, address: Address) -> None:
        listener = self._listeners.pop(address, None)
        if listener is None:
            return
        if listener.shared_port:
            unshare_port(*address, listener.shared_port)
        listener.closed = True
        if listener.server is not None:
            listener.server.close()  # stops accepting; open connections stay
        elif not listener.starting:
            listener.sock.close()

    async def close(self) -> None:
        """Stop every listener and drop every proxied connection."""
        self._closed = True
        for address in list(self._listeners):
            self._close_listener(address)
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        self._idle.set()
        self._ips.release_all()
