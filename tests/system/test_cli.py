"""The command lines as a user runs them: lstm-server as a subprocess, lstm-client against it."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests import zoo
from tests.helpers import ROOT
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


def quick_start_lines() -> list[str]:
    """The lstm-client lines of the README's quick start."""
    text = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith(".venv/bin/lstm-client")]


def test_every_line_of_the_readme_quick_start_runs_as_printed(served) -> None:
    """Against the embedded default model, as ``make serve`` starts it."""
    lines = quick_start_lines()
    assert len(lines) >= 8
    for line in lines:
        args = shlex.split(line, comments=True)[1:]
        done = client(served, *args)
        assert done.returncode == 0, (line, done.stderr)
        assert done.stdout.strip(), line


def test_the_cli_reads_the_feature_count_from_the_model(served) -> None:
    done = client(served, "--output", "json", "predict", "1", "2", "3", "4")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["outputs"]) == 4  # one feature: four timesteps
    wrong = client(served, "predict", "1", "2", "3", "4", "--features", "2")
    assert wrong.returncode == 2
    assert "takes 1 features per timestep" in wrong.stderr


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


def test_bench_keeps_a_window_of_steps_in_flight_on_session_streams(served) -> None:
    done = client(
        served, "--output", "json", "bench", "--target", served.target, "--rpc", "session",
        "--window", "8", "--concurrency", "2", "--duration", "0.3", "--warmup", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["concurrency"] == 2
    assert row["requests/s"] > 0
    assert 0 < row["p50 ms"] <= row["p99 ms"]


def test_server_errors_reach_the_user(served) -> None:
    done = client(served, "--model", "nope", "predict", "0.1", "0.2")
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr
    assert "[MODEL_NOT_FOUND]" in done.stderr


def test_second_server_on_a_busy_port_exits_at_once(served) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lstm_server", "--host", "127.0.0.1", "--port", str(served.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"cannot bind 127.0.0.1:{served.port}" in done.stderr


def test_a_busy_http_port_exits_at_once() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "lstm_server", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--http-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}" in done.stderr


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


# Every command answers a user's mistake with one line and a documented exit code.


