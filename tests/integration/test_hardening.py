"""Limits, malformed bytes, unexpected errors, deadlines, cancellation, lost replies, TLS and
token authentication: each property with a test that fails without it."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import LstmClient, LstmError, TlsOptions
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc
from lstm_server.core.types import Array

from tests.helpers import GatedRuntime, scrape, seq_msg, value
from tests.servers import ThreadedServer, free_port, settings

SERVICE_METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["LstmService"].methods]


class FailingRuntime(GatedRuntime):
    def run(self, x: Array, lengths: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        raise RuntimeError("secret detail of the failure")


@pytest.fixture(scope="module")
def gated() -> Iterator[tuple[ThreadedServer, GatedRuntime]]:
    runtime = GatedRuntime(features=2, units=4)
    server = ThreadedServer.with_runtime(
        settings(batching=False, max_concurrent_rpcs=0, metrics_port=None), runtime
    )
    yield server, runtime
    runtime.gate.set()
    server.stop()


def test_the_model_loaded_at_start_is_left_out_of_garbage_collection(wide_server) -> None:
    """A full collection over TensorFlow's objects stalled every call in flight (175 ms)."""
    runtime = wide_server.server.models.loaded()[0].scheduler.runtime
    assert runtime is not None
    assert gc.is_tracked(runtime)
    assert gc.get_freeze_count() > 0
    assert not any(o is runtime for o in gc.get_objects())  # frozen: no pass walks it


def test_an_oversized_message_gets_resource_exhausted_and_the_server_goes_on() -> None:
    server = ThreadedServer(settings(features=8, max_message_bytes=64 * 1024))
    try:
        with LstmClient(server.target) as client:
            with pytest.raises(LstmError) as caught:
                client.predict(np.ones((5000, 8)))
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.predict(np.ones((3, 8))).sequence.shape == (3, 1)
            assert client.metadata().limits["max_message_bytes"] == 64 * 1024
    finally:
        server.stop()


def test_calls_beyond_the_concurrency_cap_are_refused_at_once_but_health_answers() -> None:
    server = ThreadedServer(settings(max_concurrent_rpcs=2))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.LstmServiceStub(channel)
            opening = pb.SessionStreamRequest(open=pb.OpenSession(create=pb.CreateSessionRequest()))
            streams = []
            for _ in range(2):  # two streams stay open: two calls in flight
                call = stub.StreamSession(_hold(opening))
                next(call)
                streams.append(call)
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((1, 1)))]))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 2 concurrent calls" in caught.value.details()
            assert time.monotonic() - began < 1
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            for call in streams:
                call.cancel()
            deadline = time.monotonic() + 5
            while True:  # the cancelled streams leave the count
                try:
                    stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((1, 1)))]))
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
    finally:
        server.stop()


def _hold(first: pb.SessionStreamRequest) -> Iterator[pb.SessionStreamRequest]:
    """A request stream that sends its opening message and then waits until cancelled."""
    yield first
    threading.Event().wait(30)


@pytest.mark.parametrize("method", SERVICE_METHODS)
def test_garbage_bytes_get_invalid_argument_on_every_rpc(wide_server, method: str) -> None:
    kinds = {
        m.name: (m.client_streaming, m.server_streaming)
        for m in pb.DESCRIPTOR.services_by_name["LstmService"].methods
    }
    client_streams, server_streams = kinds[method]
    garbage = b"\xff\xff\xff\xff\x0f\x01garbage"
    path = f"/lstm.v1.LstmService/{method}"
    with grpc.insecure_channel(wide_server.target) as channel:
        factory = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(client_streams, server_streams)]
        call = factory(path)  # bytes in, bytes out
        request = iter([garbage]) if client_streams else garbage

        def invoke() -> None:
            reply = call(request, timeout=10)
            if server_streams:
                list(reply)

        with pytest.raises(grpc.RpcError) as caught:
            invoke()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid message" in caught.value.details()
        stub = pb_grpc.LstmServiceStub(channel)
        assert stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((1, 8)))])).outputs


def test_unexpected_errors_are_internal_with_a_generic_message(caplog) -> None:
    server = ThreadedServer.with_runtime(settings(), FailingRuntime())
    try:
        with (
            LstmClient(server.target) as client,
            caplog.at_level(logging.ERROR),
            pytest.raises(LstmError) as caught,
        ):
            client.predict([[0.1]])
        assert caught.value.code == grpc.StatusCode.INTERNAL
        assert "secret" not in caught.value.details
        assert "server log" in caught.value.details
        assert "secret detail of the failure" in caplog.text
    finally:
        server.stop()


def test_a_call_whose_deadline_passed_in_the_queue_is_not_run(gated) -> None:
    server, runtime = gated
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.LstmServiceStub(channel)
        runtime.gate.clear()
        blocking = stub.Predict.future(pb.PredictRequest(sequences=[seq_msg(np.ones((3, 2)))]))
        time.sleep(0.2)  # the first call holds the runtime
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((7, 2)))]), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        runtime.gate.set()
        assert blocking.result(timeout=10).outputs
        stub.Predict(pb.PredictRequest(sequences=[seq_msg(np.ones((5, 2)))]))
    assert 7 not in runtime.ran, "the expired call was executed"
    assert 3 in runtime.ran
    assert 5 in runtime.ran


