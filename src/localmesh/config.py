"""services.yaml and mocks.yaml: loading and strict validation.

INTERFACE ONLY (to be implemented): the dataclasses below are the contract other modules use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localmesh.mesh import Protocol

DEFAULT_LISTENER_PORT = 80


@dataclass(frozen=True)
class Location:
    """Where a value came from, for error messages: `file:line:column` (1-based)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class ServiceEntry:
    host: str
    namespace: str
    service: str
    protocol: Protocol  # `type` in the file
    port_name: str | None = None
    port: int | None = None
    location: Location | None = field(default=None, compare=False)

    @property
    def port_ref(self) -> str | int:
        """How the entry names its service port: the name if given, else the number."""
        if self.port_name is not None:
            return self.port_name
        assert self.port is not None
        return self.port


@dataclass(frozen=True)
class Config:
    listener_port: int = DEFAULT_LISTENER_PORT
    services: tuple[ServiceEntry, ...] = ()
    source: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MockEntry:
    namespace: str
    service: str
    port_name: str  # "" matches an entry that names its port by number
    resolved_port: int


@dataclass(frozen=True)
class MockConfig:
    mocks: tuple[MockEntry, ...] = ()
    source: Path | None = field(default=None, compare=False)
