"""wire_json.to_json gives what betterproto2's parse + to_dict give, for every field kind and
every resource the builders produce for the examples."""

from __future__ import annotations

from pathlib import Path

import betterproto2
import pytest

from localmesh.config import load_config, load_mocks
from localmesh.plan import plan
from localmesh.resolve import MockResolver, resolve_all
from localmesh.xds.codec import encode
from localmesh.xds.resources import TYPE_ORDER
from localmesh.xds.snapshot import build_snapshot
from localmesh.xds.wire_json import to_json
from tests.unit.test_xds_codec import MESSAGES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_field_kind(message: betterproto2.Message) -> None:
    expected = message.to_dict(casing=betterproto2.Casing.SNAKE)
    assert to_json(type(message), encode(message)) == expected


@pytest.mark.parametrize(
    ("services", "mocks"), [("services.yaml", "mocks.yaml"), ("routes.yaml", "routes-mocks.yaml")]
)
@pytest.mark.parametrize("bind", ["127.0.0.1", "::"])
def test_every_resource_of_the_examples(services: str, mocks: str, bind: str) -> None:
    config = load_config(EXAMPLES / services)
    ports = resolve_all(config, MockResolver(load_mocks(EXAMPLES / mocks)))
    snapshot = build_snapshot(plan(config, ports, {}, bind)).check()
    checked = 0
    for type_url in TYPE_ORDER:
        for resource in snapshot.resources(type_url).values():
            expected = resource.message().to_dict(casing=betterproto2.Casing.SNAKE)
            assert resource.json() == expected, resource.name
            checked += 1
    assert checked > 4
