"""`localmesh init -n NS [-n NS ...]`: write services.yaml from the live Services of those
namespaces (localmesh.services_init has the rules), like `kubefwd svc -n`."""

from __future__ import annotations

import argparse
import difflib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localmesh.cli.up import DEFAULT_CONFIG, add_cluster_arguments, positive_int
from localmesh.errors import ConfigError, KubeError, LocalmeshError

EPILOG = """\
examples:
  %(prog)s -n billing -n users          ./services.yaml for every Service of both
  %(prog)s -n billing -o dev.yaml --context staging
  %(prog)s -n billing --force           write ./services.yaml again

Then: localmesh up   (it uses ./services.yaml when no -f is given)
"""

DEFAULT_LISTENER_PORT = 80
COMPLETION_SECONDS = 3.0  # a shell waits on -n completion: an unreachable cluster gives none


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "init",
        help="write services.yaml from the Services of some namespaces",
        description="Write services.yaml from the live Services of the namespaces given: "
        "one host per Service (<service>.localhost, or <service>.<namespace>.localhost where "
        "a name exists in several of them), with its port and, where the port's appProtocol "
        "or name says so, its type. Headless, ExternalName and selector-less Services are "
        "listed as comments saying why they are left out.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        required=True,
        metavar="NAMESPACE",
        help="a namespace whose Services to list (repeat for several)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"where to write (default: ./{DEFAULT_CONFIG})",
    )
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument(
        "--listener-port",
        type=positive_int,
        default=DEFAULT_LISTENER_PORT,
        metavar="PORT",
        help=f"listener_port of the file (default: {DEFAULT_LISTENER_PORT}, as the seed's; "
        "a port below 1024 needs the right to bind it, 8080 does not)",
    )
    add_cluster_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from localmesh import eventloop

    namespaces = list(dict.fromkeys(args.namespaces))  # -n a -n a: once
    output: Path = args.output
    if not args.force and (output.exists() or output.is_symlink()):
        raise ConfigError(f"{output} exists: pass --force to overwrite it, or -o another file")
    text, summary = eventloop.run(_generate(args, namespaces, output))
    _write(output, text, force=args.force)
    print(f"wrote {output}: {summary}")
    up = "localmesh up" if output == DEFAULT_CONFIG else f"localmesh up -f {output}"
    print(f"next: {up}")
    return 0


async def _generate(
    args: argparse.Namespace, namespaces: list[str], output: Path
) -> tuple[str, str]:
    import asyncio

    from localmesh.config import parse_config
    from localmesh.kube.objects import KubeObjects
    from localmesh.services_init import plan_entries, render

    for namespace in namespaces:
        _check_namespace_name(namespace)
    kube = await asyncio.to_thread(KubeObjects.connect, args.kubeconfig, args.context)
    try:
        await _check_namespaces(kube, namespaces)
        services = []
        for namespace in namespaces:
            services += await kube.list("Service", namespace)
    finally:
        await kube.close()
    plan = plan_entries(services, namespaces)
    text = render(
        plan, namespaces, _header(args, namespaces, kube.access.context), args.listener_port
    )
    try:
        parse_config(text, filename=str(output))
    except LocalmeshError as exc:  # the rules above make only valid files: a bug
        raise ConfigError(f"init made an invalid {output} (please report it):\n{exc}") from None
    skipped = f", {len(plan.skipped)} left out (see the comments)" if plan.skipped else ""
    hosts = len(plan.entries)
    listed = ", ".join(namespaces)
    return text, f"{hosts} host{'s' if hosts != 1 else ''} from {listed}{skipped}"


def _check_namespace_name(namespace: str) -> None:
    from localmesh.config import namespace_problem

    problem = namespace_problem(namespace)
    if problem is not None:
        raise ConfigError(f"-n {namespace}: {problem}")


async def _namespace_names(kube: Any) -> list[str]:
    return sorted(str(n["metadata"]["name"]) for n in await kube.list("Namespace", None))


async def _check_namespaces(kube: Any, namespaces: list[str]) -> None:
    missing = [ns for ns in namespaces if await kube.get("Namespace", None, ns) is None]
    if not missing:
        return
    where = f" (context {kube.access.context})" if kube.access.context else ""
    names = ", ".join(repr(ns) for ns in missing)
    verb = "does" if len(missing) == 1 else "do"
    message = f"namespace {names} {verb} not exist{where}"
    try:
        existing = await _namespace_names(kube)
    except KubeError:
        existing = []  # listing namespaces may be forbidden: the plain message stands
    close = [m for ns in missing for m in difflib.get_close_matches(ns, existing, n=1)]
    if close:
        message += f"; did you mean {', '.join(repr(m) for m in close)}?"
    if existing:
        message += f" namespaces: {', '.join(existing)}"
    raise KubeError(message)


def _header(args: argparse.Namespace, namespaces: list[str], context: str | None) -> list[str]:
    command = "localmesh init " + " ".join(f"-n {ns}" for ns in namespaces)
    if args.context:
        command += f" --context {args.context}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    spaces = "namespace" if len(namespaces) == 1 else "namespaces"
    return [
        f"services.yaml for localmesh, written by `{command}` on {when}",
        f"from the live Services of {spaces} {', '.join(namespaces)}"
        + (f" (context {context})." if context else "."),
        "Each host is served by `localmesh up`; edit freely (reference: examples/README.md).",
        "A type left out is chosen at run time from the Service port (`localmesh status`",
        "shows the choice). listener_port below 1024 needs the right to bind it.",
    ]


def _write(path: Path, text: str, *, force: bool) -> None:
    """Never overwrites without `force`, even if FILE appeared meanwhile; with it, replace
    in one step (a reader never sees half a file)."""
    try:
        if not force:
            with path.open("x") as new:
                new.write(text)
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
    except FileExistsError:
        raise ConfigError(f"{path} exists: pass --force to overwrite it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def namespaces_completer(parsed_args: argparse.Namespace | None = None, **_: Any) -> list[str]:
    """Completer of -n: the cluster's namespaces (nothing when it does not answer soon)."""
    import asyncio

    from localmesh.kube.objects import KubeObjects

    async def names() -> list[str]:
        kube = KubeObjects.connect(
            getattr(parsed_args, "kubeconfig", None), getattr(parsed_args, "context", None)
        )
        try:
            return await _namespace_names(kube)
        finally:
            await kube.close()

    try:
        return asyncio.run(asyncio.wait_for(names(), COMPLETION_SECONDS))
    except Exception:
        return []


__all__ = ["namespaces_completer", "register", "run"]
