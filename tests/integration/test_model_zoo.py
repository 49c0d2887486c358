"""The models people train (stacks, heads, embeddings, masks, the seq2seq decoder), served and
checked against the original saved Keras model called in-process, and the models that must be
refused at start-up, each with its exit code and message.

Numbers from the server equal Keras' within 1e-5: per row of a batch of different lengths, over
Predict, PredictStream, Step and StreamSession; and a sequence run in pieces, each piece starting
from the state the last one returned, equals one call over the whole sequence.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
from lstm_client import LayerState, LstmClient, LstmError

from tests import zoo
from tests.servers import ThreadedServer, server_command, settings

ATOL = 1e-5
T = 9  # timesteps of the test sequences


class Served:
    """One zoo model: the original as Keras loads it, and a server serving the same file."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.model = keras.saving.load_model(path, compile=False)
        # Small compute and stream chunks, so long sequences are carried over chunk boundaries.
        self.server = ThreadedServer(
            settings(model=path, compute_chunk_timesteps=4, stream_chunk_timesteps=3)
        )
        self.client = LstmClient(self.server.target)
        self.meta = self.client.metadata()
        self.tokens = self.meta.vocabulary_size > 0

    def inputs(self, rng: np.random.Generator, steps: int = T) -> np.ndarray:
        """A random sequence; masked models get masked timesteps (never the first)."""
        if self.tokens:
            x = rng.integers(1, zoo.V, steps)
            if self.name.startswith("masked"):
                x[2::3] = 0
            return x
        x = rng.normal(size=(steps, zoo.F)).astype(np.float32)
        if self.name.startswith("masked"):
            x[2::3] = 0.0
        return x

    def keras_outputs(
        self, x: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """The original model's outputs for one sequence (the decoder also takes h, c)."""
        if len(self.model.inputs) == 3:
            units = self.meta.units
            h, c = state if state is not None else (np.zeros(units), np.zeros(units))
            args = [x[None], np.asarray(h, np.float32)[None], np.asarray(c, np.float32)[None]]
            return [np.asarray(o)[0] for o in self.model(args, training=False)]
        return [np.asarray(self.model(x[None], training=False))[0]]

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="module", params=sorted(zoo.SERVED))
def served(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Served]:
    path = zoo.save(request.param, tmp_path_factory.mktemp("zoo"), seed=3)
    served = Served(request.param, path)
    yield served
    served.close()


def _assert_keras_outputs(served: Served, outputs: np.ndarray, x: np.ndarray) -> None:
    expected = served.keras_outputs(x)[0]
    if expected.ndim == 1:  # the top LSTM returns its last timestep alone (a classifier)
        outputs, expected = outputs[-1], expected
    np.testing.assert_allclose(outputs, expected, atol=ATOL)


def _assert_states(got: tuple[LayerState, ...], expected: tuple[LayerState, ...]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine.h, theirs.h, atol=ATOL)
        np.testing.assert_allclose(mine.c, theirs.c, atol=ATOL)


def test_metadata_describes_the_chain(served: Served) -> None:
    meta = served.meta
    lstms = [layer for layer in served.model.layers if isinstance(layer, keras.layers.LSTM)]
    assert meta.lstm_layers == len(lstms)
    assert [layer["units"] for layer in meta.layers if layer["lstm"]] == [u.units for u in lstms]
    assert meta.units == lstms[-1].units
    assert meta.vocabulary_size == (zoo.V if served.tokens else 0)
    assert meta.input_features == (0 if served.tokens else zoo.F)
    assert meta.has_output_layers == (meta.layers[-1]["type"] != "LSTM")
    assert meta.output_size == meta.layers[-1]["units"]


def test_predict_rows_of_different_lengths_equal_keras(served: Served, rng) -> None:
    rows = [served.inputs(rng, steps) for steps in (T, 5, 1)]
    results = served.client.predict_many(rows)
    for x, result in zip(rows, results, strict=True):
        assert result.outputs is not None
        assert result.outputs.shape == (len(x), served.meta.output_size)
        _assert_keras_outputs(served, result.outputs, x)
        assert len(result.states) == served.meta.lstm_layers
        np.testing.assert_allclose(result.h, result.states[-1].h)


