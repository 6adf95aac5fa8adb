"""`--version-mark` and `--expose` of `localmesh mesh`: parsed and checked before anything in
the cluster changes, with errors a user can act on.

Version mark (the header that sends a request to this machine):

    (none)          version: <random>
    demo            version: demo
    kt-mark:        kt-mark: <random>
    kt-mark:demo    kt-mark: demo

The key must be an HTTP header name (RFC 9110 token), is lowercased (HTTP/2 and Envoy's
matchers see lowercase names), and may not be a pseudo-header (`:authority`), a hop-by-hop
header (`connection`, `te`, ...) or another header a proxy rewrites (`host`, `x-envoy-*`).
The value is a header value (visible ASCII, inner spaces allowed). Object names built from
the mark use `slug`: the value itself when it is already a DNS-1123 label, else a label made
from it plus a short hash of the original, so `0.0.1` gives `0-0-1-<hash>` and two values
never share a slug.

Expose (`port` or `local:remote`, comma-separated, the flag may be repeated): `remote` is the
Service's port, `local` the port on this machine (default: the same number). A remote port
may appear only once; several remote ports may share one local port.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from localmesh.errors import ConfigError

DEFAULT_MARK_KEY = "version"
MAX_KEY_LENGTH = 63  # also usable as a label name in manual mode
MAX_VALUE_LENGTH = 200
MAX_SLUG_LENGTH = 40  # leaves room for the service name and a prefix in object names
HASH_LENGTH = 6
RANDOM_LENGTH = 6

# RFC 9110 `tchar`.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_VISIBLE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

# Headers a proxy consumes, rewrites or treats as connection-scoped: a route on them would
# never see the developer's value.
RESERVED_KEYS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        "content-length",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
RESERVED_PREFIXES = ("x-envoy-",)


@dataclass(frozen=True)
class VersionMark:
    """The header a request carries to be served on this machine."""

    key: str  # lowercase header name
    value: str  # header value, exactly as sent
    slug: str  # the value as a DNS-1123 label (object names, labels)
    generated: bool = False  # the value was chosen at random

    @property
    def header(self) -> str:
        """`key: value`, as a user types it for curl -H."""
        return f"{self.key}: {self.value}"


@dataclass(frozen=True)
class ExposedPort:
    """One Service port served by a port on this machine."""

    local: int
    remote: int

    def __str__(self) -> str:
        return f"{self.local}:{self.remote}"


def random_value() -> str:
    """A random mark value: lowercase letters and digits, starting with a letter."""
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(
        secrets.choice(alphabet) for _ in range(RANDOM_LENGTH - 1)
    )


def parse_version_mark(
    text: str | None, *, make_value: Callable[[], str] = random_value
) -> VersionMark:
    """Parse `--version-mark`; raises ConfigError naming the flag and what is wrong."""
    raw = (text or "").strip()
    if raw.startswith(":"):
        raise ConfigError(
            f"--version-mark {text!r}: header names starting with ':' are HTTP/2 "
            "pseudo-headers (:authority, :path, ...); use an ordinary header name "
            "such as 'version:dev'"
        )
    key, sep, value = raw.partition(":")
    if not sep:  # `demo`: a value under the default key
        key, value = DEFAULT_MARK_KEY, raw
    key, value = key.strip().lower(), value.strip()
    _check_key(text, key)
    generated = not value
    if generated:
        value = make_value()
    _check_value(text, value)
    return VersionMark(key=key, value=value, slug=slug_of(value), generated=generated)


def _check_key(text: str | None, key: str) -> None:
    where = f"--version-mark {text!r}"
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigError(
            f"{where}: the header name is {len(key)} characters long; "
            f"at most {MAX_KEY_LENGTH} are allowed"
        )
    if not _TOKEN.fullmatch(key):
        bad = next(ch for ch in key if not _TOKEN.fullmatch(ch))
        raise ConfigError(
            f"{where}: {bad!r} cannot appear in an HTTP header name; "
            "use letters, digits and - _ . only"
        )
    if key in RESERVED_KEYS:
        raise ConfigError(
            f"{where}: {key!r} is a header proxies consume or rewrite (hop-by-hop or "
            "Host), so requests cannot be routed on it; pick another name, e.g. 'version'"
        )
    for prefix in RESERVED_PREFIXES:
        if key.startswith(prefix):
            raise ConfigError(
                f"{where}: headers starting with {prefix!r} are Envoy's own and are "
                "removed from requests; pick another name, e.g. 'version'"
            )


def _check_value(text: str | None, value: str) -> None:
    where = f"--version-mark {text!r}"
    if len(value) > MAX_VALUE_LENGTH:
        raise ConfigError(
            f"{where}: the value is {len(value)} characters long; "
            f"at most {MAX_VALUE_LENGTH} are allowed"
        )
    if not _VISIBLE.fullmatch(value):
        bad = next((ch for ch in value if not "\x20" <= ch <= "\x7e"), None)
        what = f"{bad!r} cannot appear" if bad is not None else "control characters cannot"
        raise ConfigError(f"{where}: {what} in an HTTP header value; use printable ASCII")


def slug_of(value: str) -> str:
    """`value` as a DNS-1123 label of at most MAX_SLUG_LENGTH characters: itself when it
    already is one, else a readable form plus a hash of the original (deterministic)."""
    if len(value) <= MAX_SLUG_LENGTH and _DNS_LABEL.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:HASH_LENGTH]
    readable = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    readable = readable[: MAX_SLUG_LENGTH - HASH_LENGTH - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else digest


def parse_expose(values: str | Iterable[str], *, flag: str = "--expose") -> tuple[ExposedPort, ...]:
    """Parse one or more `--expose` values (or another flag's, same syntax); raises
    ConfigError for the first bad entry."""
    items = [values] if isinstance(values, str) else list(values)
    ports: list[ExposedPort] = []
    seen: dict[int, ExposedPort] = {}
    for item in items:
        entries = item.split(",")
        for entry in entries:
            exposed = _parse_one(f"{flag} {item!r}", entry.strip())
            if exposed.remote in seen:
                raise ConfigError(
                    f"{flag} {item!r}: service port {exposed.remote} is exposed twice "
                    f"({seen[exposed.remote]} and {exposed}); give each service port once"
                )
            seen[exposed.remote] = exposed
            ports.append(exposed)
    if not ports:
        raise ConfigError(f"{flag}: give at least one port, e.g. {flag} 8080 or 9090:8080")
    return tuple(ports)


def _parse_one(where: str, entry: str) -> ExposedPort:
    if not entry:
        raise ConfigError(f"{where}: empty entry; use 'port' or 'local:remote', comma-separated")
    parts = entry.split(":")
    if len(parts) > 2:
        raise ConfigError(f"{where}: {entry!r} has more than one ':'; use 'local:remote'")
    numbers = [_port(where, part.strip(), role) for part, role in _roles(parts)]
    local, remote = (numbers[0], numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
    return ExposedPort(local=local, remote=remote)


def _roles(parts: list[str]) -> list[tuple[str, str]]:
    if len(parts) == 1:
        return [(parts[0], "port")]
    return [(parts[0], "local port"), (parts[1], "service port")]


def _port(where: str, text: str, role: str) -> int:
    if not text:
        raise ConfigError(f"{where}: the {role} is missing; use 'port' or 'local:remote'")
    if not text.isdigit() or not text.isascii():
        raise ConfigError(f"{where}: the {role} {text!r} is not a number")
    number = int(text)
    if not 1 <= number <= 65535:
        raise ConfigError(f"{where}: the {role} {number} is out of range (1-65535)")
    return number
