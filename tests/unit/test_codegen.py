"""The committed protobuf modules and descriptor set are exactly what scripts/gen_proto.py makes
from proto/ with the pinned generator, under the file's real path."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lstm_client.v1 import lstm_service_pb2 as pb

from tests.helpers import ROOT, project_tool

GENERATED = ROOT / "client" / "lstm_client" / "v1"
OIP = ROOT / "server" / "lstm_server" / "transport" / "oip"


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    python = project_tool(".venv-proto/bin/python", "make proto")
    subprocess.run(
        [str(python), str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True
    )
    fresh = tmp_path / "client" / "lstm_client" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == [
        "lstm_service.binpb",
        "lstm_service_pb2.py",
        "lstm_service_pb2.pyi",
        "lstm_service_pb2_grpc.py",
        "lstm_service_pb2_grpc.pyi",
    ]
    for name in names:
        assert (GENERATED / name).read_bytes() == (fresh / name).read_bytes(), (
            f"{name} drifted from proto/: run `make proto`"
        )
    made = tmp_path / "server" / "lstm_server" / "transport" / "oip" / "open_inference.binpb"
    assert (OIP / made.name).read_bytes() == made.read_bytes(), "run `make proto`"


def test_the_descriptor_has_the_files_real_path() -> None:
    assert pb.DESCRIPTOR.name == "lstm/v1/lstm_service.proto"
    assert pb.DESCRIPTOR.GetOptions().go_package.endswith(";lstmv1")