def test_every_layer_hidden_and_the_top_hidden_on_request(served: Served, rng) -> None:
    x = served.inputs(rng)
    both = served.client.predict(x, include=["outputs", "hidden", "layer_hidden"])
    plain = served.client.predict(x)
    assert both.sequence is not None
    assert both.outputs is not None
    np.testing.assert_allclose(both.outputs, plain.outputs, atol=ATOL)
    assert len(both.layer_sequences) == served.meta.lstm_layers
    np.testing.assert_allclose(both.layer_sequences[-1], both.sequence)
    for hidden, state in zip(both.layer_sequences, both.states, strict=True):
        np.testing.assert_allclose(hidden[-1], state.h, atol=ATOL)
    np.testing.assert_allclose(both.sequence[-1], both.h, atol=ATOL)
    if served.meta.has_output_layers:
        assert plain.sequence is None  # not asked for
    else:
        np.testing.assert_allclose(plain.sequence, plain.outputs)


def test_chaining_over_any_split_equals_one_call(served: Served, rng) -> None:
    x = served.inputs(rng)
    whole = served.client.predict(x)
    firsts, seconds, states = [], [], []
    for split in range(1, T):
        first = served.client.predict(x[:split])
        second = served.client.predict(x[split:], initial_state=first.state)
        chained = np.concatenate([first.outputs, second.outputs])
        np.testing.assert_allclose(chained, whole.outputs, atol=ATOL)
        _assert_states(second.states, whole.states)
        firsts.append(first)
        seconds.append(second)
        states.append(first.states)
    # The same second halves in one batch: rows of different lengths, each with its own state.
    batched = served.client.predict_many([x[s:] for s in range(1, T)], initial_states=states)
    for one, alone in zip(batched, seconds, strict=True):
        np.testing.assert_allclose(one.outputs, alone.outputs, atol=ATOL)
        _assert_states(one.states, alone.states)


def test_stream_equals_predict(served: Served, rng) -> None:
    x = served.inputs(rng)
    whole = served.client.predict(x)
    chunks, finals = [], []
    for item in served.client.stream(x, timesteps_per_message=2):
        if hasattr(item, "outputs"):
            chunks.append(item.outputs)
        else:
            finals.append(item)
    np.testing.assert_allclose(np.concatenate(chunks), whole.outputs, atol=ATOL)
    (final,) = finals
    _assert_states(final.states, whole.states)


def test_sessions_one_timestep_at_a_time_and_in_uneven_chunks(served: Served, rng) -> None:
    x = served.inputs(rng)
    whole = served.client.predict(x)
    with served.client.session() as session:
        stepped = [session.step(x[t : t + 1]).outputs for t in range(T)]
        _assert_states(session.refresh().states, whole.states)
    np.testing.assert_allclose(np.concatenate(stepped), whole.outputs, atol=ATOL)
    bounds = [0, 2, 3, 7, T]
    pieces = [x[a:b] for a, b in itertools.pairwise(bounds)]
    results = list(served.client.stream_session(pieces))
    np.testing.assert_allclose(
        np.concatenate([r.outputs for r in results]), whole.outputs, atol=ATOL
    )
    _assert_states(results[-1].states, whole.states)


def test_a_session_state_exports_and_imports_every_layer(served: Served, rng) -> None:
    x = served.inputs(rng)
    whole = served.client.predict(x)
    first = served.client.predict(x[:4])
    with served.client.session(initial_state=first.state) as imported:
        tail = imported.step(x[4:])
        np.testing.assert_allclose(tail.outputs, whole.outputs[4:], atol=ATOL)
        exported = imported.refresh().states
    _assert_states(exported, whole.states)
    with served.client.session() as session:
        session.reset(list(first.states))
        np.testing.assert_allclose(session.step(x[4:]).outputs, whole.outputs[4:], atol=ATOL)


