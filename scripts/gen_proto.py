"""Generate the Python protobuf and gRPC modules (with .pyi stubs) and the descriptor sets from
proto/.

The .proto sources live in ``proto/lstm/v1`` and are compiled under their real path,
``lstm/v1/lstm_service.proto``: that is the name the descriptor registers, the one reflection
serves, and the one stubs a user generates from the same file register too (identical files
coexist in protobuf's pool). The modules go to ``client/lstm_client/v1`` so that the client
package carries them and the server imports them from there; the one import between them
(``lstm.v1`` -> ``lstm_client.v1``) is rewritten here, as the last step of generation. The
descriptor set (``lstm_service.binpb``, imports included) ships with the package for tools that
read descriptors.

The Open Inference Protocol's file (``proto/inference``) becomes a descriptor set only,
``open_inference.binpb`` in ``lstm_server/transport/oip``: the server loads it into a pool of its
own (see ``proto/inference/README.md``).

The pinned grpcio-tools of the dev extra makes them: its protobuf and gRPC generated-code versions
set the client's floors (``pyproject.toml``). Run ``python scripts/gen_proto.py`` after editing a
.proto; ``tests/unit/test_codegen.py`` fails when the committed files drift.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCE_DIR = "lstm/v1"
PACKAGE_DIR = "client/lstm_client/v1"
PROTOS = ("lstm_service.proto",)
DESCRIPTOR_SET = "lstm_service.binpb"
OIP_SOURCE = "inference/open_inference_grpc.proto"
OIP_DIR = "server/lstm_server/transport/oip"
OIP_DESCRIPTOR_SET = "open_inference.binpb"


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


def _protoc(work: Path) -> None:
    sources = [f"{SOURCE_DIR}/{name}" for name in PROTOS]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        *(f"--proto_path={d}" for d in include_dirs()),
        f"--plugin=protoc-gen-mypy_grpc={grpc_stub_plugin()}",
        f"--python_out={work}",
        f"--pyi_out={work}",
        f"--grpc_python_out={work}",
        f"--mypy_grpc_out={work}",
        f"--descriptor_set_out={work / SOURCE_DIR / DESCRIPTOR_SET}",
        "--include_imports",
        *sources,
    ]
    (work / SOURCE_DIR).mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _carried(text: str) -> str:
    """A generated module's imports of its sibling, as the package that carries them has it."""
    text = re.sub(r"^from lstm\.v1 import ", "from lstm_client.v1 import ", text, flags=re.M)
    text = re.sub(r"^import lstm\.v1\.", "import lstm_client.v1.", text, flags=re.M)
    return re.sub(r"\blstm\.v1\.(lstm_service_pb2\w*)\b", r"lstm_client.v1.\1", text)


def _oip_descriptor_set(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--descriptor_set_out={target / OIP_DESCRIPTOR_SET}",
        OIP_SOURCE,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generate(out_dir: Path) -> None:
    """Write the generated files into ``out_dir/client/lstm_client/v1`` and the Open Inference
    Protocol's descriptor set into ``out_dir/server/lstm_server/transport/oip``."""
    _oip_descriptor_set(out_dir / OIP_DIR)
    target = out_dir / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        _protoc(work)
        for made in sorted((work / SOURCE_DIR).iterdir()):
            if made.suffix == ".binpb":
                shutil.copyfile(made, target / made.name)
            else:
                (target / made.name).write_text(_carried(made.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root of the output tree")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
