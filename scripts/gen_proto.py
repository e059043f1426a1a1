#!/usr/bin/env python3
"""Regenerate the committed gRPC/protobuf stubs under proto/edgefleet/v1.

    python scripts/gen_proto.py            # write the stubs beside the .proto files
    python scripts/gen_proto.py --out DIR  # write them under DIR instead (used by the stub test)

`proto/` is the import root, so the stubs import each other as `edgefleet.v1.*`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "edgefleet").rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # grpcio-tools, pinned with grpcio

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return sorted(out.rglob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args(argv)
    written = generate(args.out)
    for path in written:
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
