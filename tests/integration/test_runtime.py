"""The numpy fast path against the TensorFlow path, for every activation it supports."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from lstm_server.runtime.keras_model import default_chain, save_chain
from lstm_server.runtime.numpy_lstm import ACTIVATIONS
from lstm_server.runtime.options import RuntimeOptions
from lstm_server.runtime.tf_runtime import load_runtime

from tests.reference import NumpyLstm

PAIRS = sorted({(a, "sigmoid") for a in ACTIVATIONS} | {("tanh", r) for r in ACTIVATIONS})


def _runtime(tmp_path: Path, activation: str, recurrent: str, use_bias: bool = True):
    path = tmp_path / f"{activation}-{recurrent}.keras"
    keras.Sequential(
        [
            keras.Input((None, 8)),
            keras.layers.LSTM(
                16,
                activation=activation,
                recurrent_activation=recurrent,
                use_bias=use_bias,
                bias_initializer="random_uniform",
            ),
        ]
    ).save(path)
    return load_runtime(RuntimeOptions(model=path, features=8, units=16, chunk_timesteps=16))


@pytest.mark.parametrize(("activation", "recurrent"), PAIRS)
def test_numpy_path_equals_tensorflow(tmp_path: Path, activation: str, recurrent: str, rng) -> None:
    runtime = _runtime(tmp_path, activation, recurrent, use_bias=activation != "relu")
    assert runtime.fast is not None
    lengths = np.array([1, 5, 37, 20])
    x = rng.normal(size=(4, 37, 8)).astype(np.float32)
    h0 = rng.normal(size=(4, 16)).astype(np.float32) * 0.5
    c0 = rng.normal(size=(4, 16)).astype(np.float32) * 0.5
    tf_seq, tf_h, tf_c = runtime.run(x, lengths, h0, c0)
    np_seq, np_h, np_c = runtime.fast.run(x, lengths, h0, c0)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(np_seq[i, :n], tf_seq[i, :n], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np_h, tf_h, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np_c, tf_c, atol=1e-5, rtol=1e-5)


def test_other_activations_always_run_on_tensorflow(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, "elu", "sigmoid")
    assert runtime.fast is None
    assert not runtime.runs_inline(1, 1)


def test_calibration_sends_single_steps_to_numpy_and_long_work_to_tensorflow(
    tmp_path: Path,
) -> None:
    runtime = _runtime(tmp_path, "tanh", "sigmoid")
    runtime.calibrate()
    assert runtime.runs_inline(1, 1)
    assert not runtime.runs_inline(64, 10_000)


def test_work_is_brief_once_a_run_of_its_shape_took_under_the_bound(
    tmp_path: Path, rng, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstm_server.runtime import tf_runtime

    runtime = _runtime(tmp_path, "tanh", "sigmoid")
    assert not runtime.runs_briefly(3, 12)  # never run: nothing says how long it takes
    x = rng.normal(size=(3, 12, 8)).astype(np.float32)
    state = np.zeros((3, 16), np.float32)
    runtime.run(x, np.array([12, 12, 12]), state, state)
    monkeypatch.setattr(tf_runtime, "BRIEF_SECONDS", 60.0)
    assert runtime.runs_briefly(3, 12)
    assert runtime.runs_briefly(4, 12)  # the same bucket of rows
    assert not runtime.runs_briefly(3, 11)
    monkeypatch.setattr(tf_runtime, "BRIEF_SECONDS", 0.0)
    assert not runtime.runs_briefly(3, 12)


def test_rows_of_one_length_run_unmasked_at_it_once_compiled_and_equal_the_reference(
    tmp_path: Path, rng
) -> None:
    runtime = _runtime(tmp_path, "tanh", "sigmoid")
    reference = NumpyLstm.from_saved_model(tmp_path / "tanh-sigmoid.keras")
    x = rng.normal(size=(3, 13, 8)).astype(np.float32)  # 13 timesteps: the bucket is 16
    h0, c0 = (rng.normal(size=(3, 16)).astype(np.float32) for _ in range(2))

    def check(rows: int) -> None:
        seq, h, c = runtime.run(x[:rows], np.full(rows, 13), h0[:rows], c0[:rows])
        for i in range(rows):
            want_seq, want_h, want_c = reference.run(x[i], h0[i], c0[i])
            np.testing.assert_allclose(seq[i], want_seq, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(h[i], want_h, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(c[i], want_c, atol=1e-5, rtol=1e-5)

    check(1)  # the bucket serves; (1, 13) compiles meanwhile
    check(3)  # three rows: padded to four, (4, 13)
    assert runtime.wait_compiled(ahead=True, timeout=120)
    # Among the architecture's shapes, which the runtimes of it the tests before this one made
    # compile too (they share their compiled programs).
    assert {(1, 13), (4, 13)} <= runtime.compiled_shapes()[1]
    check(1)  # now on the exact shapes
    check(3)
    lengths = np.array([13, 5, 9])  # different lengths keep to the masked buckets
    seq, h, c = runtime.run(x, lengths, h0, c0)
    for i, n in enumerate(lengths):
        want_seq, want_h, want_c = reference.run(x[i, :n], h0[i], c0[i])
        np.testing.assert_allclose(seq[i, :n], want_seq, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(h[i], want_h, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(c[i], want_c, atol=1e-5, rtol=1e-5)
    runtime.close()


def test_warm_up_compiles_one_row_first_and_every_batch_bucket_in_the_background(rng) -> None:
    # 64 units, chunks of 16 timesteps, up to 64 rows: the largest batches cost numpy several
    # TensorFlow calls, however busy the machine is while calibration measures them.
    runtime = load_runtime(RuntimeOptions(features=8, units=64, chunk_timesteps=16))
    runtime.warm_up()
    wanted = {
        (rows, span)
        for rows in (1, 2, 4, 8, 16, 32, 64)
        for span in (1, 2, 4, 8, 16)
        if not runtime.runs_inline(rows, span)
    }
    one_row = {shape for shape in wanted if shape[0] == 1} | {(1, 1)}  # (1, 1): calibration's
    assert one_row <= runtime.compiled_shapes()[0]  # compiled before serving
    assert any(rows > 1 for rows, _ in wanted)
    assert runtime.wait_compiled(ahead=True, timeout=300)
    # Every batch bucket TensorFlow runs (runtimes of the same layers made elsewhere in this
    # process share the set: it may hold theirs too).
    assert wanted | {(1, 1)} <= runtime.compiled_shapes()[0]
    x = rng.normal(size=(8, 16, 8)).astype(np.float32)
    h0 = np.zeros((8, 64), np.float32)
    lengths = np.full(8, 16)
    batched = runtime.run(x, lengths, h0, h0)
    one_by_one = [runtime.fast.run(x[i : i + 1], lengths[:1], h0[:1], h0[:1]) for i in range(8)]
    for i, (seq, h, c) in enumerate(one_by_one):
        np.testing.assert_allclose(batched[0][i], seq[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(batched[1][i], h[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(batched[2][i], c[0], atol=1e-5, rtol=1e-5)
    runtime.close()


def test_versions_of_one_architecture_share_their_compiled_programs(tmp_path: Path, rng) -> None:
    """A second version of the same layers compiles nothing: its weights are passed to the
    programs the first one compiled; each version still computes with its own weights."""
    paths = [tmp_path / f"v{seed}.keras" for seed in (31, 32)]
    for seed, path in zip((31, 32), paths, strict=True):
        save_chain(default_chain(5, 7, seed=seed), path)
    first = load_runtime(RuntimeOptions(model=paths[0]))
    first.warm_up()
    assert first.wait_compiled(ahead=True, timeout=300)
    second = load_runtime(RuntimeOptions(model=paths[1]))
    second.warm_up()
    assert second.compiled_shapes() == first.compiled_shapes()  # found compiled, not compiled
    x = rng.normal(size=(2, 20, 5)).astype(np.float32)
    zeros = np.zeros((2, 7), np.float32)
    for runtime, path in zip((first, second), paths, strict=True):
        seq, h, _ = runtime.run(x, np.full(2, 20), zeros, zeros)
        want_seq, want_h, _ = NumpyLstm.from_saved_model(path).run(x[1])
        np.testing.assert_allclose(seq[1], want_seq, atol=1e-5)
        np.testing.assert_allclose(h[1], want_h, atol=1e-5)
    first.close()
    second.close()