def test_a_step_whose_reply_was_lost_is_applied_once(gated, rng) -> None:
    server, runtime = gated
    x = rng.normal(size=(2, 2)).astype(np.float32)
    with LstmClient(server.target) as client:
        whole = client.predict(x)
        session = client.session()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.LstmServiceStub(channel)
            for timeout in (0.3, 0.3):  # the reply is lost twice: deadline passed
                runtime.gate.clear()
                blocker = stub.Predict.future(
                    pb.PredictRequest(sequences=[seq_msg(np.ones((1, 2)))])
                )
                time.sleep(0.1)
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Step(
                        pb.StepRequest(
                            session_id=session.session_id, input=seq_msg(x), step_number=1
                        ),
                        timeout=timeout,
                    )
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                runtime.gate.set()
                blocker.result(timeout=10)
        result = session.step(x)  # the SDK's retry: the same step number
        assert result.step_number == 1
        assert session.refresh().step_count == 1
        np.testing.assert_allclose(result.sequence, whole.sequence, atol=1e-6)
        session.close()


def test_cancelling_a_stream_stops_its_computation() -> None:
    server = ThreadedServer(
        settings(features=8, units=16, stream_chunk_timesteps=32, metrics_port=free_port())
    )
    url = f"http://127.0.0.1:{server.server.metrics_server.port}/metrics"
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.LstmServiceStub(channel)
            call = stub.PredictStream(pb.PredictRequest(sequences=[seq_msg(np.ones((10_000, 8)))]))
            next(call)
            next(call)
            call.cancel()
        time.sleep(0.5)
        first = value(scrape(url), "lstm_timesteps_total")
        time.sleep(0.5)
        second = value(scrape(url), "lstm_timesteps_total")
        assert first == second, "the server kept computing a cancelled stream"
        assert second < 10_000
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tls")
    ca, other_ca = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("client@lstm-serving")
    stranger = other_ca.issue_cert("stranger")
    files = {
        "ca": ca.cert_pem,
        "server_chain": server_cert.private_key_and_cert_chain_pem,
        "client_chain": client_cert.private_key_and_cert_chain_pem,
        "stranger_chain": stranger.private_key_and_cert_chain_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = directory / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    paths["server_key"] = directory / "server_key.pem"
    server_cert.private_key_pem.write_to_path(str(paths["server_key"]))
    paths["server_cert"] = directory / "server_cert.pem"
    paths["server_cert"].write_bytes(b"".join(b.bytes() for b in server_cert.cert_chain_pems))
    for who, cert in (("client", client_cert), ("stranger", stranger)):
        paths[f"{who}_key"] = directory / f"{who}_key.pem"
        cert.private_key_pem.write_to_path(str(paths[f"{who}_key"]))
        paths[f"{who}_cert"] = directory / f"{who}_cert.pem"
        paths[f"{who}_cert"].write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return paths


def _predicts(target: str, tls: TlsOptions | None) -> grpc.StatusCode:
    with LstmClient(target, timeout=5, tls=tls) as client:
        try:
            client.predict([[0.1]])
        except LstmError as error:
            return error.code
        return grpc.StatusCode.OK


def test_tls_refuses_plaintext(tls_files) -> None:
    server = ThreadedServer(
        settings(
            host="localhost", tls_cert=tls_files["server_cert"], tls_key=tls_files["server_key"]
        )
    )
    target = f"localhost:{server.port}"
    try:
        assert _predicts(target, TlsOptions.from_files(tls_files["ca"])) == grpc.StatusCode.OK
        assert _predicts(target, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(tls_files) -> None:
    server = ThreadedServer(
        settings(
            host="localhost",
            tls_cert=tls_files["server_cert"],
            tls_key=tls_files["server_key"],
            tls_client_ca=tls_files["ca"],
        )
    )
    target = f"localhost:{server.port}"
    f = tls_files
    try:
        good = TlsOptions.from_files(f["ca"], f["client_cert"], f["client_key"])
        assert _predicts(target, good) == grpc.StatusCode.OK
        assert _predicts(target, TlsOptions.from_files(f["ca"])) == grpc.StatusCode.UNAVAILABLE
        stranger = TlsOptions.from_files(f["ca"], f["stranger_cert"], f["stranger_key"])
        assert _predicts(target, stranger) == grpc.StatusCode.UNAVAILABLE
        assert _predicts(target, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_token_authentication_and_session_ownership(tmp_path: Path, caplog) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# principal token\nalice s3cr3t-alice-token\nbob s3cr3t-bob-token\n")
    server = ThreadedServer(settings(auth_tokens_file=tokens))
    try:
        with caplog.at_level(logging.DEBUG):
            for token in (None, "wrong-token", "s3cr3t-alice-tokenX"):
                with LstmClient(server.target, token=token) as anonymous:
                    with pytest.raises(LstmError) as caught:
                        anonymous.predict([[0.1]])
                    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            with grpc.insecure_channel(server.target) as channel:  # health needs no token
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert status.status == health_pb2.HealthCheckResponse.SERVING
            with (
                LstmClient(server.target, token="s3cr3t-alice-token") as alice,
                LstmClient(server.target, token="s3cr3t-bob-token") as bob,
            ):
                session = alice.session()
                session.step([[0.3]])
                for attempt in (
                    lambda: bob.attach(session.session_id),
                    lambda: list(bob.stream_session([[[0.1]]], session_id=session.session_id)),
                ):
                    with pytest.raises(LstmError) as caught:
                        attempt()
                    assert caught.value.code == grpc.StatusCode.NOT_FOUND
                    assert "does not exist" in caught.value.details
                assert alice.attach(session.session_id).step_count == 1
                session.close()
        assert "s3cr3t" not in caplog.text
    finally:
        server.stop()
