"""Envoy's access log lines become `request` fields; half-written lines wait."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localmesh import access_log
from localmesh.desired import DesiredState, ListenerSpec
from localmesh.xds import resources


def line(**fields: object) -> str:
    base = {"host": "a.localhost", "method": "GET", "path": "/x", "status": 200}
    return json.dumps({**base, "duration_ms": 3, "upstream": "127.0.0.1:4001", **fields})


def test_fields_name_the_pod_behind_the_upstream() -> None:
    pods = {"127.0.0.1:4001": "web-0"}
    fields = access_log.request_fields(line(), lambda a: pods.get(a, ""))
    assert fields == {
        "host": "a.localhost",
        "method": "GET",
        "path": "/x",
        "status": 200,
        "duration_ms": 3,
        "pod": "web-0",
    }
    no_upstream = access_log.request_fields(line(upstream="-", status=503), lambda a: "?")
    assert no_upstream is not None and (no_upstream["pod"], no_upstream["status"]) == ("", 503)
    assert access_log.request_fields("not json", lambda a: "") is None


def test_the_tail_reads_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    access_log.prepare(path)
    assert path.stat().st_mode & 0o777 == 0o600
    tail = access_log.AccessLogTail(path, lambda a: "")
    with path.open("a") as out:
        out.write(line(path="/1") + "\n" + line(path="/2")[:10])
    assert [f["path"] for f in tail.read_new()] == ["/1"]
    with path.open("a") as out:
        out.write(line(path="/2")[10:] + "\n")
    assert [f["path"] for f in tail.read_new()] == ["/2"]


def test_the_listener_logs_to_the_file_only_when_asked() -> None:
    def hcm_of(spec: ListenerSpec) -> Any:
        listener = resources.build_resources(DesiredState(spec))[resources.LISTENER_TYPE]
        found: Any = resources.to_json(next(iter(listener.values())))
        return found["filter_chains"][0]["filters"][0]["typed_config"]

    assert "access_log" not in hcm_of(ListenerSpec("127.0.0.1", 8080))
    (entry,) = hcm_of(ListenerSpec("127.0.0.1", 8080, access_log="/run/a.log"))["access_log"]
    assert entry["typed_config"]["path"] == "/run/a.log"
    assert entry["typed_config"]["log_format"]["json_format"]["status"] == "%RESPONSE_CODE%"
