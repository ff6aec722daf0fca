"""Generate Python code, typed stubs and gRPC stubs from proto/ into libs/.

The one command behind `make proto`. Generated files are committed; `make check-proto` runs this
into a scratch folder and fails when the committed copy differs, so stale code cannot land.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT_ROOT = ROOT / "libs"


def generate(output: Path) -> list[Path]:
    """Run protoc over every .proto file and return the generated files, relative to output."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output}",
        f"--mypy_out={output}",
        f"--grpc_python_out={output}",
        f"--mypy_grpc_out={output}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(output) for p in output.rglob("*_pb2*.py*"))


def main() -> int:
    """Generate into libs/, or with --check compare a fresh generation with libs/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when libs/ holds stale code")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
        committed = sorted(p.relative_to(OUTPUT_ROOT) for p in OUTPUT_ROOT.rglob("*_pb2*.py*"))
        stale = [
            str(p)
            for p in fresh
            if not (OUTPUT_ROOT / p).exists()
            or not filecmp.cmp(Path(scratch) / p, OUTPUT_ROOT / p, shallow=False)
        ]
        stale += [str(p) for p in committed if p not in fresh]
        if check:
            if stale:
                print("generated code is stale; run `make proto`:\n  " + "\n  ".join(stale))
                return 1
            print(f"generated code is current ({len(fresh)} files)")
            return 0
        for path in committed:
            if path not in fresh:
                (OUTPUT_ROOT / path).unlink()
        for path in fresh:
            target = OUTPUT_ROOT / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(scratch) / path, target)
            for package in target.relative_to(OUTPUT_ROOT).parents:
                init = OUTPUT_ROOT / package / "__init__.py"
                if package != Path(".") and not init.exists():
                    init.write_text('"""Generated protobuf package."""\n')
        print(f"generated {len(fresh)} files under {OUTPUT_ROOT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
