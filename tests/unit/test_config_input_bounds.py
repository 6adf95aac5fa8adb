"""services.yaml and mocks.yaml as untrusted input: YAML 1.2 core-schema scalars, bad bytes
reported where they are, a size cap, and a bounded number of printed issues."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.config import (
    MAX_FILE_BYTES,
    MAX_ISSUES_SHOWN,
    ConfigValidationError,
    load_config,
    load_mocks,
    parse_config,
)
from localmesh.errors import ConfigError

ENTRY = "  - {host: a.localhost, namespace: a, service: a, port: 80}\n"


@pytest.mark.parametrize("value", ["5:0:1", "1_8_1_8_1", "0b100011"])
def test_yaml_1_1_integer_forms_are_text_not_ports(value: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        parse_config(f"listener_port: {value}\nservices: []\n", "s.yaml")
    assert str(info.value) == (
        f"s.yaml:1:16: listener_port: expected a port number (1..65535), got a string ({value!r})"
    )


@pytest.mark.parametrize(("value", "port"), [("0x4705", 18181), ("0o17", 15), ("0080", 80)])
def test_core_schema_integers(value: str, port: int) -> None:
    assert parse_config(f"listener_port: {value}\nservices: []\n").listener_port == port


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n"])
def test_yaml_1_1_booleans_are_text(word: str) -> None:
    config = parse_config(
        f"services:\n  - {{host: a.localhost, namespace: {word}, service: a, port: 80}}\n"
    )
    assert config.services[0].namespace == word
    with pytest.raises(ConfigValidationError, match=r"^s.yaml:1:16: listener_port: .*string"):
        parse_config(f"listener_port: {word}\nservices: []\n", "s.yaml")


def test_a_nul_byte_is_reported_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_bytes(b"services:\n" + ENTRY.encode() + b"  - {host: b\x00.localhost}\n")
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:3:13: character U+0000 is not allowed in YAML"


def test_invalid_utf8_is_reported_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "mocks.yaml"
    path.write_bytes(b"mocks:\n  - namespace: caf\xc3\xa9\n    service: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_mocks(path)
    assert str(info.value) == f"{path}:3:14: not UTF-8 text (invalid start byte)"


def test_files_over_the_cap_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    with path.open("wb") as handle:
        handle.write(b"services:\n")
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: larger than 8 MiB, the limit for services.yaml and mocks.yaml"
    )
    path.write_bytes(b"services:\n" + ENTRY.encode() + b"#" * (MAX_FILE_BYTES - 100) + b"\n")
    assert len(load_config(path).services) == 1


def test_at_most_fifty_issues_are_printed(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(
        "services:\n" + "  - {host: a.localhost, namespace: A, service: a, port: 1}\n" * 120
    )
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert MAX_ISSUES_SHOWN == 50
    assert len(lines) == 51
    assert lines[0].startswith(f"{path}:2:")
    assert lines[-1] == f"{path}: and {len(info.value.issues) - 50} more issues"
    assert len(info.value.issues) > 120  # every issue is still there for callers
