"""Predict and PredictStream against the numpy reference, through the stubs and the SDK."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from lstm_client import FinalState, LstmClient, StreamChunk
from lstm_client.v1 import lstm_service_pb2 as pb

from tests.helpers import seq_msg, state_msg
from tests.reference import NumpyLstm

TOL = 1e-5


def test_tutorial_input_on_the_default_model(tiny_server, tiny_reference: NumpyLstm) -> None:
    with LstmClient(tiny_server.target) as client:
        result = client.predict([[0.1], [0.2], [0.3]])
    seq, h, c = tiny_reference.run(np.array([[0.1], [0.2], [0.3]]))
    assert result.sequence.shape == (3, 1)
    assert result.h.shape == (1,)
    assert result.c.shape == (1,)
    np.testing.assert_allclose(result.sequence, seq, atol=TOL)
    np.testing.assert_allclose(result.h, h, atol=TOL)
    np.testing.assert_allclose(result.c, c, atol=TOL)
    np.testing.assert_array_equal(result.sequence[-1], result.h)


def test_stub_batch_of_different_lengths_with_initial_states(stub, wide_reference, rng) -> None:
    lengths = [1, 7, 3, 130, 64]
    xs = [rng.normal(size=(t, 8)).astype(np.float32) for t in lengths]
    states = [
        (rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)) for _ in xs
    ]
    reply = stub.Predict(
        pb.PredictRequest(
            sequences=[seq_msg(x) for x in xs],
            initial_states=[state_msg(h, c) for h, c in states],
        )
    )
    assert len(reply.outputs) == len(xs)
    for x, (h0, c0), out in zip(xs, states, reply.outputs, strict=True):
        seq, h, c = wide_reference.run(x, h0, c0)
        got = np.array([v.values for v in out.hidden_sequence])
        assert got.shape == (x.shape[0], 16)
        np.testing.assert_allclose(got, seq, atol=TOL)
        np.testing.assert_allclose(out.final_state.h.values, h, atol=TOL)
        np.testing.assert_allclose(out.final_state.c.values, c, atol=TOL)
        np.testing.assert_array_equal(out.final_state.h.values, out.hidden_sequence[-1].values)


def test_sdk_keeps_the_batch_axis(client: LstmClient, wide_reference, rng) -> None:
    x = rng.normal(size=(3, 5, 8)).astype(np.float32)
    h0 = rng.normal(size=(3, 16)).astype(np.float32)
    c0 = rng.normal(size=(3, 16)).astype(np.float32)
    result = client.predict(x, initial_state=(h0, c0))
    assert result.sequence.shape == (3, 5, 16)
    assert result.h.shape == (3, 16)
    assert result.c.shape == (3, 16)
    assert result.sequence.dtype == np.float32
    for b in range(3):
        seq, h, c = wide_reference.run(x[b], h0[b], c0[b])
        np.testing.assert_allclose(result.sequence[b], seq, atol=TOL)
        np.testing.assert_allclose(result.h[b], h, atol=TOL)
        np.testing.assert_allclose(result.c[b], c, atol=TOL)


def test_sdk_accepts_nested_lists_and_ragged_batches(
    client: LstmClient, wide_reference, rng
) -> None:
    x = rng.normal(size=(4, 8)).round(3)
    result = client.predict(x.tolist())
    np.testing.assert_allclose(result.sequence, wide_reference.run(x)[0], atol=TOL)
    ragged = [rng.normal(size=(t, 8)) for t in (2, 9)]
    for got, x in zip(client.predict_many(ragged), ragged, strict=True):
        np.testing.assert_allclose(got.sequence, wide_reference.run(x)[0], atol=TOL)


def test_chaining_equals_one_call(client: LstmClient, rng) -> None:
    x = rng.normal(size=(12, 8)).astype(np.float32)
    whole = client.predict(x)
    first = client.predict(x[:5])
    second = client.predict(x[5:], initial_state=first.state)
    np.testing.assert_allclose(
        np.concatenate([first.sequence, second.sequence]), whole.sequence, atol=TOL
    )
    np.testing.assert_allclose(second.h, whole.h, atol=TOL)
    np.testing.assert_allclose(second.c, whole.c, atol=TOL)


@pytest.mark.parametrize("per_message", [1, 3, 64])
def test_stream_equals_predict(stub, per_message: int, rng) -> None:
    lengths = [200, 5, 1]  # longer than a compute chunk, shorter, and one timestep
    xs = [rng.normal(size=(t, 8)).astype(np.float32) for t in lengths]
    request = pb.PredictRequest(
        sequences=[seq_msg(x) for x in xs], timesteps_per_message=per_message
    )
    expected = stub.Predict(request).outputs
    hidden: dict[int, list[tuple[int, list[float]]]] = {i: [] for i in range(len(xs))}
    finals: dict[int, pb.LstmState] = {}
    for message in stub.PredictStream(request):
        i = message.sequence_index
        assert i not in finals, "no message of a sequence may follow its final state"
        assert 1 <= len(message.hidden) <= per_message
        for k, vector in enumerate(message.hidden):
            hidden[i].append((message.start_timestep + k, list(vector.values)))
        if message.HasField("final_state"):
            finals[i] = message.final_state
    assert sorted(finals) == [0, 1, 2]
    for i, x in enumerate(xs):
        assert [t for t, _ in hidden[i]] == list(range(x.shape[0]))
        got = np.array([v for _, v in hidden[i]])
        want = np.array([v.values for v in expected[i].hidden_sequence])
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(finals[i].h.values, expected[i].final_state.h.values, atol=1e-6)
        np.testing.assert_allclose(finals[i].c.values, expected[i].final_state.c.values, atol=1e-6)


def test_sdk_stream_yields_chunks_then_the_final_state(client: LstmClient, rng) -> None:
    x = rng.normal(size=(10, 8)).astype(np.float32)
    items = list(client.stream(x, timesteps_per_message=4))
    chunks = [i for i in items if isinstance(i, StreamChunk)]
    assert [c.start_timestep for c in chunks] == [0, 4, 8]
    assert isinstance(items[-1], FinalState)
    whole = client.predict(x)
    np.testing.assert_allclose(
        np.concatenate([c.hidden for c in chunks]), whole.sequence, atol=1e-6
    )
    np.testing.assert_allclose(items[-1].h, whole.h, atol=1e-6)
    np.testing.assert_allclose(items[-1].c, whole.c, atol=1e-6)


async def test_async_client_predicts_and_streams(aclient, wide_reference, rng) -> None:
    x = rng.normal(size=(6, 8)).astype(np.float32)
    result = await aclient.predict(x)
    np.testing.assert_allclose(result.sequence, wide_reference.run(x)[0], atol=TOL)
    items = [item async for item in aclient.stream(x)]
    assert len(items) == 7
    assert isinstance(items[-1], FinalState)
    np.testing.assert_allclose(items[-1].h, result.h, atol=1e-6)
    meta = await aclient.metadata()
    assert (meta.input_features, meta.units) == (8, 16)


async def test_concurrent_calls_batch_without_bleeding(aclient, wide_reference, rng) -> None:
    """Many calls in flight at once are batched by the scheduler; each still gets its own result."""
    xs = [rng.normal(size=(int(t), 8)).astype(np.float32) for t in rng.integers(1, 40, size=48)]
    states = [(rng.normal(size=16), rng.normal(size=16)) for _ in xs]
    results = await asyncio.gather(
        *(aclient.predict(x, initial_state=s) for x, s in zip(xs, states, strict=True))
    )
    for x, (h0, c0), result in zip(xs, states, results, strict=True):
        seq, _h, c = wide_reference.run(x, h0, c0)
        np.testing.assert_allclose(result.sequence, seq, atol=TOL)
        np.testing.assert_allclose(result.c, c, atol=TOL)


def test_metadata_describes_the_served_model(client: LstmClient) -> None:
    meta = client.metadata()
    assert meta.name == "default-lstm"
    assert meta.version.startswith("sha256:")
    assert (meta.input_features, meta.units, meta.dtype) == (8, 16, "float32")
    assert meta.return_sequences
    assert meta.return_state
    assert (meta.activation, meta.recurrent_activation, meta.use_bias) == ("tanh", "sigmoid", True)
    assert meta.limits["max_timesteps"] == 10_000
    assert meta.limits["max_batch_size"] == 64
