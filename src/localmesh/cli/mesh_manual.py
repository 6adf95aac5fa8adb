"""`localmesh mesh --mode manual`: the options and output of manual mode (the flow itself is
`mesh`'s, with a `ManualSession`)."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localmesh.errors import ConfigError

if TYPE_CHECKING:
    from localmesh.clustermesh.manual import ManualJoined, ManualSession
    from localmesh.clustermesh.session import MeshOptions
    from localmesh.kube.objects import KubeObjects


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("manual mode (--mode manual)")
    group.add_argument(
        "--no-selector-labels",
        action="store_true",
        help="the shadow carries only the mark's label, not the Service's selector labels: "
        "it receives only what rules send it (implies --shadow-service)",
    )
    group.add_argument(
        "--shadow-service",
        action="store_true",
        help="also create a Service selecting only the shadow, and print a Gateway API "
        "HTTPRoute routing marked requests to it",
    )
    group.add_argument(
        "--apply",
        action="store_true",
        help="also apply the Istio rules, or with --shadow-service where Istio's CRDs are "
        "not installed the HTTPRoute (recorded on the session's Lease first; removed on exit "
        "and by `mesh clean`)",
    )
    group.add_argument(
        "--istio-output",
        metavar="FILE",
        help="also write the rules to FILE (for kubectl apply -f FILE)",
    )


@dataclass(frozen=True)
class ManualArgs:
    selector_labels: bool
    shadow_service: bool
    output: Path | None
    apply: bool = False

    def session(self, kube: KubeObjects, options: MeshOptions) -> ManualSession:
        from localmesh.clustermesh.manual import ManualSession

        return ManualSession(
            kube,
            options,
            selector_labels=self.selector_labels,
            with_shadow_service=self.shadow_service,
            apply=self.apply,
        )


def manual_args(args: argparse.Namespace) -> ManualArgs | None:
    """Manual mode's options, checked before the cluster is contacted; None in auto mode
    (where they are an error)."""
    given = {
        "--no-selector-labels": args.no_selector_labels,
        "--shadow-service": args.shadow_service,
        "--istio-output": args.istio_output is not None,
        "--apply": args.apply,
    }
    if args.mode != "manual":
        used = [flag for flag, on in given.items() if on]
        if used:
            raise ConfigError(f"{used[0]} belongs to --mode manual")
        return None
    output = None
    if args.istio_output is not None:
        output = Path(args.istio_output)
        folder = output.parent if str(output.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"--istio-output {args.istio_output}: cannot write in {folder}")
    return ManualArgs(not args.no_selector_labels, args.shadow_service, output, args.apply)


def rules_yaml(manual: ManualJoined) -> str:
    """Every rule as one multi-document YAML stream, with comments saying what it is."""
    import yaml

    docs = [*manual.istio, *manual.http_routes]
    head = [
        f"# localmesh mesh --mode manual: rules for {manual.rules.namespace}/"
        f"{manual.rules.service}, mark {manual.rules.header}: {manual.rules.value}",
        "# apply with: kubectl apply -f -   (remove with kubectl delete -f -)",
    ]
    body = "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in docs)
    return "\n".join(head) + "\n---\n" + body


def write_rules(manual: ManualJoined, output: Path) -> None:
    output.write_text(rules_yaml(manual))


def manual_text(options: MeshOptions, manual: ManualJoined, output: Path | None) -> str:
    from localmesh.cli.mesh import service_url

    joined, mark = manual.joined, options.mark
    lines = [
        f"meshed {options.namespace}/{options.service} (mode manual): the Service's routing "
        "is unchanged"
    ]
    lines += [f"  created {what}" for what in joined.created]
    labels = ", ".join(f"{k}={v}" for k, v in manual.labels.items())
    lines.append(f"  shadow labels: {labels}")
    for port in joined.spec.ports:
        lines.append(
            f"  service port {port.remote} -> this machine's 127.0.0.1:{port.local} "
            "(what the mesh sends to the shadow)"
        )
    lines.append("rules to apply (kubectl apply -f -):")
    lines.append(rules_yaml(manual).rstrip("\n"))
    lines.append("...")
    if output is not None:
        lines.append(f"rules written to {output} (kubectl apply -f {shlex.quote(str(output))})")
    if manual.rules.cluster is not None:
        from localmesh.clustermesh.manual import CAVEAT

        lines.append(CAVEAT)
    lines += manual.notes
    lines.append(f"send the header  {mark.header}  (once the rules are applied)")
    url = service_url(options.namespace, options.service, joined.spec.ports[0].remote)
    lines.append(f"try from inside the cluster:  curl -H {shlex.quote(mark.header)} {url}")
    applied = any(what.endswith("(applied)") for what in joined.created)
    lines.append(
        "Ctrl-C to stop: the shadow and what was made for it are removed"
        + (", the applied rules first" if applied else " (delete the rules you applied)")
    )
    return "\n".join(lines)


def describe(options: MeshOptions, session: Any, output: Path | None) -> str:
    """The text printed once the tunnel is up (writes --istio-output first)."""
    manual: ManualJoined | None = session.manual
    assert manual is not None, "described before joining"
    if output is not None:
        write_rules(manual, output)
    return manual_text(options, manual, output)
