"""The client installs and imports beside what other services already have: stubs a user
generated from the same .proto, and tritonclient in the same environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from google.rpc import status_pb2

from tests.helpers import ROOT

USER_CODE = """
import json, sys
import grpc
import lstm_client
from lstm_client import LstmClient
from lstm.v1 import lstm_service_pb2 as user_pb, lstm_service_pb2_grpc as user_grpc
from lstm_client.v1 import lstm_service_pb2 as sdk_pb

target = sys.argv[1]
with grpc.insecure_channel(target) as channel:
    stub = user_grpc.LstmServiceStub(channel)
    request = user_pb.PredictRequest(
        sequences=[user_pb.Sequence(timesteps=[user_pb.Vector(values=[0.5] * 8)] * 3)]
    )
    reply = stub.Predict(request)
with LstmClient(target) as client:
    sdk = client.predict([[0.5] * 8] * 3)
print(json.dumps({
    "same_descriptor": user_pb.DESCRIPTOR.serialized_pb == sdk_pb.DESCRIPTOR.serialized_pb,
    "name": user_pb.DESCRIPTOR.name,
    "user_h": list(reply.outputs[0].final_state.h.values),
    "sdk_h": sdk.h.tolist(),
}))
"""


def test_stubs_a_user_generated_from_the_proto_import_beside_the_sdk(
    wide_server, tmp_path: Path
) -> None:
    google_rpc = Path(status_pb2.__file__).parent.parent.parent
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={ROOT / 'proto'}",
         f"--proto_path={google_rpc}", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", "lstm/v1/lstm_service.proto"],
        check=True,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", USER_CODE, wide_server.target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # the user's `lstm` package comes first on the path
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["name"] == "lstm/v1/lstm_service.proto"
    assert found["same_descriptor"]
    assert found["user_h"] == found["sdk_h"]


def test_pip_resolves_the_sdk_beside_the_latest_tritonclient(tmp_path: Path) -> None:
    """What pip would install for ``lstm-serving tritonclient[grpc]``: the newest tritonclient,
    not an old one that a too-high protobuf floor would force."""
    latest = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "tritonclient"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.split("(")[1].split(")")[0]  # fmt: skip
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--report", str(report), str(ROOT), "tritonclient[grpc]"],
        check=True, timeout=600,
    )  # fmt: skip
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["tritonclient"] == latest
    assert chosen["lstm-serving"]
    assert int(chosen["protobuf"].split(".")[0]) >= 6
