"""`localmesh mesh`: requests inside the cluster that carry a header mark are served by a
process on this machine; `mesh list` shows who meshes what; `mesh clean` undoes leftovers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from localmesh.cli import mesh_help, mesh_manual
from localmesh.cli.seconds import check_seconds
from localmesh.cli.up import add_cluster_arguments
from localmesh.errors import ConfigError

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from localmesh.clustermesh.session import Joined, MeshOptions
    from localmesh.kube.objects import KubeObjects

ACTIONS = ("list", "clean", "recover")

EPILOG = """\
examples:
  %(prog)s billing/billing-api --expose 9090:8080 --version-mark dev
        requests to billing-api:8080 with the header `version: dev` go to 127.0.0.1:9090
  %(prog)s -n billing billing-api --expose 8080 --versionMark kt-mark:
        the header `kt-mark: <random>`; local port 8080 serves service port 8080
  %(prog)s billing/billing-api --mode manual --expose 9090:8080 --version-mark dev
        for clusters with Istio: a shadow pod labelled version=dev; prints the rules
  %(prog)s list                      every developer's live marks (all namespaces)
  %(prog)s clean --dry-run           what a crashed session left, and would be undone
  %(prog)s clean -n billing billing-api
                                     put billing-api back, remove what localmesh made

Ctrl-C leaves the mesh: the last developer out puts the Service back exactly as it was.
A Service called list, clean or recover is given as NAMESPACE/NAME.
`%(prog)s list --help`, `%(prog)s clean --help`: the options of each action.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mesh",
        help="serve header-marked requests to a cluster Service from this machine",
        description="Route the requests that reach a Service inside the cluster and carry\n"
        "your header mark to a process on this machine; every other request is served by\n"
        "the cluster's pods as before. Several developers can mesh one Service at once,\n"
        "each with their own mark. Also: `mesh list`, `mesh clean` (alias `recover`).",
        epilog=EPILOG,
    )
    parser.add_argument(
        "target",
        metavar="[NAMESPACE/]SERVICE | list | clean | recover",
        help="the Service to mesh, or an action",
    )
    parser.add_argument(
        "service", nargs="?", help="clean/recover: only this Service ([NAMESPACE/]SERVICE)"
    )
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    parser.add_argument(
        "--expose",
        action="append",
        metavar="PORT|LOCAL:REMOTE[,...]",
        help="Service ports to serve from this machine: `8080` or `9090:8080` (local "
        "9090 serves service port 8080), comma-separated or repeated",
    )
    parser.add_argument(
        "--version-mark",
        "--versionMark",
        dest="version_mark",
        metavar="[KEY:]VALUE",
        help="the header that marks your requests: `dev` (version: dev), `kt-mark:` "
        "(a random value), `kt-mark:dev`; default: version: <random>",
    )
    parser.add_argument(
        "--skip-port-checking",
        "--skipPortChecking",
        dest="skip_port_checking",
        action="store_true",
        help="do not check that the local ports accept connections before starting",
    )
    parser.add_argument(
        "--router-image",
        "--routerImage",
        dest="router_image",
        metavar="IMAGE",
        help="image of the router and shadow pods (default: localmesh/localmesh:VERSION; "
        "build it from localmesh's Dockerfile and push it to a registry the cluster pulls "
        'from: README, section "mesh": The image)',
    )
    parser.add_argument(
        "--mode", choices=("auto", "manual"), default="auto", help="auto (default) or manual"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the router and shadow pods may take to become Ready (default: 60)",
    )
    parser.add_argument(
        "--router-idle-timeout",
        type=float,
        metavar="SECONDS",
        help="once no session is live for this long, the router restores the Service and "
        "removes itself (default: 60; set by the session that creates the router)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="clean/recover: say what would be done"
    )
    mesh_manual.add_arguments(parser)
    add_cluster_arguments(parser)
    parser.set_defaults(run=run)
    _intermix(parser)


def _intermix(parser: argparse.ArgumentParser) -> None:
    """Let options sit between the positionals (`mesh clean -n billing billing-api`), which
    plain argparse rejects; the mesh parser has no subparsers, so intermixed parsing works."""
    base = type(parser)

    class Intermixed(base):  # type: ignore[valid-type,misc]
        _inside = False

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            if self._inside:  # parse_known_intermixed_args calls back into this
                return super().parse_known_args(args, namespace)
            if args is not None and (action := mesh_help.action_asking_help(self, args)):
                mesh_help.action_parser(self, action).print_help()
                self.exit()
            self._inside = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._inside = False

    parser.__class__ = Intermixed


