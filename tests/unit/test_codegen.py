"""The committed protobuf modules are exactly what scripts/gen_proto.py makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

GENERATED = ROOT / "client" / "lstm_client" / "v1"


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True
    )
    fresh = tmp_path / "lstm_client" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == [
        "lstm_service_pb2.py",
        "lstm_service_pb2.pyi",
        "lstm_service_pb2_grpc.py",
        "lstm_service_pb2_grpc.pyi",
    ]
    for name in names:
        assert (GENERATED / name).read_text() == (fresh / name).read_text(), (
            f"{name} drifted from proto/: run `python scripts/gen_proto.py`"
        )
