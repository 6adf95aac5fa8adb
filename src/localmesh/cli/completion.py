"""`localmesh completion bash|zsh|fish`: shell completion for commands, flags, the `--name`
of running meshes and the `--context` names of the kubeconfig.

The printed script asks `localmesh` itself for completions (argcomplete's protocol: the
shell runs it with `_ARGCOMPLETE` and the command line in the environment), so they follow
this installation's commands and options, and the names that exist right now.

    eval "$(localmesh completion bash)"          # ~/.bashrc
    source <(localmesh completion zsh)           # ~/.zshrc (after compinit)
    localmesh completion fish | source           # ~/.config/fish/config.fish
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SHELLS = ("bash", "zsh", "fish")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "completion",
        help="print shell completion for bash, zsh or fish",
        description="Print the completion script of SHELL: commands, options, the --name "
        "of running meshes and the --context names of your kubeconfig.",
        epilog="""\
examples:
  eval "$(%(prog)s bash)"          in ~/.bashrc
  source <(%(prog)s zsh)           in ~/.zshrc, after compinit
  %(prog)s fish | source           in ~/.config/fish/config.fish
""",
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["localmesh"], shell=args.shell), end="")
    return 0


def running_names(**_: Any) -> list[str]:
    """Completer of --name: the meshes of this user that run now."""
    from localmesh.runtime import running_names as names

    return names()


def kubeconfig_contexts(parsed_args: argparse.Namespace | None = None, **_: Any) -> list[str]:
    """Completer of --context: the contexts of --kubeconfig, $KUBECONFIG or ~/.kube/config."""
    import yaml

    found: list[str] = []
    for path in _kubeconfig_files(getattr(parsed_args, "kubeconfig", None)):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        contexts = data.get("contexts") if isinstance(data, dict) else None
        for context in contexts if isinstance(contexts, list) else []:
            name = context.get("name") if isinstance(context, dict) else None
            if isinstance(name, str) and name not in found:
                found.append(name)
    return found


def _kubeconfig_files(explicit: str | None) -> Iterator[Path]:
    if explicit:
        yield Path(explicit).expanduser()
        return
    listed = os.environ.get("KUBECONFIG")
    if listed:
        yield from (Path(p).expanduser() for p in listed.split(os.pathsep) if p)
        return
    from localmesh.runtime import invoking_user_home

    yield invoking_user_home() / ".kube" / "config"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (argcomplete's protocol) and exit; returns at
    once when the process is not run for completion."""
    import argcomplete

    from localmesh.cli.init import namespaces_completer

    completers = {
        "--name": running_names,
        "--context": kubeconfig_contexts,
        "--namespace": namespaces_completer,  # `init -n`: the cluster's namespaces
    }
    for each in _parsers(parser):
        for action in each._actions:
            for option in action.option_strings:
                if option in completers:
                    action.completer = completers[option]  # type: ignore[attr-defined]
    argcomplete.autocomplete(parser)
