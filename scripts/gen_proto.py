"""Generate the Python gRPC stubs from proto/ into onnxrec/v1/ (the import package ``onnxrec.v1``).

    python scripts/gen_proto.py            # write the stubs
    python scripts/gen_proto.py --check    # exit 1 if the committed stubs differ from a fresh run

The stubs are generated code: never edit them by hand; change the .proto and run this.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PACKAGE_DIR = REPO / "onnxrec" / "v1"  # installed as onnxrec.v1, matching the proto package onnxrec.v1


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto; returns the generated files under ``out``."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp) / "onnxrec" / "v1"
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for f in sorted(generated.iterdir()):
            shutil.copy2(f, out / f.name)
            files.append(out / f.name)
    (out / "__init__.py").write_text('"""Generated gRPC stubs for the onnxrec.v1 API (scripts/gen_proto.py)."""\n')
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the committed stubs")
    args = ap.parse_args()
    if not args.check:
        generate(PACKAGE_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            f.name
            for f in fresh
            if not (PACKAGE_DIR / f.name).exists() or not filecmp.cmp(f, PACKAGE_DIR / f.name, shallow=False)
        ]
        if stale:
            print(f"stubs out of date: {', '.join(stale)}; run: python scripts/gen_proto.py", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
