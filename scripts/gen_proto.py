"""Generate the Python protobuf and gRPC modules (with .pyi stubs) from proto/.

The .proto sources live in ``proto/lstm/v1``; the generated modules go to
``client/lstm_client/v1`` so that the client package carries them and the
server imports them from there. Run ``python scripts/gen_proto.py`` after
editing a .proto; ``tests/test_codegen.py`` fails when the committed modules drift.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "lstm" / "v1"
# The sources are mapped to the import path of the package that carries them,
# so the generated modules import each other as ``lstm_client.v1.*``.
VIRTUAL_DIR = "lstm_client/v1"
PROTOS = ("lstm_service.proto",)


def include_dirs() -> list[str]:
    """The well-known types (from grpc_tools) and google.rpc (from googleapis-common-protos)."""
    grpc_tools_protos = resources.files("grpc_tools") / "_proto"
    google_rpc = Path(status_pb2.__file__).parent.parent.parent
    return [str(grpc_tools_protos), str(google_rpc)]


def grpc_stub_plugin() -> str:
    """mypy-protobuf's plugin, which writes the .pyi of the gRPC module."""
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    if not plugin.exists():
        raise SystemExit(f"{plugin} is missing: install the dev extra (mypy-protobuf)")
    return str(plugin)


def generate(out_dir: Path) -> None:
    """Write the generated modules for every source into ``out_dir/lstm_client/v1``."""
    (out_dir / VIRTUAL_DIR).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={VIRTUAL_DIR}={PROTO_DIR}",
        *(f"--proto_path={d}" for d in include_dirs()),
        f"--plugin=protoc-gen-mypy_grpc={grpc_stub_plugin()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "client", help="root of the output tree")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
