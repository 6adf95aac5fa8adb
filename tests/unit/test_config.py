"""services.yaml loading: the seed's format, and every kind of mistake reported exactly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from localmesh.config import (
    DEFAULT_LISTENER_PORT,
    Config,
    ConfigIssue,
    ConfigValidationError,
    Location,
    ServiceEntry,
    hostname_problem,
    load_config,
    parse_config,
)
from localmesh.desired import Protocol
from localmesh.errors import ConfigError, LocalmeshError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SEED = """\
listener_port: 80
services:
  - host: users-api.localhost
    namespace: users
    service: users-api
    port_name: grpc
    type: grpc

  - host: billing-api.localhost
    namespace: billing
    service: billing-api
    port_name: http
    type: http

  - host: admin.localhost
    namespace: admin
    service: admin-web
    port: 8080
    type: http
"""


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigValidationError) as info:
        parse_config(textwrap.dedent(text), "s.yaml")
    return list(info.value.issues)


def one_issue(text: str) -> ConfigIssue:
    issues = issues_of(text)
    assert len(issues) == 1, issues
    return issues[0]


def where(issue: ConfigIssue) -> tuple[int, int, str]:
    return (issue.location.line, issue.location.column, issue.path)


# -- the valid file --------------------------------------------------------------------------


def test_seed_example_parses_to_the_expected_config() -> None:
    config = parse_config(SEED, "services.yaml")
    assert config == Config(
        listener_port=80,
        services=(
            ServiceEntry("users-api.localhost", "users", "users-api", Protocol.GRPC, "grpc"),
            ServiceEntry("billing-api.localhost", "billing", "billing-api", Protocol.HTTP, "http"),
            ServiceEntry("admin.localhost", "admin", "admin-web", Protocol.HTTP, None, 8080),
        ),
    )
    assert [e.location for e in config.services] == [
        Location("services.yaml", 3, 5),
        Location("services.yaml", 9, 5),
        Location("services.yaml", 15, 5),
    ]
    assert [e.port_ref for e in config.services] == ["grpc", "http", 8080]


def test_examples_file_is_the_seed_example(tmp_path: Path) -> None:
    config = load_config(EXAMPLES / "services.yaml")
    assert config == parse_config(SEED)
    assert config.source == EXAMPLES / "services.yaml"
    assert config.services[0].location is not None
    assert config.services[0].location.file == str(EXAMPLES / "services.yaml")


def test_defaults_listener_port_80_and_type_http() -> None:
    config = parse_config("services:\n  - {host: a.localhost, namespace: a, service: a, port: 1}\n")
    assert config.listener_port == DEFAULT_LISTENER_PORT == 80
    assert config.services[0].protocol is Protocol.HTTP


def test_empty_services_list_is_valid() -> None:
    assert parse_config("listener_port: 8080\nservices: []\n") == Config(8080, ())


def test_hosts_are_case_insensitive_and_stored_lowercase() -> None:
    config = parse_config(
        "services:\n  - {host: Users-API.LocalHost, namespace: a, service: a, port: 1}\n"
    )
    assert config.services[0].host == "users-api.localhost"


def test_yaml_integer_forms_are_accepted_for_ports() -> None:
    config = parse_config("listener_port: 0x1F90\nservices: []\n")
    assert config.listener_port == 8080


def test_location_is_not_part_of_equality() -> None:
    a = parse_config(SEED, "one.yaml")
    b = parse_config("\n\n" + SEED, "two.yaml")
    assert a == b
    assert hash(a.services[0]) == hash(b.services[0])


# -- every kind of error --------------------------------------------------------------------


def test_error_is_a_config_error_with_exit_code_2() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("services: 1\n")
    assert isinstance(info.value, LocalmeshError)
    assert info.value.exit_code == 2


def test_empty_file() -> None:
    for text in ("", "\n", "# only a comment\n", "---\n", "~\n"):
        issue = one_issue(text)
        assert where(issue) == (1, 1, "")
        assert "empty" in issue.message


def test_yaml_syntax_error_names_its_line() -> None:
    issue = one_issue(
        """\
        services:
          - host: a.localhost
            namespace: [unclosed
        """
    )
    assert issue.location.line == 4
    assert issue.message.startswith("YAML syntax error")


def test_yaml_tab_indentation_is_a_syntax_error_with_location() -> None:
    issue = one_issue("services:\n\t- host: a\n")
    assert (issue.location.line, issue.location.column) == (2, 1)
    assert "YAML syntax error" in issue.message


def test_several_documents_are_rejected() -> None:
    issue = one_issue("services: []\n---\nservices: []\n")
    assert issue.location.line == 2
    assert "single document" in issue.message


def test_top_level_must_be_a_mapping() -> None:
    issue = one_issue("- a\n- b\n")
    assert where(issue) == (1, 1, "")
    assert "expected a mapping, got a list" in issue.message


def test_missing_services_key() -> None:
    issue = one_issue("listener_port: 80\n")
    assert where(issue) == (1, 1, "")
    assert issue.message == "missing required key `services`"


def test_services_must_be_a_list() -> None:
    issue = one_issue("services:\n  host: a\n")
    assert where(issue) == (2, 3, "services")
    assert "expected a list, got a mapping" in issue.message


def test_services_null_is_a_wrong_type() -> None:
    issue = one_issue("services:\n")
    assert where(issue) == (1, 10, "services")
    assert "expected a list, got null" in issue.message


def test_entry_must_be_a_mapping() -> None:
    issue = one_issue("services:\n  - users-api.localhost\n")
    assert where(issue) == (2, 5, "services[0]")
    assert "expected a mapping, got a string ('users-api.localhost')" in issue.message


def test_unknown_top_level_key_suggests_the_closest() -> None:
    issue = one_issue("listen_port: 80\nservices: []\n")
    assert where(issue) == (1, 1, "listen_port")
    assert "unknown key `listen_port` (did you mean `listener_port`?)" in issue.message


def test_unknown_entry_key_suggests_the_closest() -> None:
    issue = one_issue(
        """\
        services:
          - host: a.localhost
            namespace: a
            service: a
            port_nam: http
            port_name: http
        """
    )
    assert where(issue) == (5, 5, "services[0].port_nam")
    assert "(did you mean `port_name`?)" in issue.message


def test_unknown_key_without_a_close_match_lists_known_keys() -> None:
    issue = one_issue("services: []\nzzz: 1\n")
    assert "did you mean" not in issue.message
    assert "known keys: listener_port, services" in issue.message


def test_duplicate_key_in_a_mapping() -> None:
    issue = one_issue(
        """\
        services:
          - host: a.localhost
            namespace: a
            service: a
            port: 80
            host: b.localhost
        """
    )
    assert where(issue) == (6, 5, "services[0].host")
    assert "duplicate key `host` (first at s.yaml:2:11)" in issue.message


def test_non_string_key() -> None:
    issue = one_issue("services: []\n1: x\n")
    assert where(issue) == (2, 1, "")
    assert "keys must be strings" in issue.message


@pytest.mark.parametrize("key", ["host", "namespace", "service"])
def test_missing_required_entry_field(key: str) -> None:
    fields = {"host": "a.localhost", "namespace": "a", "service": "a", "port": "80"}
    del fields[key]
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    issue = one_issue("services:\n  - " + body.lstrip())
    assert where(issue) == (2, 5, "services[0]")
    assert issue.message == f"missing required key `{key}`"


def test_neither_port_name_nor_port_means_the_only_port() -> None:
    config = parse_config("services:\n  - {host: a.localhost, namespace: a, service: a}\n")
    (entry,) = config.services
    assert (entry.port_name, entry.port, entry.port_ref) == (None, None, "")
    assert entry.describe() == "a.localhost -> a/a"


def test_both_port_name_and_port() -> None:
    issue = one_issue(
        """\
        services:
          - host: a.localhost
            namespace: a
            service: a
            port_name: http
            port: 8080
        """
    )
    assert where(issue) == (6, 11, "services[0].port")
    assert "either `port_name` or `port`, not both" in issue.message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "0 is out of range (1..65535)"),
        ("65536", "65536 is out of range (1..65535)"),
        ("-1", "-1 is out of range (1..65535)"),
        ('"8080"', "expected a port number (1..65535), got a string ('8080')"),
        ("80.5", "expected a port number (1..65535), got a number (80.5)"),
        ("true", "expected a port number (1..65535), got a boolean (true)"),
        ("[80]", "expected a port number (1..65535), got a list"),
        ("null", "expected a port number (1..65535), got null"),
    ],
)
def test_bad_ports(value: str, message: str) -> None:
    issue = one_issue(
        f"services:\n  - host: a.localhost\n    namespace: a\n    service: a\n    port: {value}\n"
    )
    assert where(issue) == (5, 11, "services[0].port")
    assert issue.message == message


def test_listener_port_out_of_range() -> None:
    issue = one_issue("listener_port: 70000\nservices: []\n")
    assert where(issue) == (1, 16, "listener_port")
    assert issue.message == "70000 is out of range (1..65535)"


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("under_score.localhost", "label 'under_score' is invalid"),
        ("-lead.localhost", "label '-lead' is invalid"),
        ("trail-.localhost", "label 'trail-' is invalid"),
        ("a..localhost", "empty label"),
        (".a.localhost", "empty label"),
        ("a.localhost.", "must not end with a dot"),
        ("a.localhost:8080", "must not contain a port"),
        ("*.localhost", "label '*' is invalid"),
        ("x" * 64 + ".localhost", "longer than 63"),
        (".".join(["abcdefghi"] * 26), "at most 253"),
        ("http://a.localhost", "must not contain a port"),
    ],
)
def test_invalid_hostnames(host: str, reason: str) -> None:
    issue = one_issue(
        f"services:\n  - host: '{host}'\n    namespace: a\n    service: a\n    port: 80\n"
    )
    assert where(issue) == (2, 11, "services[0].host")
    assert reason in issue.message


def test_valid_hostnames() -> None:
    for host in ("localhost", "a", "users-api.localhost", "x1.y2.z3", "A-B.example", "1.2.3.4a"):
        assert hostname_problem(host) is None, host


def test_empty_host() -> None:
    issue = one_issue("services:\n  - {host: '', namespace: a, service: a, port: 80}\n")
    assert issue.path == "services[0].host"
    assert issue.message == "must not be empty"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("namespace", "Users", "'Users' is not a valid Kubernetes namespace name"),
        ("namespace", "users_ns", "not a valid Kubernetes namespace name"),
        ("namespace", "-users", "not a valid Kubernetes namespace name"),
        ("namespace", "a" * 64, "at most 63"),
        ("namespace", "a.b", "not a valid Kubernetes namespace name"),
        ("service", "1users", "'1users' is not a valid Kubernetes Service name"),
        ("service", "users-", "not a valid Kubernetes Service name"),
        ("service", "Users", "not a valid Kubernetes Service name"),
        ("service", "", "must not be empty"),
    ],
)
def test_invalid_kubernetes_names(field: str, value: str, reason: str) -> None:
    fields = {"host": "a.localhost", "namespace": "a", "service": "a", "port": "80"}
    fields[field] = f"'{value}'"
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    issue = one_issue("services:\n  - " + body.lstrip())
    line = 2 + list(fields).index(field)
    assert where(issue) == (line, 5 + len(field) + 2, f"services[0].{field}")
    assert reason in issue.message


def test_namespace_may_start_with_a_digit() -> None:
    config = parse_config(
        "services:\n  - {host: a.localhost, namespace: 1a, service: a, port: 1}\n"
    )
    assert config.services[0].namespace == "1a"


def test_invalid_port_name() -> None:
    issue = one_issue(
        "services:\n  - {host: a.localhost, namespace: a, service: a, port_name: HTTP}\n"
    )
    assert issue.path == "services[0].port_name"
    assert "not a valid Kubernetes port name" in issue.message


def test_number_where_a_string_is_expected_says_to_quote_it() -> None:
    issue = one_issue("services:\n  - {host: a.localhost, namespace: 123, service: a, port: 1}\n")
    assert where(issue) == (2, 36, "services[0].namespace")
    assert (
        issue.message == "expected a string, got an integer (123) (quote it if you mean the text)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("grcp", "unknown type 'grcp' (did you mean `grpc`?); expected one of http, grpc"),
        ("GRPC", "unknown type 'GRPC' (did you mean `grpc`?); expected one of http, grpc"),
        ("tcp", "unknown type 'tcp'; expected one of http, grpc"),
        ("1", "expected one of http, grpc; got an integer (1)"),
    ],
)
def test_unknown_type(value: str, message: str) -> None:
    issue = one_issue(
        "services:\n  - host: a.localhost\n    namespace: a\n    service: a\n    port: 80\n"
        f"    type: {value}\n"
    )
    assert where(issue) == (6, 11, "services[0].type")
    assert issue.message == message


def test_duplicate_hosts_name_both_locations() -> None:
    issues = issues_of(
        """\
        services:
          - {host: a.localhost, namespace: a, service: a, port: 80}
          - {host: b.localhost, namespace: b, service: b, port: 80}
          - {host: A.localhost, namespace: c, service: c, port: 80}
        """
    )
    assert [where(i) for i in issues] == [(4, 12, "services[2].host")]
    assert issues[0].message == (
        "duplicate host 'a.localhost': also used by services[0].host at s.yaml:2:12"
    )


def test_duplicate_hosts_found_even_when_the_entries_have_other_errors() -> None:
    issues = issues_of(
        """\
        services:
          - {host: a.localhost, namespace: A, service: a, port: 80}
          - {host: a.localhost, namespace: b, service: b, port: 0}
        """
    )
    assert [i.path for i in issues] == [
        "services[0].namespace",
        "services[1].host",
        "services[1].port",
    ]


# -- all at once ------------------------------------------------------------------------------


BROKEN = """\
listener_port: 0
servics: []
services:
  - host: users-api.localhost
    namespace: users
    service: users-api
    port_name: grpc
    port: 50051
    type: grpc
  - host: users-api.localhost
    namespace: Billing
    service: billing-api
    port: 99999
    type: tcp
  - host: bad_host
    service: admin-web
    prot: 8080
  - just-a-string
"""


def test_every_issue_is_reported_at_once_in_file_order() -> None:
    with pytest.raises(ConfigValidationError) as info:
        parse_config(BROKEN, "services.yaml")
    got = [(str(i.location), i.path) for i in info.value.issues]
    assert got == [
        ("services.yaml:1:16", "listener_port"),
        ("services.yaml:2:1", "servics"),
        ("services.yaml:8:11", "services[0].port"),
        ("services.yaml:10:11", "services[1].host"),
        ("services.yaml:11:16", "services[1].namespace"),
        ("services.yaml:13:11", "services[1].port"),
        ("services.yaml:14:11", "services[1].type"),
        ("services.yaml:15:5", "services[2]"),
        ("services.yaml:15:11", "services[2].host"),
        ("services.yaml:17:5", "services[2].prot"),
        ("services.yaml:18:5", "services[3]"),
    ]
    messages = [i.message for i in info.value.issues]
    assert messages[7] == "missing required key `namespace`"
    assert "did you mean `port`?" in messages[9]


def test_str_is_one_line_per_issue() -> None:
    with pytest.raises(ConfigValidationError) as info:
        parse_config(BROKEN, "services.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.issues) == 11
    assert lines[0] == "services.yaml:1:16: listener_port: 0 is out of range (1..65535)"
    assert lines[1].startswith("services.yaml:2:1: servics: unknown key `servics`")
    assert all(line.startswith("services.yaml:") for line in lines)


# -- reading files ----------------------------------------------------------------------------


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"services: [\xff]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_load_config_names_the_file_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("services: 3\n")
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:1:11: services: expected a list, got an integer (3)"


def test_a_trailing_newline_does_not_sneak_through_and_messages_stay_one_line() -> None:
    issues = issues_of(
        'services:\n  - {host: "a.localhost\\n", namespace: "a\\n", service: a, port: 1}\n'
    )
    assert [i.path for i in issues] == ["services[0].host", "services[0].namespace"]
    assert all("\n" not in str(i) for i in issues)
    assert "'a\\n' is not a valid Kubernetes namespace name" in issues[1].message
