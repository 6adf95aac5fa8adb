"""Checking kubeconfig files before the official loader sees them.

The loader turns a malformed file into whatever Python raises on the way (a YAML parser
error, `TypeError: 'int' object is not iterable`, `UnicodeDecodeError`): here each case
becomes one line naming the file and what is wrong with it, and a missing `--context`
lists the contexts there are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from localmesh.errors import KubeError

SECTIONS = {"clusters": "cluster", "contexts": "context", "users": "user"}


class KubeconfigError(KubeError):
    """The kubeconfig is missing or malformed, or has no such context (a usage error)."""

    exit_code = 2


def kubeconfig_paths(kubeconfig: str | None) -> list[str]:
    """The files kubectl would read: `kubeconfig`, else $KUBECONFIG, else ~/.kube/config;
    each may be an os.pathsep-separated list."""
    spec = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return [p for p in spec.split(os.pathsep) if p]


def check_kubeconfig(paths: list[str], context: str | None) -> str:
    """Raise KubeconfigError unless the files parse as kubeconfigs and name the context;
    returns the context that will be used."""
    existing = [p for p in paths if Path(p).exists()]
    if not existing:
        where = ", ".join(paths) or "(none)"
        raise KubeconfigError(
            f"no kubeconfig found (looked for {where}): pass --kubeconfig PATH or set KUBECONFIG"
        )
    contexts: list[str] = []
    current: str | None = None
    for path in existing:
        doc = _load(path)
        if doc is None:
            continue
        for section, inner in SECTIONS.items():
            contexts_here = _names(path, doc, section, inner)
            if section == "contexts":
                contexts.extend(contexts_here)
        value = doc.get("current-context")
        if current is None and isinstance(value, str) and value:
            current = value
    available = ", ".join(sorted(set(contexts))) or "none"
    where = ", ".join(existing)
    if context is not None:
        if context not in contexts:
            raise KubeconfigError(
                f"context {context!r} not found in {where}; available contexts: {available}"
            )
        return context
    if current is None:
        raise KubeconfigError(
            f"{where} sets no current-context: pass --context NAME (available: {available})"
        )
    if current not in contexts:
        raise KubeconfigError(
            f"{where}: current-context {current!r} is not among its contexts "
            f"(available: {available}); pass --context NAME"
        )
    return current


def _load(path: str) -> dict[str, Any] | None:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KubeconfigError(f"{path}: not a kubeconfig (binary data, not UTF-8 text)") from None
    if "\0" in text:
        raise KubeconfigError(f"{path}: not a kubeconfig (binary data: a NUL byte)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise KubeconfigError(f"{path}{at}: invalid YAML in kubeconfig: {problem}") from None
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise KubeconfigError(
            f"{path}: not a kubeconfig (a mapping with clusters, contexts and users expected)"
        )
    return doc


def _names(path: str, doc: dict[str, Any], section: str, inner: str) -> list[str]:
    entries = doc.get(section)
    if entries is None:
        return []
    wrong = KubeconfigError(
        f"{path}: `{section}` must be a list of entries with a `name` and a `{inner}` mapping"
    )
    if not isinstance(entries, list):
        raise wrong
    names = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise wrong
        if not isinstance(entry.get(inner, {}), dict):
            raise wrong
        names.append(entry["name"])
    return names
