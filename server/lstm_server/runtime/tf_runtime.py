"""The compiled, stateless function of the served chain and the shape buckets it runs on."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lstm_server.core.repository import ModelSource
from lstm_server.core.types import Array, ModelInfo
from lstm_server.runtime.chain import Chain, load_chain
from lstm_server.runtime.compile_cache import CompileCache
from lstm_server.runtime.compiler import Compiled, Compiler, Priority, Shape
from lstm_server.runtime.keras_model import (
    chain_info,
    default_chain,
    is_bare,
    numpy_chain,
    save_chain,
    served_lstms,
)
from lstm_server.runtime.numpy_chain import NumpyChain
from lstm_server.runtime.options import RuntimeOptions
from lstm_server.runtime.portable import PortableFunction, canonical_library

log = logging.getLogger(__name__)

if "matplotlib" in sys.modules and sys.modules["matplotlib"] is None:
    del sys.modules["matplotlib"]  # Keras is in without it (runtime/__init__.py)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def chain_function(
    chain: Chain, info: ModelInfo, lstms: list[keras.layers.LSTM] | None = None
) -> Callable[..., list[tf.Tensor]]:
    """``(x, mask, h0, c0) -> (results, h, c)``: the chain at inference, stateless.

    States are every LSTM's, one after the other; results are every LSTM's hidden output, then
    the output layers' values (a bare LSTM's results are its hidden output alone). A timestep
    that ``mask`` or the model's own masking (``Masking``, ``Embedding(mask_zero=True)``) leaves
    out keeps each LSTM's state and outputs its current h, as Keras does within one call, so
    that a sequence run in pieces gives what one call gives.
    """
    lstms = served_lstms(chain) if lstms is None else lstms
    parts = info.layer_slices()
    masks_content = chain.masks_content

    def run(x: tf.Tensor, mask: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor) -> list[tf.Tensor]:
        y = tf.cast(x[..., 0], tf.int32) if chain.vocabulary_size else x
        hidden: list[tf.Tensor] = []
        hs: list[tf.Tensor] = []
        cs: list[tf.Tensor] = []
        for layer in chain.layers:
            if isinstance(layer, keras.layers.LSTM):
                k = len(hidden)
                h_in, c_in = h0[:, parts[k]], c0[:, parts[k]]
                y, h, c = lstms[k](y, initial_state=[h_in, c_in], mask=mask, training=False)
                if masks_content:  # Keras outputs zeros before a call's first counted timestep
                    seen = tf.cumsum(tf.cast(mask, tf.int32), axis=1)[..., None] > 0
                    y = tf.where(seen, y, h_in[:, None, :])
                hidden.append(y)
                hs.append(h)
                cs.append(c)
                continue
            if isinstance(layer, keras.layers.Masking):
                mask = mask & tf.reduce_any(tf.not_equal(y, layer.mask_value), axis=-1)
            elif isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
                mask = mask & tf.not_equal(y, 0)
            if isinstance(layer, keras.layers.TimeDistributed):
                layer = layer.layer  # per-timestep already: its reshaping needs static shapes
            y = layer(y, training=False)
        if is_bare(chain):
            return [hidden[0], hs[0], cs[0]]
        results = [*hidden, y] if info.has_output_layers else hidden
        return [tf.concat(results, -1), tf.concat(hs, -1), tf.concat(cs, -1)]

    return run


ConcreteFunction = Callable[..., list[tf.Tensor]]


def _variables(chain: Chain, lstms: list[keras.layers.LSTM]) -> list[Any]:
    """Every Keras variable the chain's function reads, in an order that is the same for every
    chain of the same architecture."""
    seen: set[int] = set()
    found = []
    for layer in [*lstms, *chain.layers]:
        for variable in layer.weights:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
    return found


def _without_names(value: Any) -> Any:
    """A layer's configuration without what does not change what it computes (its name, how
    its weights were initialized, regularized or constrained)."""
    if isinstance(value, dict):
        return {
            k: _without_names(v)
            for k, v in value.items()
            if k != "name" and not k.endswith(("_initializer", "_regularizer", "_constraint"))
        }
    if isinstance(value, list | tuple):
        return [_without_names(v) for v in value]
    return value


def _architecture(chain: Chain, info: ModelInfo, xla: bool) -> str:
    """What the chain's function depends on but its weights: chains with the same architecture
    run the same compiled programs, their weights passed in."""
    layers = [
        [
            type(layer).__name__,
            _without_names(layer.get_config()),
            [(tuple(w.shape), str(w.dtype)) for w in layer.weights],
        ]
        for layer in chain.layers
    ]
    described = _without_names(dataclasses.asdict(info) | {"version": "", "version_number": 0})
    text = json.dumps(
        [layers, described, xla, chain.masks_content, chain.vocabulary_size],
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class _Programs:
    """The functions of one architecture, their weights as the first argument: ``graph`` (any
    shape, not compiled), ``xla`` (masked buckets) and ``exact`` (unmasked shapes), and the
    shapes each compiled one has been compiled for, by any version."""

    graph: ConcreteFunction
    xla: ConcreteFunction | None
    exact: ConcreteFunction | None
    buckets: set[Shape] = field(default_factory=set)
    exact_shapes: set[Shape] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)  # portable functions' names, by kind


# The programs of each architecture served since start, shared by its versions. TensorFlow
# keeps every program XLA compiles for as long as the process lives, whether or not its function
# is still referenced: versions that share their functions share their compiled programs, so
# that loading a new version of a served architecture compiles nothing and unloading one leaves
# nothing behind (the first version of each architecture stays as the template).
_PROGRAMS: dict[str, _Programs] = {}
_PROGRAMS_LOCK = threading.Lock()
# Work whose one TensorFlow call last took under this may run on the event loop when the
# server serves nothing else (BatchScheduler's ``lone``): it holds up no other call meanwhile.
BRIEF_SECONDS = 0.003


def _make_programs(
    chain: Chain, info: ModelInfo, lstms: list[keras.layers.LSTM], xla: bool
) -> _Programs:
    function = chain_function(chain, info, lstms)
    variables = _variables(chain, lstms)
    weights = [tf.TensorSpec(v.shape, v.dtype) for v in variables]

    def stateless(run: Callable[..., list[tf.Tensor]]) -> Callable[..., list[tf.Tensor]]:
        def with_weights(values: list[tf.Tensor], *args: tf.Tensor) -> list[tf.Tensor]:
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return run(*args)

        return with_weights

    x = tf.TensorSpec([None, None, info.input_width], tf.float32)
    mask = tf.TensorSpec([None, None], tf.bool)
    state = tf.TensorSpec([None, info.state_size], tf.float32)
    signature = [weights, x, mask, state, state]
    # Calling a tf.function with numpy arrays binds and converts its arguments on every call,
    # which took longer than the XLA kernel itself (1.1 ms against 0.5 ms for one row of 100
    # timesteps of 128 units, in-process): they are called as concrete functions on tensors.
    graph = tf.function(stateless(function), input_signature=signature).get_concrete_function()
    compiled = exact = None
    if xla:
        compiled = tf.function(
            stateless(function), input_signature=signature, jit_compile=True
        ).get_concrete_function()
    if xla and not chain.masks_content:  # unmasked, exact shapes
        exact = tf.function(
            stateless(lambda x, h0, c0: function(x, None, h0, c0)),
            input_signature=[weights, x, state, state],
            jit_compile=True,
        ).get_concrete_function()
    return _Programs(graph, compiled, exact)


def _bound(portable: PortableFunction) -> ConcreteFunction:
    """``portable`` called as the traced function is: weights as its first argument, a list."""

    def call(weights: list[tf.Tensor], *tensors: tf.Tensor) -> list[tf.Tensor]:
        return list(portable(*weights, *tensors))

    return call


def _programs(
    chain: Chain, info: ModelInfo, lstms: list[keras.layers.LSTM], xla: bool
) -> _Programs:
    """The programs of the chain's architecture: made once, from the first chain of it."""
    key = _architecture(chain, info, xla)
    with _PROGRAMS_LOCK:
        found = _PROGRAMS.get(key)
        if found is None:
            found = _make_programs(chain, info, lstms, xla)
            functions = [f for f in (found.graph, found.xla, found.exact) if f is not None]
            if any(getattr(f, "captured_inputs", ()) for f in functions):
                # A layer read a variable outside the weights passed in: this chain's own.
                log.info("the model's function keeps its weights: not shared across versions")
                return found
            # Compiled by their content's name: the compile cache finds what other processes,
            # and this one's earlier starts, compiled for them (runtime/portable.py).
            names = {}
            if found.xla is not None:
                masked = PortableFunction(canonical_library(found.xla, "masked"))
                found = replace(found, xla=_bound(masked))
                names["masked"] = masked.name
            if found.exact is not None:
                exact = PortableFunction(canonical_library(found.exact, "exact"))
                found = replace(found, exact=_bound(exact))
                names["exact"] = exact.name
            found = replace(found, names=names)
            _PROGRAMS[key] = found
        return found


