"""Regenerate the Python stubs and the descriptor set under clients/ from protos/."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
INCLUDES = [
    PROTOS,
    Path(
        annotations_pb2.__file__
    ).parent.parent.parent,  # google/api/*.proto from googleapis-common-protos
    Path(grpc_tools.__file__).parent / "_proto",  # google/protobuf/*.proto from grpcio-tools
]
PACKAGE_DOC = '"""Generated from protos/ by clients/generate.py; do not edit."""\n'


def _protoc(*args: str) -> None:
    includes = [f"-I{path}" for path in INCLUDES]
    files = [str(path.relative_to(PROTOS)) for path in sorted(PROTOS.rglob("*.proto"))]
    if protoc.main(["protoc", *includes, *args, *files]) != 0:
        raise SystemExit("protoc failed")


def generate(out: Path) -> None:
    """Write stubs, type stubs, package markers and a descriptor set with comments into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    _protoc(f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}")
    # Comments travel in source info; the JSON shim reads them to describe its routes.
    _protoc(
        "--include_source_info", f"--descriptor_set_out={out / 'pluct' / 'descriptor_set.binpb'}"
    )
    package = out / "pluct"
    for directory in [package, *sorted(p for p in package.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").write_text(PACKAGE_DOC)
    (package / "py.typed").write_text("")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "clients")
