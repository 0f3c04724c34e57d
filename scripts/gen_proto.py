"""Regenerate the committed protobuf bindings from proto/.

Usage: python scripts/gen_proto.py [OUT_ROOT]

Deletes the old generated files, then runs grpcio-tools' protoc (pinned in the
dev extra) with mypy-protobuf for typed stubs. OUT_ROOT defaults to the
repository root; the compatibility gate passes a temporary folder and compares.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "sleap_rtc_proto/v1"
INIT_TEXT = (
    '"""Generated protobuf bindings of schema package sleap_rtc_proto.v1 (do not edit)."""\n'
)


def generate(out_root: Path) -> list[Path]:
    """Generate bindings under out_root/sleap_rtc_proto/v1 and return their paths."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out_dir = out_root / PACKAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("*_pb2.py")) + list(out_dir.glob("*_pb2.pyi")):
        old.unlink()
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent)) or shutil.which(
        "protoc-gen-mypy"
    )
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found: install the dev extra (mypy-protobuf)")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / "__init__.py").write_text(INIT_TEXT)
    return [*sorted(out_dir.glob("*_pb2.py*")), out_dir / "__init__.py"]


def main() -> None:
    out_root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out_root):
        print(path.relative_to(out_root))


if __name__ == "__main__":
    main()
