"""The command lines as a user runs them: lstm-server as a subprocess, lstm-client against it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import zoo
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[ServerProcess]:
    server = ServerProcess(log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    assert server.stop(signal.SIGTERM) == 0, server.log()


def client(served: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lstm_client.cli", "--target", served.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_shows_sequence_states_and_that_the_last_output_is_h(served) -> None:
    done = client(served, "demo")
    assert done.returncode == 0, done.stderr
    for words in (
        "return_sequences=True",
        "return_state=True",
        "h:",
        "c:",
        "the last hidden output equals h: True",
    ):
        assert words in done.stdout


def test_predict_prints_sequence_h_and_c(served) -> None:
    done = client(served, "predict", "0.1", "0.2", "0.3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("hidden sequence")
    assert any(line.startswith("h: [") for line in lines)
    assert any(line.startswith("c: [") for line in lines)


def test_session_steps_equal_predict(served) -> None:
    done = client(served, "session", "0.1", "0.2", "0.3", "--chunk", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("step ") == 3
    assert "equals predict over the whole sequence: True" in done.stdout


@pytest.mark.parametrize("rpc", ["predict", "stream", "session"])
def test_bench_reports_throughput_and_percentiles(served, rpc: str) -> None:
    done = client(
        served, "bench", "--target", served.target, "--rpc", rpc, "--timesteps", "3",
        "--concurrency", "1,4",
        "--duration", "0.3", "--warmup", "0.1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()[1:]
    assert header.split() == ["concurrency", "requests/s", "timesteps/s", "p50", "ms", "p90", "ms",
                              "p99", "ms"]  # fmt: skip
    assert [int(r.split()[0]) for r in rows] == [1, 4]
    for row in rows:
        _, rps, timesteps, p50, p90, p99 = (float(v) for v in row.split())
        assert rps > 0
        assert timesteps == pytest.approx(3 * rps, rel=1e-3)
        assert 0 < p50 <= p90 <= p99


def test_server_errors_reach_the_user(served) -> None:
    done = client(served, "predict", "0.1", "0.2", "--features", "2")
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr
    assert "expected input_features=1" in done.stderr


def test_second_server_on_a_busy_port_exits_at_once(served) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lstm_server", "--host", "127.0.0.1", "--port", str(served.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"cannot bind 127.0.0.1:{served.port}" in done.stderr


@pytest.fixture(scope="module")
def token_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A stacked token model: Embedding, two LSTMs, a Dense head."""
    import keras

    path = tmp_path_factory.mktemp("models") / "tokens.keras"
    keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(zoo.V, 3),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.LSTM(3, return_sequences=True),
            keras.layers.Dense(zoo.V),
        ]
    ).save(path)
    server = ServerProcess(["--model", str(path)], log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    assert server.stop(signal.SIGTERM) == 0, server.log()


def test_token_models_take_ids_and_print_outputs_and_every_layer_state(token_server) -> None:
    done = client(token_server, "predict", "3", "1", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "outputs (one row per timestep):"
    assert "hidden sequence of the top LSTM:" in lines
    for label in ("layer 0 h: [", "layer 0 c: [", "layer 1 h: [", "layer 1 c: ["):
        assert any(line.startswith(label) for line in lines), label
    done = client(token_server, "session", "3", "1", "4", "1", "--chunk", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("step ") == 2
    assert "equals predict over the whole sequence: True" in done.stdout
    done = client(token_server, "predict", "3", str(zoo.V))
    assert done.returncode == 1
    assert f"sequences[0].tokens[1]: is {zoo.V}, outside the vocabulary" in done.stderr
    done = client(token_server, "predict", "0.5")
    assert done.returncode != 0
    assert "cannot read the input values" in done.stderr