def _called(function: ConcreteFunction, *arrays: Array) -> list[Array]:
    """``function`` on tensors made of ``arrays``, its results as arrays."""
    return [result.numpy() for result in function(*(tf.constant(a) for a in arrays))]


class TfLstmRuntime:
    """Runs ``(x, lengths, h0, c0) -> (results, h, c)`` through one compiled function.

    Long sequences run in chunks of at most ``chunk_timesteps`` with the state carried over, and
    rows that have finished drop out of later chunks. Batch and time are padded to powers of two
    (masked, so padding never reaches a result) so that XLA compiles a small, bounded set of shapes.
    Rows that all have the same length need no mask: they run on an unmasked function compiled
    for that exact length (rows still padded to a power of two), up to ``max_exact_shapes`` of
    them, each compiled in the background, at the lowest CPU priority, the first time it is met
    (the masked bucket serves meanwhile). Rows of different lengths keep to the masked buckets.

    Work small enough that TensorFlow's fixed cost per call would dominate runs on the exact
    numpy path instead: numpy's cost per timestep (fixed plus per row) and TensorFlow's cost per
    call are measured at warm-up, and work goes to numpy when numpy is the cheaper.
    """

    def __init__(
        self,
        chain: Chain,
        info: ModelInfo,
        *,
        chunk_timesteps: int = 128,
        max_rows: int = 64,
        xla: bool = True,
        fast: NumpyChain | None = None,
        max_exact_shapes: int = 64,
    ) -> None:
        self.info = info
        self.fast = fast
        # Seconds, set by calibrate(): numpy per timestep (fixed, per row), TensorFlow per call.
        self._numpy_step = self._numpy_row_step = float("inf")
        self._tensorflow_call = 0.0
        self._took: dict[Shape, float] = {}  # seconds the last one-call run of a shape took
        self.chunk_timesteps = _next_power_of_two(chunk_timesteps)
        self.max_rows = _next_power_of_two(max_rows)
        lstms = served_lstms(chain)
        programs = _programs(chain, info, lstms, xla)
        weights = [tf.constant(np.asarray(v)) for v in _variables(chain, lstms)]

        # Shapes not compiled yet run on the plain graph function, which takes any shape, while
        # the compiler's thread compiles them (runtime/compiler.py).
        self._graph: ConcreteFunction = partial(programs.graph, weights)
        self._last_call = time.monotonic()
        self._compiler = Compiler(idle=self._idle_seconds)
        self.compilations = 0  # shapes this runtime compiled, and how many the cache held
        self.from_cache = 0
        self._xla: ConcreteFunction | None = None
        self._buckets: Compiled | None = None
        self._names = programs.names
        if programs.xla is not None:
            self._xla = partial(programs.xla, weights)
            self._buckets = Compiled(
                self._compiler,
                self._compile,
                ready=programs.buckets,
                met=partial(_record_met, programs.names.get("masked")),
            )
        # Unmasked, exact shapes (XLA only; not for models that mask their own content).
        self._exact: ConcreteFunction | None = None
        self._exact_shapes: Compiled | None = None
        if programs.exact is not None:
            self._exact = partial(programs.exact, weights)
            self._exact_shapes = Compiled(
                self._compiler,
                self._compile_exact,
                max_exact_shapes,
                ready=programs.exact_shapes,
                met=partial(_record_met, programs.names.get("exact")),
            )

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        """Whether this work takes the numpy path: cheaper than one TensorFlow call, and no
        TensorFlow, so it may run on the event loop."""
        numpy_cost = timesteps * (self._numpy_step + self._numpy_row_step * rows)
        return self.fast is not None and numpy_cost < self._tensorflow_call

    def run_inline(
        self, x: Array, lengths: Array, h0: Array, c0: Array
    ) -> tuple[Array, Array, Array]:
        """The exact numpy path, for work ``runs_inline`` accepted."""
        assert self.fast is not None, "run_inline is only for work runs_inline accepted"
        self._last_call = time.monotonic()
        return self.fast.run(x, lengths, h0, c0)

    def runs_briefly(self, rows: int, timesteps: int) -> bool:
        """Whether the last one-call run of this shape took under ``BRIEF_SECONDS`` (a shape
        that needed compiling did not; once compiled, its next run tells)."""
        took = self._took.get((_next_power_of_two(rows), timesteps))
        return took is not None and took < BRIEF_SECONDS

    def run(self, x: Array, lengths: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        """Run B right-padded sequences x (B, T, input_width) of the given lengths from states
        (B, state_size) through TensorFlow, for any size of work."""
        self._last_call = began = time.monotonic()
        rows, steps = x.shape[0], x.shape[1]
        if rows <= self.max_rows and steps <= self.chunk_timesteps and lengths.max() == steps:
            result = self._call(x, lengths, h0, c0)  # one call: nothing to split or carry
            self._took[(_next_power_of_two(rows), steps)] = time.monotonic() - began
            return result
        sequence = np.zeros((rows, steps, self.info.timestep_width), np.float32)
        h = np.array(h0, np.float32, copy=True)
        c = np.array(c0, np.float32, copy=True)
        for start in range(0, steps, self.chunk_timesteps):
            active = np.flatnonzero(lengths > start)
            if active.size == 0:
                break
            for group in np.array_split(active, -(-active.size // self.max_rows)):
                remaining = lengths[group] - start
                span = int(min(self.chunk_timesteps, remaining.max()))
                s, hg, cg = self._call(
                    x[group, start : start + span], np.minimum(remaining, span), h[group], c[group]
                )
                sequence[group, start : start + span] = s
                h[group], c[group] = hg, cg
        return sequence, h, c

    def _call(
        self, x: Array, lengths: Array, h0: Array, c0: Array, *, exact: bool = True
    ) -> tuple[Array, Array, Array]:
        rows, span, features = x.shape
        x, h0, c0 = (np.asarray(a, np.float32) for a in (x, h0, c0))  # the functions' dtypes
        padded_rows = _next_power_of_two(rows)
        hp, cp = h0, c0
        if padded_rows > rows:
            hp = np.zeros((padded_rows, self.info.state_size), np.float32)
            cp = np.zeros_like(hp)
            hp[:rows], cp[:rows] = h0, c0
        if exact and (lengths == span).all() and self._exact_ready((padded_rows, span)):
            assert self._exact is not None
            xp = x
            if padded_rows > rows:  # rows of zeros: unmasked, each row is computed on its own
                xp = np.zeros((padded_rows, span, features), np.float32)
                xp[:rows] = x
            s, h, c = _called(self._exact, xp, hp, cp)
            return s[:rows], h[:rows], c[:rows]
        padded_span = _next_power_of_two(span)
        function = self._function_for((padded_rows, padded_span))
        if function is self._graph and (piece := self._compiled_rows(padded_rows, padded_span)):
            # Not compiled for this many rows yet: in pieces of rows that are, not uncompiled.
            parts = [
                self._call(
                    x[i : i + piece],
                    lengths[i : i + piece],
                    h0[i : i + piece],
                    c0[i : i + piece],
                    exact=False,
                )
                for i in range(0, rows, piece)
            ]
            return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]
        xp = np.zeros((padded_rows, padded_span, features), np.float32)
        xp[:rows, :span] = x
        mask = np.arange(padded_span)[None, :] < np.pad(lengths, (0, padded_rows - rows))[:, None]
        s, h, c = _called(function, xp, mask, hp, cp)
        return s[:rows, :span], h[:rows], c[:rows]

    def _compiled_rows(self, rows: int, span: int) -> int:
        """The most rows fewer than ``rows`` the masked function is compiled for at ``span``
        (0: none)."""
        if self._buckets is None:
            return 0
        fewer = rows // 2
        while fewer and not self._buckets.has((fewer, span)):
            fewer //= 2
        return fewer

    def _idle_seconds(self) -> float:
        """Seconds since the last call ran (the background compiles when it is idle)."""
        return time.monotonic() - self._last_call

    def _function_for(self, shape: Shape) -> ConcreteFunction:
        if self._xla is None or self._buckets is None:
            return self._graph
        return self._xla if self._buckets.ready(shape) else self._graph

    def _exact_ready(self, shape: Shape) -> bool:
        """Whether the unmasked function is compiled for ``shape``. If not, it is compiled in
        the background (up to ``max_exact_shapes`` of them) at the next idle moment, or after a
        few seconds of traffic without one: the masked bucket, compiled already, serves
        meanwhile, so a new server under load does not share its cores with compilations that
        only make it faster."""
        return self._exact_shapes is not None and self._exact_shapes.ready(
            shape, priority=Priority.SOON
        )

    def _compile_exact(self, shape: Shape) -> None:
        exact = self._exact
        assert exact is not None
        rows, span = shape
        state = np.zeros((rows, self.info.state_size), np.float32)
        x = np.zeros((rows, span, self.info.input_width), np.float32)
        self._count(_compiled_into_cache(lambda: _called(exact, x, state, state)))

    def _compile(self, shape: Shape) -> None:
        masked = self._xla
        assert masked is not None
        rows, span = shape
        state = np.zeros((rows, self.info.state_size), np.float32)
        x = np.zeros((rows, span, self.info.input_width), np.float32)
        mask = np.ones((rows, span), bool)
        self._count(_compiled_into_cache(lambda: _called(masked, x, mask, state, state)))

    def _count(self, from_cache: bool) -> None:
        self.compilations += 1
        self.from_cache += from_cache

    def close(self) -> None:
        """Stop the background compiler; a compilation under way finishes first."""
        self._compiler.close()

    def compiled_shapes(self) -> tuple[frozenset[Shape], frozenset[Shape]]:
        """The masked buckets and the exact shapes compiled so far."""
        buckets = frozenset() if self._buckets is None else self._buckets.shapes
        exact = frozenset() if self._exact_shapes is None else self._exact_shapes.shapes
        return buckets, exact

    def wait_compiled(self, *, ahead: bool = False, timeout: float = 300.0) -> bool:
        """Wait for the compilations calls asked for so far (and, if ``ahead``, those queued
        ahead of traffic too)."""
        return self._compiler.drain(Priority.AHEAD if ahead else Priority.NOW, timeout)

    def _tensorflow_shapes(self) -> list[Shape]:
        """Every bucket TensorFlow may run (those the numpy path does not take), the shapes of
        one row first, then by rows, longest spans first."""
        spans = [1 << i for i in range(self.chunk_timesteps.bit_length())]
        rows = [1 << i for i in range(self.max_rows.bit_length())]
        return [
            (r, s)
            for r in rows
            for s in reversed(spans)
            if self.fast is None or not self.runs_inline(r, s)
        ]

    def warm_up(self) -> float:
        """Compile what a call may meet first, then queue the rest to compile in the background.

        Before serving: the one-step bucket (which calibration measures), every bucket of one
        row that TensorFlow runs rather than numpy, then the shapes calls met on earlier
        servers (kept with the compile cache), until ``WARM_START_SECONDS`` after warm-up
        began. In the background, when the server is idle:
        every batch bucket TensorFlow runs, so that a new server is soon as fast as a warm one
        on batched traffic too (a call that meets a shape first still moves it ahead)."""
        began = time.perf_counter()
        state = np.zeros((1, self.info.state_size), np.float32)
        x = np.zeros((1, 1, self.info.input_width), np.float32)
        _called(self._graph, x, np.ones((1, 1), bool), state, state)  # the fallback, once
        if self._buckets is None:
            self.calibrate()
            return time.perf_counter() - began
        self._buckets.compile_now((1, 1))
        self.calibrate()
        shapes = self._tensorflow_shapes()
        now = [shape for shape in shapes if shape[0] == 1]
        for shape in now:
            self._buckets.compile_now(shape)
        met = self._compile_met(began + WARM_START_SECONDS)
        for shape in shapes:
            self._buckets.ready(shape, priority=Priority.AHEAD)
        elapsed = time.perf_counter() - began
        ahead = len(shapes) - len(now)
        log.info(
            "compiled %d shapes in %.2f s (%d found in the compile cache, %d that calls met "
            "before); %d more ahead of traffic, when the server is idle",
            self.compilations,
            elapsed,
            self.from_cache,
            met,
            ahead,
        )
        self._compiler.submit(
            lambda: log.info(
                "compiled the %d shapes ahead of traffic %.1f s after start; %d of the %d "
                "compilations so far found in the compile cache",
                ahead,
                time.perf_counter() - began,
                self.from_cache,
                self.compilations,
            ),
            Priority.AHEAD,
        )
        return elapsed

    def _compile_met(self, until: float) -> int:
        """Compile the shapes calls met on earlier servers (from the compile cache, mostly),
        the unmasked ones first, each kind in the order calls first met them, until ``until``
        (``time.perf_counter``); how many."""
        cache = _CACHE
        if cache is None:
            return 0
        todo: list[tuple[Shape, Compiled]] = []
        for kind, shapes in (("exact", self._exact_shapes), ("masked", self._buckets)):
            name = self._names.get(kind)
            if shapes is not None and name is not None:
                todo += [(shape, shapes) for shape in cache.shapes_met(name)]
        done = 0
        for shape, shapes in todo:
            if time.perf_counter() >= until:
                break
            rows, span = shape  # a shape this runtime could meet, nothing larger
            fits = 1 <= rows <= self.max_rows and 1 <= span <= self.chunk_timesteps
            if fits and not shapes.has(shape):
                shapes.compile_now(shape)
                done += 1
        return done

    def calibrate(self) -> None:
        """Measure what decides between the paths: numpy per timestep, TensorFlow per call."""
        if self.fast is None:
            return
        features, units = self.info.input_width, self.info.state_size

        def median_seconds(run: Callable[..., object], rows: int, steps: int) -> float:
            x = np.zeros((rows, steps, features), np.float32)
            state = np.zeros((rows, units), np.float32)
            lengths = np.full(rows, steps)
            times = []
            for _ in range(15):
                began = time.perf_counter()
                run(x, lengths, state, state)
                times.append(time.perf_counter() - began)
            return float(np.median(times))

        # One TensorFlow call of one step, on the bucket warm_up compiled: measuring it must not
        # start a compilation, which would compete with these measurements for the cores.
        self._tensorflow_call = median_seconds(partial(self._call, exact=False), 1, 1)
        one_row = median_seconds(self.fast.run, 1, 16) / 16
        many_rows = median_seconds(self.fast.run, 32, 16) / 16
        self._numpy_row_step = max(0.0, (many_rows - one_row) / 31)
        self._numpy_step = max(0.0, one_row - self._numpy_row_step)
        log.info(
            "numpy fast path below one TensorFlow call (%.0f us): numpy costs %.1f us per "
            "timestep plus %.2f us per row",
            self._tensorflow_call * 1e6,
            self._numpy_step * 1e6,
            self._numpy_row_step * 1e6,
        )


# The compile cache this process uses (opened by the first load), and what its compilations
# found there: TensorFlow reads TF_XLA_FLAGS once, so every model of the process shares it.
_CACHE: CompileCache | None = None
_CACHE_LOCK = threading.Lock()
# Seconds from the start of warm-up within which the shapes calls met on earlier servers are
# compiled before serving (from the cache: about 0.15 s each).
WARM_START_SECONDS = 3.0


def use_compile_cache(directory: Path, max_bytes: int) -> None:
    """Have XLA keep what it compiles in ``directory`` (shared, see ``compile_cache.py``) and
    load it from there: keyed by the compiled program, so a changed model never hits an old
    entry. A directory that cannot be used is logged and left out."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is not None:
            return
        cache = CompileCache(directory, max_bytes)
        try:
            cache.open()
        except OSError as error:
            log.warning("no compile cache: %s cannot be used (%s)", directory, error)
            return
        flags = os.environ.get("TF_XLA_FLAGS", "")
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={cache.private}"
        atexit.register(cache.close)
        _CACHE = cache
        log.info("XLA compile cache in %s (at most %d bytes)", directory, max_bytes)


def _record_met(program: str | None, shape: Shape) -> None:
    """Keep, in the compile cache, that a call met ``shape`` of ``program``."""
    if _CACHE is not None and program is not None:
        _CACHE.record_met(program, shape)


def _compiled_into_cache(compile: Callable[[], object]) -> bool:
    """Run ``compile`` (one shape's first call), publishing what it wrote to the cache; whether
    XLA found the program in the cache (it wrote nothing). Compilations that use the cache take
    turns, so that what a compilation wrote is known to be its own."""
    cache = _CACHE
    if cache is None:
        compile()
        return False
    with _CACHE_LOCK:  # one compilation at a time: what it wrote is its own
        cache.refresh()
        compile()
        return not cache.publish()


def load_runtime(options: RuntimeOptions, source: ModelSource | None = None) -> TfLstmRuntime:
    """Load a version of a model (``source``; by default the one ``options`` names: the user's
    model file, or the seeded default), optionally save it, and compile it."""
    if options.compile_cache is not None and options.xla:
        use_compile_cache(options.compile_cache, options.compile_cache_max_bytes)
    path = options.model if source is None else source.path
    if path is not None:
        chain = load_chain(path)
    else:
        chain = default_chain(options.features, options.units, options.seed)
    if options.save_model is not None:
        save_chain(chain, options.save_model)
        log.info("saved the served model to %s", options.save_model)
    name = chain.name if source is None else source.name
    info = chain_info(chain, name)
    if source is not None:
        info = replace(info, version_number=source.version)
    log.info(
        "serving %s version %d (%s): %s, LSTM units %s, %d values per timestep out",
        info.name,
        info.version_number,
        info.version,
        f"{info.vocabulary_size} token ids"
        if info.vocabulary_size
        else f"{info.input_features} features",
        "/".join(str(u) for u in info.layer_units),
        info.output_size or info.units,
    )
    fast = numpy_chain(chain) if options.fast_path else None
    if options.fast_path and fast is None:
        log.info("a layer has no numpy form here: every call runs on TensorFlow")
    max_rows = options.max_rows
    if source is not None:
        max_rows = int(source.config.settings.get("max_batch_rows", max_rows))
    return TfLstmRuntime(
        chain,
        info,
        chunk_timesteps=options.chunk_timesteps,
        max_rows=max_rows,
        xla=options.xla,
        fast=fast,
    )
