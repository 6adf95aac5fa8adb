"""JSON Schemas of localmesh's files, for editors (e.g. yaml-language-server's `$schema`).

    services.schema.json    services.yaml
    mocks.schema.json       mocks.yaml

The loader in localmesh.config is the authority and stricter (duplicate hosts, exact
locations); these schemas describe the same shape.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

SERVICES_SCHEMA = "services.schema.json"
MOCKS_SCHEMA = "mocks.schema.json"


def load_schema(name: str = SERVICES_SCHEMA) -> dict[str, Any]:
    """One of the shipped schemas, parsed."""
    data: dict[str, Any] = json.loads(files(__name__).joinpath(name).read_text(encoding="utf-8"))
    return data