def test_tensorflow_and_numpy_paths_equal_keras(served: Served, rng) -> None:
    runtime = served.server.server.models.loaded()[0].scheduler.runtime
    info = runtime.info
    rows = [served.inputs(rng, steps) for steps in (T, 6, 2)]
    lengths = np.array([len(r) for r in rows])
    width = 1 if served.tokens else zoo.F
    x = np.zeros((3, T, width), np.float32)
    for i, row in enumerate(rows):
        x[i, : len(row)] = np.asarray(row, np.float32).reshape(len(row), width)
    h0 = np.zeros((3, info.state_size), np.float32)
    tf_results, tf_h, tf_c = runtime.run(x, lengths, h0, h0)
    assert runtime.fast is not None, "every zoo layer has a numpy form"
    np_results, np_h, np_c = runtime.fast.run(x, lengths, h0, h0)
    np.testing.assert_allclose(np_h, tf_h, atol=ATOL)
    np.testing.assert_allclose(np_c, tf_c, atol=ATOL)
    out = info.output_columns()
    for i, row in enumerate(rows):
        for results in (tf_results, np_results):
            _assert_keras_outputs(served, results[i, : len(row), out], row)


def test_the_decoder_takes_its_initial_state_as_keras_does(tmp_path: Path, rng) -> None:
    served = Served("decoder", zoo.save("decoder", tmp_path, seed=5))
    try:
        x = served.inputs(rng)
        h0, c0 = rng.normal(size=(2, served.meta.units)).astype(np.float32)
        result = served.client.predict(x, initial_state=(h0, c0))
        outputs, h, c = served.keras_outputs(x, (h0, c0))
        np.testing.assert_allclose(result.outputs, outputs, atol=ATOL)
        np.testing.assert_allclose(result.h, h, atol=ATOL)
        np.testing.assert_allclose(result.c, c, atol=ATOL)
    finally:
        served.close()


# Bad input: a clear INVALID_ARGUMENT naming the field, and the server keeps serving.


def _refused(call) -> LstmError:  # type: ignore[no-untyped-def]
    with pytest.raises(LstmError) as caught:
        call()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


def _fields(error: LstmError) -> dict[str, str]:
    return {v.field: v.description for v in error.violations}


def test_bad_token_and_state_input_is_refused_by_field(tmp_path: Path) -> None:
    tokens = Served("token_model", zoo.save("token_model", tmp_path))
    stack = Served("two_layer_stack", zoo.save("two_layer_stack", tmp_path))
    try:
        error = _refused(lambda: tokens.client.predict(np.array([1, 2, zoo.V, -1])))
        assert _fields(error) == {
            "sequences[0].tokens[2]": f"is {zoo.V}, outside the vocabulary [0, {zoo.V})",
            "sequences[0].tokens[3]": f"is -1, outside the vocabulary [0, {zoo.V})",
        }
        error = _refused(lambda: tokens.client.predict(np.ones((3, 1), np.float32)))
        assert "sequences[0].timesteps" in _fields(error)
        error = _refused(lambda: stack.client.predict(np.array([1, 2, 3])))
        assert "sequences[0].tokens" in _fields(error)
        x = np.ones((3, zoo.F), np.float32)
        error = _refused(lambda: stack.client.predict(x, initial_state=(np.zeros(3), np.zeros(3))))
        assert (
            "holds one layer's state; this model has 2 LSTM layers"
            in (_fields(error)["initial_states[0]"])
        )
        one_layer = [LayerState(np.zeros(5), np.zeros(5))]
        error = _refused(lambda: stack.client.predict(x, initial_state=one_layer))
        assert "expected one per LSTM layer (2)" in _fields(error)["initial_layer_states[0].layers"]
        wrong = [LayerState(np.zeros(5), np.zeros(5)), LayerState(np.zeros(4), np.zeros(3))]
        error = _refused(lambda: stack.client.session(initial_state=wrong))
        assert _fields(error) == {
            "initial_layer_states.layers[1].h.values": "has 4 values, expected units=3"
        }
        with stack.client.session() as session:
            _refused(lambda: session.reset([LayerState(np.zeros(5), np.zeros(5))]))
            good = stack.client.predict(x)
            np.testing.assert_allclose(session.step(x).outputs, good.outputs, atol=ATOL)
        assert tokens.client.predict(np.array([1, 2])).outputs.shape == (2, zoo.V)
    finally:
        tokens.close()
        stack.close()


@pytest.mark.parametrize("name", sorted(zoo.REFUSED))
def test_refused_models_exit_2_naming_the_layer_and_why(tmp_path: Path, name: str) -> None:
    path = zoo.save_refused(name, tmp_path)
    done = subprocess.run(
        server_command("--port", "0", "--model", str(path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert zoo.REFUSED[name][1] in done.stderr
    assert "Traceback" not in done.stderr
