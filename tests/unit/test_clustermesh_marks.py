"""`--version-mark` and `--expose` parsing: accepted spellings and the errors users see."""

from __future__ import annotations

import re

import pytest

from localmesh.clustermesh.marks import (
    MAX_SLUG_LENGTH,
    ExposedPort,
    VersionMark,
    parse_expose,
    parse_version_mark,
    random_value,
    slug_of,
)
from localmesh.errors import ConfigError

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def fixed() -> str:
    return "abc123"


@pytest.mark.parametrize(
    ("text", "key", "value", "generated"),
    [
        ("demo", "version", "demo", False),
        ("kt-mark:", "kt-mark", "abc123", True),
        ("kt-mark:demo", "kt-mark", "demo", False),
        (None, "version", "abc123", True),
        ("", "version", "abc123", True),
        ("X-Dev-Mark:Alice", "x-dev-mark", "Alice", False),
        (" version : dev ", "version", "dev", False),
        ("mark:a:b", "mark", "a:b", False),  # only the first ':' separates
        ("0.0.1", "version", "0.0.1", False),
    ],
)
def test_version_mark_spellings(text: str | None, key: str, value: str, generated: bool) -> None:
    mark = parse_version_mark(text, make_value=fixed)
    assert (mark.key, mark.value, mark.generated) == (key, value, generated)
    assert mark.header == f"{key}: {value}"


def test_random_values_differ_and_are_labels() -> None:
    values = {parse_version_mark(None).value for _ in range(20)}
    assert len(values) > 1
    for value in values:
        assert DNS_LABEL.fullmatch(value) and value[0].isalpha()
    assert len(random_value()) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":authority:x", "pseudo-headers"),
        (":path", "pseudo-headers"),
        (" :x", "pseudo-headers"),
        ("connection:x", "hop-by-hop"),
        ("Host:x", "hop-by-hop or Host"),
        ("te:trailers", "hop-by-hop"),
        ("transfer-encoding:chunked", "hop-by-hop"),
        ("x-envoy-upstream:x", "Envoy's own"),
        ("bad key:x", "' ' cannot appear in an HTTP header name"),
        ("ver(sion):x", "'(' cannot appear"),
        ("k" * 64 + ":x", "64 characters long"),
        ("version:tab\there", "'\\t' cannot appear in an HTTP header value"),
        ("version:caf\u00e9", "'\u00e9' cannot appear"),
        ("version:" + "v" * 201, "201 characters long"),
    ],
)
def test_version_mark_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_version_mark(text)
    error = str(info.value)
    assert error.startswith(f"--version-mark {text!r}: ")
    assert message in error
    assert "\n" not in error


@pytest.mark.parametrize("value", ["dev", "alice-2", "a", "x" * MAX_SLUG_LENGTH])
def test_slug_keeps_labels(value: str) -> None:
    assert slug_of(value) == value


@pytest.mark.parametrize(
    "value", ["0.0.1", "Dev", "feature/login", "-x-", "...", "a_b", "x" * 41, "É"]
)
def test_slug_maps_other_values_to_labels(value: str) -> None:
    slug = slug_of(value)
    assert DNS_LABEL.fullmatch(slug), slug
    assert len(slug) <= MAX_SLUG_LENGTH
    assert slug == slug_of(value)  # deterministic
    assert slug != value


def test_slug_examples_and_distinctness() -> None:
    assert re.fullmatch(r"0-0-1-[0-9a-f]{6}", slug_of("0.0.1"))
    assert slug_of("0.0.1") != slug_of("0-0-1") != slug_of("0_0_1")
    assert slug_of("Dev") != slug_of("dev")
    mark = parse_version_mark("0.0.1")
    assert mark == VersionMark("version", "0.0.1", slug_of("0.0.1"))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("8080", [(8080, 8080)]),
        ("9090:8080", [(9090, 8080)]),
        ("7001,8080:80", [(7001, 7001), (8080, 80)]),
        (["7001", "9090:8080"], [(7001, 7001), (9090, 8080)]),
        (" 1 , 65535:2 ", [(1, 1), (65535, 2)]),
        ("8080:80,8080:8080", [(8080, 80), (8080, 8080)]),  # one local port, two remotes
    ],
)
def test_expose_spellings(values: str | list[str], expected: list[tuple[int, int]]) -> None:
    assert parse_expose(values) == tuple(ExposedPort(local, remote) for local, remote in expected)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("", "empty entry"),
        ("8080,,9090", "empty entry"),
        ("8080,", "empty entry"),
        ("http", "the port 'http' is not a number"),
        ("9090:http", "the service port 'http' is not a number"),
        ("x:80", "the local port 'x' is not a number"),
        ("-1", "the port '-1' is not a number"),
        ("0", "the port 0 is out of range (1-65535)"),
        ("65536:80", "the local port 65536 is out of range"),
        ("80:70000", "the service port 70000 is out of range"),
        (":80", "the local port is missing"),
        ("80:", "the service port is missing"),
        ("1:2:3", "more than one ':'"),
        ("8080,9090:8080", "service port 8080 is exposed twice (8080:8080 and 9090:8080)"),
        ("\u0661\u0662", "is not a number"),  # Arabic-Indic digits are digits, not ports
    ],
)
def test_expose_errors(values: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_expose(values)
    assert str(info.value).startswith(f"--expose {values!r}: ")
    assert message in str(info.value)


def test_expose_duplicates_across_flags_and_nothing_given() -> None:
    with pytest.raises(ConfigError, match=r"--expose '80': service port 80 is exposed twice"):
        parse_expose(["80", "80"])
    with pytest.raises(ConfigError, match="give at least one port"):
        parse_expose([])
