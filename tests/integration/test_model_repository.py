"""A real server on a model repository directory: several models by name, a new version dropped
in while sessions stream (poll mode), the sessions kept on their version, the repository extension
over gRPC (tritonclient) and HTTP, and what a bad repository entry gets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from lstm_client import LstmClient, LstmError
from lstm_server.core.errors import ModelLoadError
from lstm_server.runtime.chain import load_chain
from lstm_server.runtime.keras_model import default_chain, save_chain
from tritonclient.utils import InferenceServerException

from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, free_port, settings

TOL = 1e-5
SIZES = {"encoder": (2, 3), "decoder": (3, 4)}  # features, units


def save_version(root: Path, name: str, version: int) -> Path:
    features, units = SIZES[name]
    path = root / name / str(version) / "model.keras"
    save_chain(default_chain(features, units, seed=10 * version + units), path)
    return path


def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    save_version(root, "encoder", 1)
    save_version(root, "decoder", 1)
    (root / "decoder" / "model-config.json").write_text('{"max_batch_size": 4}')
    (root / "decoder" / "latest").mkdir()  # not a version: skipped
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ThreadedServer]:
    made = ThreadedServer(
        settings(
            model_repository=repository,
            model_control_mode="poll",
            repository_poll_interval=0.2,
            http_port=free_port(),
        )
    )
    yield made
    made.stop()


@pytest.fixture
def client(server: ThreadedServer) -> Iterator[LstmClient]:
    with LstmClient(server.target, timeout=30) as made:
        yield made


def test_models_are_called_by_name_and_each_equals_its_weights(
    client: LstmClient, repository: Path, rng
) -> None:
    for name, (features, units) in SIZES.items():
        model = client.with_model(name)
        metadata = model.metadata()
        assert (metadata.name, metadata.version_number) == (name, 1)
        assert (metadata.input_features, metadata.units) == (features, units)
        x = rng.normal(size=(5, features)).astype(np.float32)
        result = model.predict(x)
        seq, h, c = NumpyLstm.from_saved_model(repository / name / "1" / "model.keras").run(x)
        np.testing.assert_allclose(result.sequence, seq, atol=TOL)
        np.testing.assert_allclose(result.h, h, atol=TOL)
        np.testing.assert_allclose(result.c, c, atol=TOL)
    decoder = client.with_model("decoder")
    assert decoder.metadata().limits["max_batch_size"] == 4  # its config file's
    listed = {(m.name, m.version): m.state for m in client.list_models()}
    assert listed == {("encoder", 1): "READY", ("decoder", 1): "READY"}


def test_an_unnamed_or_unknown_model_is_not_found_with_a_reason(client: LstmClient) -> None:
    with pytest.raises(LstmError) as unnamed:
        client.predict(np.zeros((1, 2), np.float32))
    assert unnamed.value.code == grpc.StatusCode.NOT_FOUND
    assert unnamed.value.reason == "MODEL_NOT_NAMED"
    assert "decoder, encoder" in unnamed.value.details
    with pytest.raises(LstmError) as unknown:
        client.with_model("nope").metadata()
    assert (unknown.value.code, unknown.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    with pytest.raises(LstmError) as version:
        client.with_model("encoder", 7).predict(np.zeros((1, 2), np.float32))
    assert version.value.reason == "MODEL_VERSION_NOT_FOUND"


def test_a_new_version_takes_new_sessions_and_old_ones_stay_on_theirs(
    client: LstmClient, server: ThreadedServer, repository: Path, rng
) -> None:
    encoder = client.with_model("encoder")
    x = rng.normal(size=(6, 2)).astype(np.float32)
    old = encoder.session()
    first = old.step(x[:3])
    save_version(repository, "encoder", 2)
    wait_for(lambda: ("encoder", 2, "READY") in _states(client))
    assert ("encoder", 1, "DRAINING") in _states(client)  # its session is live
    new = encoder.session()
    assert (new.info.model_name, new.info.version_number) == ("encoder", 2)
    second = old.step(x[3:])
    seq, h, _ = NumpyLstm.from_saved_model(repository / "encoder" / "1" / "model.keras").run(x)
    np.testing.assert_allclose(np.concatenate([first.sequence, second.sequence]), seq, atol=TOL)
    np.testing.assert_allclose(second.h, h, atol=TOL)
    v2 = NumpyLstm.from_saved_model(repository / "encoder" / "2" / "model.keras")
    np.testing.assert_allclose(new.step(x).sequence, v2.run(x)[0], atol=TOL)
    assert encoder.metadata().version_number == 2  # unnamed versions: the newest
    old.close()
    wait_for(lambda: ("encoder", 1, "UNAVAILABLE") in _states(client))
    new.close()


def _states(client: LstmClient) -> set[tuple[str, int, str]]:
    return {(m.name, m.version, m.state) for m in client.list_models()}


def test_a_broken_version_is_reported_and_the_loaded_one_serves_on(
    client: LstmClient, repository: Path
) -> None:
    folder = repository / "decoder" / "5"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"not a keras archive")
    wait_for(lambda: ("decoder", 5, "UNAVAILABLE") in _states(client))
    [broken] = [m for m in client.list_models() if (m.name, m.version) == ("decoder", 5)]
    assert "cannot load model file" in broken.reason
    assert client.with_model("decoder").metadata().version_number == 1
    with pytest.raises(LstmError) as refused:
        client.with_model("decoder", 5).metadata()
    assert refused.value.reason == "MODEL_LOAD_FAILED"


def test_the_repository_extension_answers_tritonclient_and_http(server: ThreadedServer) -> None:
    triton = triton_grpc.InferenceServerClient(server.target)
    index = triton.get_model_repository_index(as_json=True)
    entries = {(m["name"], m.get("version", "")): m.get("state") for m in index["models"]}
    assert entries[("decoder", "1")] == "READY"
    assert triton.is_model_ready("decoder", "1")
    assert triton.get_model_metadata("decoder", as_json=True)["versions"] == ["1"]
    with pytest.raises(InferenceServerException, match="explicit model control mode"):
        triton.load_model("decoder")  # this server follows its repository (poll)
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http_port}/v2/repository/index",
        data=json.dumps({"ready": True}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        listed = json.loads(response.read())
    assert ("decoder", "1", "READY") in {(m["name"], m["version"], m["state"]) for m in listed}
    assert all(m["state"] == "READY" for m in listed)  # {"ready": true}: only those


def test_a_saved_model_folder_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    with pytest.raises(ModelLoadError, match=r"TensorFlow SavedModel .* model\.save"):
        load_chain(tmp_path)


def test_model_config_and_statistics_answer_tritonclient_over_both_doors(
    server: ThreadedServer, client: LstmClient, rng
) -> None:
    triton = triton_grpc.InferenceServerClient(server.target)
    over_http = triton_http.InferenceServerClient(f"127.0.0.1:{server.server.http_port}")
    config = triton.get_model_config("decoder", "1", as_json=True)["config"]
    on_http = over_http.get_model_config("decoder", "1")
    assert on_http["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]}
    assert on_http["parameters"] == config["parameters"]
    assert config["name"] == "decoder"
    assert config["max_batch_size"] == 4  # its config file's
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "3"]}
    assert [o["name"] for o in config["output"]] == ["sequence", "state_h", "state_c"]

    def counts(stats: dict) -> tuple[int, ...]:
        [version] = stats["model_stats"]
        inference = version["inference_stats"]
        durations = (inference["success"], inference["fail"], inference["compute_infer"])
        totals = (version.get("inference_count", 0), version.get("execution_count", 0))
        return (*(int(v.get("count", 0)) for v in durations), *(int(t) for t in totals))

    before = counts(triton.get_inference_statistics("decoder", "1", as_json=True))
    decoder = client.with_model("decoder", 1)
    for _ in range(3):
        decoder.predict(rng.normal(size=(4, 3)).astype(np.float32))
    with pytest.raises(LstmError):
        decoder.predict(np.zeros((4, 9), np.float32))  # 9 features: refused
    grpc_after = counts(triton.get_inference_statistics("decoder", "1", as_json=True))
    http_after = counts(over_http.get_inference_statistics("decoder", "1"))
    assert grpc_after == http_after
    delta = tuple(a - b for a, b in zip(grpc_after, before, strict=True))
    assert delta == (3, 1, 3, 3, 3)  # success, fail, computed, sequences, model calls
    every = over_http.get_inference_statistics()["model_stats"]  # every loaded version
    assert ("decoder", "1") in {(s["name"], s["version"]) for s in every}
    assert {s["name"] for s in every} == {"decoder", "encoder"}
    with pytest.raises(InferenceServerException, match="nope"):
        triton.get_inference_statistics("nope")


def test_the_cli_lists_models_and_calls_one_by_name(server: ThreadedServer) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "lstm_client.cli", "--target", server.target, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    listed = cli("--output", "json", "models")
    assert listed.returncode == 0, listed.stderr
    states = {
        (m["name"], m["version"]): m["state"] for m in map(json.loads, listed.stdout.splitlines())
    }
    assert states[("decoder", 1)] == "READY"
    shown = cli("--model", "decoder", "--model-version", "1", "--output", "json", "metadata")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "decoder"
    predicted = cli("--model", "decoder", "predict", "1", "2", "3", "--features", "3")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith("hidden sequence")
    unnamed = cli("predict", "1", "2", "3", "--features", "3")
    assert unnamed.returncode == 1
    assert "MODEL_NOT_NAMED" in unnamed.stderr
