"""Regenerate the Python stubs and the descriptor set under clients/ from protos/."""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import grpc_tools
import protovalidate
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
INCLUDES = [
    Path(
        annotations_pb2.__file__
    ).parent.parent.parent,  # google/api/*.proto from googleapis-common-protos
    Path(grpc_tools.__file__).parent / "_proto",  # google/protobuf/*.proto from grpcio-tools
]
PACKAGE_DOC = '"""Generated from protos/ by clients/generate.py; do not edit."""\n'
VALIDATE_PROTO = "buf/validate/validate.proto"
# Field rules are buf.validate annotations. No package ships validate.proto's Python module for
# google.protobuf, but protovalidate carries the file's descriptor: the stubs import a module
# that registers it (written below), not a generated copy of someone else's proto.
_VALIDATE_IMPORT = re.compile(r"^from buf\.validate import validate_pb2 as (\w+)$", re.MULTILINE)
VALIDATE_MODULE = "_validate_rules"
VALIDATE_MODULE_DOC = '"""buf/validate/validate.proto, from protovalidate (clients/generate.py)."""'
VALIDATE_MODULE_SOURCE = f'''{VALIDATE_MODULE_DOC}

from google.protobuf import (
    descriptor_pb2,  # noqa: F401  (validate.proto's imports, registered first)
    descriptor_pool,
    duration_pb2,  # noqa: F401
    field_mask_pb2,  # noqa: F401
    timestamp_pb2,  # noqa: F401
)
from protovalidate import ViolationsPb

_POOL = descriptor_pool.Default()
try:
    _POOL.FindFileByName("{VALIDATE_PROTO}")
except KeyError:
    _POOL.AddSerializedFile(ViolationsPb.desc().file.proto.to_binary())
'''


def validate_proto_set(path: Path) -> Path:
    """Write validate.proto's descriptor, as protovalidate ships it, as a FileDescriptorSet."""
    files = descriptor_pb2.FileDescriptorSet()
    files.file.add().ParseFromString(protovalidate.ViolationsPb.desc().file.proto.to_binary())
    path.write_bytes(files.SerializeToString())
    return path


def protoc_run(protos: Path, *args: str) -> None:
    """Run protoc over every .proto under `protos`, validate.proto coming from protovalidate."""
    with tempfile.TemporaryDirectory() as scratch:
        validate_set = validate_proto_set(Path(scratch) / "validate.binpb")
        includes = [f"-I{path}" for path in (protos, *INCLUDES)]
        files = [str(path.relative_to(protos)) for path in sorted(protos.rglob("*.proto"))]
        command = ["protoc", *includes, f"--descriptor_set_in={validate_set}", *args, *files]
        if protoc.main(command) != 0:
            raise SystemExit("protoc failed")


def generate(out: Path) -> None:
    """Write stubs, type stubs, package markers and a descriptor set with comments into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    protoc_run(PROTOS, f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}")
    # Comments travel in source info; the JSON shim reads them to describe its routes.
    protoc_run(
        PROTOS,
        "--include_source_info",
        f"--descriptor_set_out={out / 'pluct' / 'descriptor_set.binpb'}",
    )
    package = out / "pluct"
    for stub in sorted(package.rglob("*_pb2.py*")):
        stub.write_text(
            _VALIDATE_IMPORT.sub(rf"from pluct import {VALIDATE_MODULE} as \1", stub.read_text())
        )
    for directory in [package, *sorted(p for p in package.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").write_text(PACKAGE_DOC)
    (package / f"{VALIDATE_MODULE}.py").write_text(VALIDATE_MODULE_SOURCE)
    (package / "py.typed").write_text("")


def image(out: Path, protos: Path) -> None:
    """Write a descriptor set of every file under `protos` and its imports, for buf."""
    out.parent.mkdir(parents=True, exist_ok=True)
    protoc_run(protos, "--include_imports", "--include_source_info", f"--descriptor_set_out={out}")


def main() -> None:
    """Generate the stubs into a folder, or (--image) a descriptor set for buf lint/breaking."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "clients")
    parser.add_argument("--image", type=Path, help="write a buf image here instead of stubs")
    parser.add_argument("--protos", type=Path, default=PROTOS, help="the .proto tree to read")
    args = parser.parse_args()
    if args.image:
        image(args.image, args.protos)
    else:
        generate(args.out)


if __name__ == "__main__":
    main()
