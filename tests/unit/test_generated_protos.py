"""The committed generated code matches protos/: a stale copy fails here, not at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in gen.generate(tmp_path)}
    committed = {
        p.relative_to(ROOT / "src"): p.read_bytes()
        for p in (ROOT / "src").rglob("*")
        if p.name.endswith(gen.GENERATED_SUFFIXES)
    }
    assert sorted(fresh) == sorted(committed), "run ./dev protos"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale generated files (run ./dev protos): {stale}"
