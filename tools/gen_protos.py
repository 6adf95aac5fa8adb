"""Regenerate the Python code for every .proto under protos/ (run via `./dev protos`).

Proto files live at protos/localmesh/api/..., mirroring the Python package, because protoc's
gRPC output imports its sibling by file path (`from localmesh.api.v1 import control_pb2`).
All generated code therefore lands in src/localmesh/api/ and nowhere else.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Compile every proto into `out` (a src-like root); returns the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(PROTOS.rglob("*.proto"))
    if not sources:
        return []
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in out.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    written = generate(ROOT / "src")
    for path in written:
        # protoc writes no __init__.py; each generated folder must be a regular package.
        for pkg in path.relative_to(ROOT / "src").parents:
            if str(pkg) != ".":
                (ROOT / "src" / pkg / "__init__.py").touch()
    for path in written:
        print(path.relative_to(ROOT), file=sys.stderr)


if __name__ == "__main__":
    main()