def split_target(target: str, namespace: str | None, default: str) -> tuple[str, str]:
    """`NS/NAME` or `NAME` with -n; both must agree."""
    if "/" in target:
        ns, _, name = target.partition("/")
        if not ns or not name or "/" in name:
            raise ConfigError(f"{target!r}: give the Service as NAME or NAMESPACE/NAME")
        if namespace is not None and namespace != ns:
            raise ConfigError(f"{target!r} names namespace {ns!r} but -n says {namespace!r}")
        return ns, name
    return namespace or default, target


async def run(args: argparse.Namespace) -> int:
    from localmesh.kube.objects import KubeObjects, context_namespace

    action = args.target if args.target in ACTIONS else "mesh"
    if action != "mesh" and args.expose:
        raise ConfigError(f"mesh {action}: --expose belongs to `mesh SERVICE`")
    if action in ("mesh", "list") and args.service:
        raise ConfigError(f"unexpected argument {args.service!r}")
    if action not in {"clean", "recover"} and args.dry_run:
        raise ConfigError("--dry-run belongs to `mesh clean` / `mesh recover`")
    options = None
    manual = mesh_manual.manual_args(args) if action == "mesh" else None
    if action == "mesh":  # every input checked before the cluster is contacted
        default = context_namespace(args.kubeconfig, args.context)
        options = mesh_options(args, *split_target(args.target, args.namespace, default))
    kube = KubeObjects.connect(args.kubeconfig, args.context)
    try:
        if options is not None:
            return await run_mesh(kube, options, manual)
        if action == "list":
            with _namespace_hint(args.namespace):
                return await run_list(kube, args.namespace)
        namespace, service = args.namespace, None  # clean / recover
        if args.service:
            default = context_namespace(args.kubeconfig, args.context)
            namespace, service = split_target(args.service, args.namespace, default)
        with _namespace_hint(namespace):
            return await run_clean(kube, namespace, service, args.dry_run)
    finally:
        await kube.close()


@contextlib.contextmanager
def _namespace_hint(namespace: str | None) -> Iterator[None]:
    """Looking in every namespace needs cluster-wide rights; say how to do without."""
    from localmesh.errors import KubeError

    try:
        yield
    except KubeError as exc:
        if namespace is None and "(403)" in str(exc):
            raise KubeError(f"{exc}; pass -n NAMESPACE to look in one namespace") from None
        raise


# -- mesh SERVICE ------------------------------------------------------------------------
def mesh_options(args: argparse.Namespace, namespace: str, service: str) -> MeshOptions:
    from localmesh.clustermesh import manifests
    from localmesh.clustermesh.marks import parse_expose, parse_version_mark
    from localmesh.clustermesh.session import MeshOptions

    if not args.expose:
        raise ConfigError("--expose is required, e.g. --expose 8080 or --expose 9090:8080")
    check_seconds("--ready-timeout", args.ready_timeout)
    idle = args.router_idle_timeout
    if idle is not None:
        check_seconds("--router-idle-timeout", idle)
    return MeshOptions(
        namespace=namespace,
        service=service,
        mark=parse_version_mark(args.version_mark),
        exposed=parse_expose(args.expose),
        image=args.router_image or manifests.DEFAULT_ROUTER_IMAGE,
        mode=args.mode,
        skip_port_checking=args.skip_port_checking,
        ready_timeout=args.ready_timeout,
        router_idle_timeout=idle,
    )


def service_url(namespace: str, service: str, port: int) -> str:
    # An exposed port carries HTTP (session.check refuses the others), whatever its number.
    return f"http://{service}.{namespace}:{port}/"


def joined_text(options: MeshOptions, joined: Joined) -> str:
    mark = options.mark
    lines = [f"meshed {options.namespace}/{options.service} (mode {options.mode})"]
    lines += [f"  created {what}" for what in joined.created]
    lines += [f"  using {what} (another session's)" for what in joined.reused]
    for port in joined.spec.ports:
        lines.append(
            f"  service port {port.remote} -> this machine's 127.0.0.1:{port.local} "
            f"(marked requests only)"
        )
    lines.append(f"send the header  {mark.header}")
    url = service_url(options.namespace, options.service, joined.spec.ports[0].remote)
    lines.append(f"try from inside the cluster:  curl -H {shlex.quote(mark.header)} {url}")
    lines.append("Ctrl-C to stop: the Service is put back as it was once no one meshes it")
    return "\n".join(lines)