@pytest.mark.parametrize("command", ["lstm_client.cli", "lstm_server"])
def test_version_on_both_commands(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", command, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.split()[1][0].isdigit()


CLIENT_ERRORS = {
    "server down": (["--target", "127.0.0.1:1", "--timeout", "2", "metadata"], 1, "UNAVAILABLE"),
    "bench, server down": (
        ["--target", "127.0.0.1:1", "bench", "--duration", "0.2", "--warmup", "0"],
        1,
        "UNAVAILABLE",
    ),
    "bad flag": (["predict", "--chunky", "1"], 2, "unrecognized arguments"),
    "bad output": (["--output", "yaml", "metadata"], 2, "invalid choice"),
    "bad numbers": (["predict", "0.1", "zero"], 2, "cannot read the input values"),
    "missing TLS file": (["--tls-ca", "/no/such/ca.pem", "metadata"], 2, "No such file"),
    "bad concurrency": (["bench", "--concurrency", "many"], 2, "invalid literal"),
}


@pytest.mark.parametrize("case", sorted(CLIENT_ERRORS))
def test_client_errors_exit_with_a_line_and_no_traceback(served, case: str) -> None:
    args, code, words = CLIENT_ERRORS[case]
    done = client(served, *args)
    assert done.returncode == code, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


SERVER_ERRORS = {
    "bad store URL": (["--session-store", "carrier-pigeon"], "--session-store must be"),
    "unknown store": (["--session-store", "mongo://db"], "unknown session store"),
    "bad log level": (["--log-level", "LOUD"], "--log-level must be one of"),
    "bad flag": (["--port", "abc"], "invalid int value"),
    "bad limit": (["--max-sessions", "-1"], "--max-sessions must be 0"),
}


@pytest.mark.parametrize("case", sorted(SERVER_ERRORS))
def test_server_errors_exit_2_with_a_line_and_no_traceback(case: str) -> None:
    args, words = SERVER_ERRORS[case]
    done = subprocess.run(
        [sys.executable, "-m", "lstm_server", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_json_output_of_every_command(served) -> None:
    def lines(*args: str) -> list[dict]:
        done = client(served, "--output", "json", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    [meta] = lines("metadata")
    assert meta["units"] == 1
    assert meta["limits"]["max_batch_size"] > 0
    [predicted] = lines("predict", "0.1", "0.2", "0.3")
    assert len(predicted["outputs"]) == 3
    assert predicted["states"][0]["h"] == predicted["outputs"][-1]
    streamed = lines("stream", "0.1", "0.2", "0.3")
    assert [m["start_timestep"] for m in streamed[:3]] == [0, 1, 2]
    assert streamed[-1]["states"][0]["h"] == predicted["states"][0]["h"]
    *steps, verdict = lines("session", "0.1", "0.2", "0.3")
    assert [s["step_number"] for s in steps] == [1, 2, 3]
    assert verdict == {"equals_predict": True}
    rows = lines("bench", "--duration", "0.2", "--warmup", "0", "--concurrency", "1,2")
    assert [r["concurrency"] for r in rows] == [1, 2]
    assert all(r["requests/s"] > 0 for r in rows)


def test_bench_honours_tls_and_tokens(tmp_path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    tokens = tmp_path / "tokens"
    tokens.write_text("alice s3cr3t-token-of-alice\n")
    server = ServerProcess(
        ["--tls-cert", str(paths["cert"]), "--tls-key", str(paths["key"]),
         "--auth-tokens-file", str(tokens)],
        log_dir=tmp_path,
        wait=False,  # its health service speaks TLS only; the port file says it is ready
    )  # fmt: skip
    try:
        bench = ["bench", "--duration", "0.2", "--warmup", "0", "--concurrency", "1"]
        target = f"localhost:{server.port}"
        base = [sys.executable, "-m", "lstm_client.cli", "--target", target, "--output", "json"]
        secure = [*base, "--tls-ca", str(paths["ca"])]
        ok = subprocess.run(
            [*secure, "--token", "s3cr3t-token-of-alice", *bench],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["requests/s"] > 0
        anonymous = subprocess.run([*secure, *bench], capture_output=True, text=True, timeout=60)
        assert anonymous.returncode == 1
        assert "UNAUTHENTICATED" in anonymous.stderr
    finally:
        server.stop()


def test_json_logs_every_line_of_a_start_its_calls_and_shutdown(tmp_path) -> None:
    """Every line the process writes (stdout and stderr, TensorFlow's and gRPC's native lines
    included) is one JSON object with an ISO-8601 UTC time; an access line per call of either
    protocol, with its error's reason; no secrets, no input values."""
    from lstm_client import LstmClient, LstmError

    tokens = tmp_path / "tokens"
    tokens.write_text("alice s3cr3t-token-of-alice\n")
    server = ServerProcess(
        ["--log-format", "json", "--access-log", "--auth-tokens-file", str(tokens),
         "--http-port", "0"],
        log_dir=tmp_path,
    )  # fmt: skip
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        with LstmClient(
            server.target, token="s3cr3t-token-of-alice", metadata=[("traceparent", traceparent)]
        ) as client:
            client.predict([[0.25], [0.75]])
            with pytest.raises(LstmError):
                client.attach("no-such-session")
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.ports['http_port']}/v2/models/default-lstm/infer",
            b"{}",
            {"Authorization": "Bearer s3cr3t-token-of-alice"},
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
    finally:
        assert server.stop(signal.SIGTERM) == 0
    text = server.log()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line
    assert len(lines) > 5
    assert all({"time", "levelname", "name", "trace_id", "message"} <= set(r) for r in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in lines)
    # One line per call; gRPC sends an error's status before its line is written, so the
    # lines of the attach and the HTTP call may come in either order.
    access = {r["rpc"]: r for r in lines if r["name"] == "lstm_server.access"}
    assert len([r for r in lines if r["name"] == "lstm_server.access"]) == 3
    predict = access["lstm.v1.LstmService/Predict"]
    attach = access["lstm.v1.LstmService/GetSession"]
    http = access["POST /v2/models/{model}/infer"]
    assert predict["rpc"] == "lstm.v1.LstmService/Predict"
    assert (predict["code"], predict["reason"], predict["principal"]) == ("OK", "-", "alice")
    assert predict["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert predict["peer"].startswith("ipv4:127.0.0.1:")
    assert (attach["code"], attach["reason"]) == ("NOT_FOUND", "SESSION_NOT_FOUND")
    assert (http["protocol"], http["rpc"]) == ("http", "POST /v2/models/{model}/infer")
    assert (http["http_status"], http["reason"], http["principal"]) == (
        400,
        "INVALID_INPUT",
        "alice",
    )
    assert lines[-1]["message"] == "stopped"
    assert "s3cr3t" not in text
    assert "0.25" not in predict["message"]