class RoutedView:
    """What `status` shows of an auto-mode session: the tunnel's state, and whether the
    router routes the mark (`connected, routed`, or `connected, not routed (why)`): until
    the join saw it routed, `routed`; then the latest answer of `watch` (a RoutedWatch),
    which keeps asking the router."""

    def __init__(self, tunnel: Any) -> None:
        self.tunnel = tunnel
        self.routed = False
        self.watch: Any = None

    @property
    def routing(self) -> str:
        if self.watch is not None:
            return str(self.watch.answer)
        return "routed" if self.routed else "not routed yet"

    @property
    def state(self) -> str:
        state = str(self.tunnel.state)
        head, sep, rest = state.partition(";")
        if not head.startswith("connected"):
            return state
        return f"{head}, {self.routing}{sep}{rest}"

    @property
    def stats(self) -> Any:
        return self.tunnel.stats


async def run_mesh(
    kube: KubeObjects, options: MeshOptions, manual: mesh_manual.ManualArgs | None = None
) -> int:
    import aiohttp

    from localmesh.clustermesh.localstate import StatePublisher, snapshot_of
    from localmesh.clustermesh.membership import MeshError
    from localmesh.clustermesh.routed_watch import RoutedWatch
    from localmesh.clustermesh.session import MeshSession, wait_routed
    from localmesh.clustermesh.tunnel_laptop import PortForwardDialer, TunnelClient
    from localmesh.errors import KubeError
    from localmesh.forward import Connector

    namespace, service = options.namespace, options.service
    session = MeshSession(kube, options) if manual is None else manual.session(kube, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    async with aiohttp.ClientSession() as http:
        connector = Connector(kube.access, http)
        tunnels: list[tuple[PortForwardDialer, TunnelClient]] = []

        def start_tunnel(spec: Any, secret: bytes) -> None:
            # Started as soon as the shadow pod exists: it connects while the router starts.
            dialer = PortForwardDialer(connector, namespace, spec.name)
            tunnel = TunnelClient(dialer, secret, {p.target: p.local for p in spec.ports})
            tunnel.start()
            tunnels.append((dialer, tunnel))

        async def stop_tunnel() -> None:
            for dialer, tunnel in tunnels:
                await tunnel.stop(grace=2.0)
                await dialer.close()

        with _signals(loop, stop):
            if manual is None:
                session.on_shadow = start_tunnel
            joining = asyncio.create_task(session.join())
            if not await _first(joining, stop):
                joining.cancel()  # the join puts back what it changed before it ends
                with contextlib.suppress(asyncio.CancelledError):
                    await joining
                await stop_tunnel()
                print("interrupted; nothing was left changed", flush=True)
                return 130
            try:
                joined = joining.result()
            except BaseException:
                await stop_tunnel()
                raise
            if not tunnels:
                start_tunnel(joined.spec, joined.secret)
            dialer, tunnel = tunnels[0]
            view = RoutedView(tunnel)
            published = StatePublisher(
                snapshot_of(
                    namespace,
                    service,
                    options.mark.header,
                    [str(p) for p in options.exposed],
                    tunnel if manual is not None else view,
                )
            )
            published.start()  # for `localmesh status`; removed on the way out
            failure: str | None = None
            result = None
            watch: RoutedWatch | None = None
            try:
                connecting = asyncio.create_task(
                    asyncio.wait_for(tunnel.wait_ready(), options.ready_timeout)
                )
                if await _first(connecting, stop):
                    try:
                        connecting.result()
                    except TimeoutError:
                        failure = (
                            f"the tunnel to shadow pod {namespace}/{joined.spec.name} did not "
                            f"connect within {options.ready_timeout:g}s"
                            + (f": {dialer.last_error}" if dialer.last_error else "")
                        )
                    else:
                        log.debug("mesh tunnel connected", seconds=time.monotonic() - began)
                        if manual is None:
                            failure = await _until_routed(
                                wait_routed(connector, namespace, joined, options.ready_timeout),
                                stop,
                            )
                        view.routed = failure is None and not stop.is_set()
                        if view.routed:
                            log.debug("mesh routed", seconds=time.monotonic() - began)
                            if manual is None:  # from now on, `status` shows the router's
                                watch = RoutedWatch(
                                    kube, connector, namespace, service, joined.spec.name
                                )
                                view.watch = watch
                                watch.start()
                            published.publish()  # on disk before we say so
                            if manual is None:
                                print(joined_text(options, joined), flush=True)
                            else:
                                text = mesh_manual.describe(options, session, manual.output)
                                print(text, flush=True)
                            lost = asyncio.create_task(session.lost.wait())
                            await _first(lost, stop)
                            lost.cancel()
                else:
                    connecting.cancel()
            finally:
                # The Service first (the last one out restores it): the tunnel keeps serving
                # marked requests in flight meanwhile, then stops.
                if watch is not None:
                    await watch.stop()
                try:
                    result = await asyncio.shield(session.leave())
                except KubeError as exc:
                    raise MeshError(
                        f"could not leave the mesh of {namespace}/{service}: {exc}\n"
                        "the session's Lease expires by itself; then "
                        f"`localmesh mesh clean -n {namespace} {service}` puts the Service back"
                    ) from None
                finally:
                    await published.stop()
                    await stop_tunnel()
        if manual is not None:
            print(f"left {namespace}/{service}; removed the shadow", flush=True)
        elif result is not None and result.restored:
            print(f"restored {namespace}/{service}; removed the router", flush=True)
        else:
            print(f"left {namespace}/{service}; others still mesh it", flush=True)
        if failure is not None:
            raise MeshError(failure)
        if session.lost.is_set():
            raise MeshError(f"the mesh session was lost: {session.lost_reason}")
    return 0


async def _until_routed(waiting: Coroutine[Any, Any, None], stop: asyncio.Event) -> str | None:
    """Wait for the router to route this session (or `stop`); the failure, if any."""
    from localmesh.clustermesh.membership import MeshError

    task = asyncio.create_task(waiting)
    if not await _first(task, stop):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    try:
        task.result()
    except MeshError as exc:
        return str(exc)
    return None


async def _first(task: asyncio.Task[Any], stop: asyncio.Event) -> bool:
    """Wait for `task` or `stop`; True when `task` finished first (its result is ready)."""
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    return task.done()


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Any:
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# -- mesh list -----------------------------------------------------------------------------
def session_rows(leases: Iterable[dict[str, Any]], now: datetime) -> list[list[str]]:
    from localmesh.clustermesh import manifests as m
    from localmesh.clustermesh.membership import lease_live, parse_time

    rows = []
    for lease in leases:
        meta = lease["metadata"]
        notes = meta.get("annotations") or {}
        spec = lease.get("spec") or {}
        renewed = parse_time(spec.get("renewTime"))
        ago = f"{(now - renewed).total_seconds():.0f}s ago" if renewed else "never"
        rows.append(
            [
                meta.get("namespace", ""),
                (meta.get("labels") or {}).get(m.SERVICE_LABEL, ""),
                f"{notes.get(m.HEADER_ANNOTATION, '?')}: {notes.get(m.VALUE_ANNOTATION, '?')}",
                # Leases written before modes existed are auto mode's
                notes.get(m.MODE_ANNOTATION) or "auto",
                str(spec.get("holderIdentity", "?")),
                notes.get(m.PORTS_ANNOTATION, ""),
                "live" if lease_live(lease, now) else "expired",
                ago,
            ]
        )
    return sorted(rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


async def run_list(kube: Any, namespace: str | None) -> int:
    from localmesh.clustermesh import manifests as m

    selector = f"{m.managed_selector()},{m.COMPONENT_LABEL}=session"
    leases = await kube.list("Lease", namespace, selector)
    rows = session_rows(leases, datetime.now(UTC))
    if not rows:
        where = f"namespace {namespace}" if namespace else "any namespace"
        print(f"no mesh sessions in {where}")
        return 0
    header = ["NAMESPACE", "SERVICE", "MARK", "MODE", "DEVELOPER", "PORTS", "STATE", "RENEWED"]
    print(table(header, rows))
    return 0


# -- mesh clean / recover ----------------------------------------------------------------
async def run_clean(kube: Any, namespace: str | None, service: str | None, dry_run: bool) -> int:
    from localmesh.clustermesh.cleanup import clean

    report = await clean(kube, namespace, service, dry_run=dry_run)
    for line in report.actions:
        print(line)
    for line in report.kept:
        print(f"kept {line}")
    if not report.actions:
        print("nothing to clean" + (" (dry run)" if dry_run else ""))
    return 0
