"""The served model as the Open Inference Protocol sees it, for both bindings: its tensors, its
metadata, and inference: a request without a sequence is a Predict; a request of a sequence
(Triton's sequence extension: ``sequence_id``, ``sequence_start``, ``sequence_end``) is a step of a
session, which the sequence's start makes and its end closes.

Tensors: input ``x`` (FP32 ``[batch, timesteps, features]``, or INT64/INT32 token ids
``[batch, timesteps]``), optional ``lengths`` (INT32/INT64 ``[batch]``: rows shorter than
``timesteps``), optional initial states ``h0`` and ``c0`` (FP32 ``[batch, units]``; ``h0_<k>`` and
``c0_<k>`` per LSTM layer ``k`` of a stack); outputs ``sequence`` (the top LSTM's hidden output of
every timestep, zeros past a row's length), ``outputs`` (the output layers' values, for models
that have them) and ``state_h``/``state_c`` (``state_h_<k>``/``state_c_<k>`` for stacks).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lstm_server.core.errors import InvalidInput, ModelNotFound, SessionNotFound
from lstm_server.core.registry import (
    TAKES_CALLS,
    ModelRef,
    ModelRegistry,
    ServedModel,
    VersionStatus,
)
from lstm_server.core.sessions import StepOutcome
from lstm_server.core.types import (
    Array,
    GivenState,
    Limits,
    ModelInfo,
    RaggedSequence,
    RowResult,
    State,
)
from lstm_server.core.validation import Fields
from lstm_server.transport.limits import check_reply_bytes
from lstm_server.transport.observation import StepObserver, timed_step
from lstm_server.transport.oip.tensors import InferRequest, InferResponse, Parameter, Tensor
from lstm_server.transport.servicer import Services

PLATFORM = "keras_lstm"
# Extensions in the sense of the protocol's server metadata (Triton's names).
EXTENSIONS = (
    "sequence",
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
)
STEP_NUMBER = "lstm_step_number"
_SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", STEP_NUMBER)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the model takes or gives: -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class Layout:
    """The names and shapes of a model's tensors."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        units = info.layer_units
        suffixes = [""] if len(units) == 1 else [f"_{k}" for k in range(len(units))]
        self.state_inputs = [(f"h0{s}", f"c0{s}") for s in suffixes]
        self.state_outputs = [(f"state_h{s}", f"state_c{s}") for s in suffixes]
        x = (
            TensorSpec("x", "INT64", (-1, -1))
            if info.vocabulary_size
            else TensorSpec("x", "FP32", (-1, -1, info.input_features))
        )
        self.inputs = (
            x,
            TensorSpec("lengths", "INT32", (-1,)),
            *(
                TensorSpec(name, "FP32", (-1, u))
                for pair, u in zip(self.state_inputs, units, strict=True)
                for name in pair
            ),
        )
        outputs = [TensorSpec("sequence", "FP32", (-1, -1, units[-1]))]
        if info.has_output_layers:
            outputs.append(TensorSpec("outputs", "FP32", (-1, -1, info.output_size)))
        outputs += [
            TensorSpec(name, "FP32", (-1, u))
            for pair, u in zip(self.state_outputs, units, strict=True)
            for name in pair
        ]
        self.outputs = tuple(outputs)
        self.output_names = tuple(spec.name for spec in self.outputs)


@dataclass(frozen=True)
class _Rows:
    """A request's inputs, checked: each row's sequence and (optional) initial state."""

    sequences: list[RaggedSequence]
    states: list[GivenState]
    lengths: Array
    timesteps: int


def _parameter_int(parameters: dict[str, Parameter], name: str) -> int:
    value = parameters.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput.single(f"parameters[{name}]", f"is {value!r}; expected an integer >= 0")
    return value


def _parameter_bool(parameters: dict[str, Parameter], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput.single(f"parameters[{name}]", f"is {value!r}; expected a boolean")
    return value


def sequence_id(parameters: dict[str, Parameter]) -> int | str | None:
    """The request's sequence id, or None for a request outside any sequence (0 and "" are
    "none", as in Triton)."""
    value = parameters.get("sequence_id")
    if value is None or value == 0 or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not _allowed_id(value):
        raise InvalidInput.single(
            "parameters[sequence_id]",
            f"is {value!r:.80}; expected an integer from 1 to 2**64 - 1, or a string of at most "
            f"{MAX_SEQUENCE_ID_CHARS} characters",
        )
    return value


MAX_SEQUENCE_ID_CHARS = 256


def _allowed_id(value: int | str) -> bool:
    """Whether ``value`` is a sequence id the protocol allows (Triton's: a uint64, or a string)."""
    if isinstance(value, int):
        return 0 < value < 2**64
    return len(value) <= MAX_SEQUENCE_ID_CHARS


def session_of(sequence: int | str, owner: str) -> str:
    """The session that holds ``owner``'s sequence: sequence ids are per principal, so another
    principal's same id names another session."""
    kind = "int" if isinstance(sequence, int) else "str"
    key = f"{owner}\0{kind}\0{sequence}".encode()
    return "oip-" + hashlib.sha256(key).hexdigest()[:48]


class OpenInference:
    """Serves the protocol's model calls over the core."""

    def __init__(
        self,
        core: Callable[[], Services],
        *,
        step_observer: StepObserver | None = None,
    ) -> None:
        """``core()`` gives the services (or raises ModelNotReady); the step observer is told
        of every request of a sequence."""
        self._core = core
        self._step_observer = step_observer
        self._layouts: dict[str, Layout] = {}

    @property
    def models(self) -> ModelRegistry:
        return self._core().models

    def repository_index(self, *, ready: bool = False) -> list[VersionStatus]:
        """The repository extension's index: every version, with its state and why."""
        statuses = self.models.index()
        return [s for s in statuses if not ready or s.state in TAKES_CALLS]

    def layout(self, info: ModelInfo) -> Layout:
        made = self._layouts.get(info.version)
        if made is None:
            made = self._layouts[info.version] = Layout(info)
        return made

    def ref(self, name: str, version: str = "") -> ModelRef:
        """The model and version a request names: its version's number, or, as servers before
        model repositories answered with, the digest of its weights ("" : the newest)."""
        models = self._core().models
        if not models.serves(name):
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found", model=name)
        if version == "":
            return ModelRef(name)
        if version.isdigit() and int(version) > 0:
            return ModelRef(name, int(version))
        number = models.version_of(name, version)
        if number:
            return ModelRef(name, number)
        raise ModelNotFound(
            f"Request for unknown model: '{name}' version {version} is not found",
            model=name,
            version=version,
        )

    def find(self, name: str, version: str = "") -> ServedModel:
        """The model version named if it takes calls; NOT_FOUND, in Triton's words, if not."""
        return self._core().models.resolve(self.ref(name, version))

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self.find(name, version)
        layout = self.layout(served.info)
        versions = tuple(
            str(m.version) for m in self._core().models.loaded() if m.name == served.name
        )
        return ModelMetadata(served.name, versions, PLATFORM, layout.inputs, layout.outputs)

    def statistics(self, name: str = "", version: str = "") -> list[ServedModel]:
        """The loaded versions whose statistics are asked for: all (no name), a model's, or one
        version."""
        models = self._core().models
        if not name:
            return models.loaded()
        if version:
            return [self.find(name, version)]
        self.ref(name)  # NOT_FOUND for a model the server does not have
        return [m for m in models.loaded() if m.name == name]

    async def infer(
        self,
        request: InferRequest,
        *,
        owner: str = "",
        deadline: float | None = None,
        method: str = "ModelInfer",
        value_bytes: int = 4,
    ) -> InferResponse:
        """Run the request: a Predict, or a step of its sequence. Its reply, at ``value_bytes``
        a value (4 as raw or typed FP32; more as JSON text), is checked against
        ``--max-response-bytes`` before anything runs."""
        ref = self.ref(request.model_name, request.model_version)
        deadline = _earlier(deadline, request.parameters)
        sequence = sequence_id(request.parameters)
        parameters: dict[str, Parameter]
        if sequence is not None:
            with timed_step(self._step_observer, method):
                outcome, rows, wanted = await self._step(
                    request, ref, sequence, owner, deadline, value_bytes
                )
            assert outcome.model is not None
            info = outcome.model
            layout = self.layout(info)
            outputs = _outputs([RowResult(outcome.sequence, outcome.state)], rows, layout, wanted)
            parameters = {"sequence_id": sequence, STEP_NUMBER: outcome.step_number}
        else:
            if any(name in request.parameters for name in _SEQUENCE_PARAMETERS[1:]):
                raise InvalidInput.single(
                    "parameters[sequence_id]",
                    "is missing: sequence_start, sequence_end and lstm_step_number belong to "
                    "requests of a sequence",
                )
            inference = self._core().inference
            async with inference.model(ref, deadline=deadline) as served:
                info = served.info
                layout = self.layout(info)
                inputs = self._inputs(request, layout)
                wanted = self._wanted(request.outputs, layout)
                rows = _rows(inputs, layout)
                _reply_fits(rows, layout, wanted, value_bytes, served.limits)
                results = await inference.predict(
                    served, rows.sequences, rows.states, deadline=deadline, fields=TENSOR_FIELDS
                )
            outputs = _outputs(results, rows, layout, wanted)
            parameters = {}
        return InferResponse(info.name, str(info.version_number), request.id, outputs, parameters)

    async def _step(
        self,
        request: InferRequest,
        ref: ModelRef,
        sequence: int | str,
        owner: str,
        deadline: float | None,
        value_bytes: int,
    ) -> tuple[StepOutcome, _Rows, tuple[str, ...]]:
        """One request of a sequence, as the core's sessions run it; its inputs are checked
        against each version it runs on before the model runs."""
        parameters = request.parameters
        start = _parameter_bool(parameters, "sequence_start")
        if not start and any(_is_state(tensor.name) for tensor in request.inputs):
            raise InvalidInput.single(
                "inputs",
                "initial states are taken only by the request that starts a sequence "
                "(sequence_start)",
            )
        number = _parameter_int(parameters, STEP_NUMBER)
        if start and number > 1:  # refused before the sequence is touched
            raise InvalidInput.single(
                f"parameters[{STEP_NUMBER}]",
                f"is {number}: the request that starts a sequence is its step 1 (or send 0)",
            )
        checked: list[tuple[_Rows, tuple[str, ...]]] = []

        def prepare(served: ServedModel) -> GivenState | None:
            layout = self.layout(served.info)
            rows = _rows(self._inputs(request, layout), layout, single=True)
            wanted = self._wanted(request.outputs, layout)
            _reply_fits(rows, layout, wanted, value_bytes, served.limits)
            checked[:] = [(rows, wanted)]
            return rows.states[0] if rows.states else None

        try:
            outcome = await self._core().sessions.sequence_step(
                session_of(sequence, owner),
                ref,
                _given(request),
                number,
                start=start,
                end=_parameter_bool(parameters, "sequence_end"),
                prepare=prepare,
                owner=owner,
                deadline=deadline,
                fields=TENSOR_FIELDS,
            )
        except SessionNotFound as error:
            raise _unknown_sequence(sequence, request.model_name, error) from None
        if not checked:  # a retried end, answered from what the sequence kept: nothing ran
            assert outcome.model is not None
            layout = self.layout(outcome.model)
            rows = _rows(self._inputs(request, layout), layout, single=True)
            checked.append((rows, self._wanted(request.outputs, layout)))
        [(rows, wanted)] = checked
        return outcome, rows, wanted

    def _inputs(self, request: InferRequest, layout: Layout) -> dict[str, Tensor]:
        """The request's inputs by name, each known, given once and of the model's datatype."""
        specs = {spec.name: spec for spec in layout.inputs}
        found: dict[str, Tensor] = {}
        name = request.model_name
        for tensor in request.inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidInput.single(
                    f"inputs[{tensor.name}]",
                    f"is not an input of model '{name}' (it takes {', '.join(specs)})",
                )
            if tensor.name in found:
                raise InvalidInput.single(f"inputs[{tensor.name}]", "is given twice")
            accepted = {spec.datatype, *(("INT32", "INT64") if spec.datatype[:3] == "INT" else ())}
            if tensor.datatype not in accepted:
                raise InvalidInput.single(
                    f"inputs[{tensor.name}]",
                    f"data-type is '{tensor.datatype}', but model '{name}' expects "
                    f"'{spec.datatype}'",
                )
            found[tensor.name] = tensor
        if "x" not in found:
            x = specs["x"]
            raise InvalidInput.single(
                "inputs[x]", f"is missing: model '{name}' takes x {x.datatype} {list(x.shape)}"
            )
        return found

    @staticmethod
    def _wanted(requested: list[str] | None, layout: Layout) -> tuple[str, ...]:
        if requested is None:
            return layout.output_names
        for name in requested:
            if name not in layout.output_names:
                raise InvalidInput.single(
                    f"outputs[{name}]",
                    f"is not an output of the model (it gives {', '.join(layout.output_names)})",
                )
        return tuple(dict.fromkeys(requested))


def _reply_fits(
    rows: _Rows, layout: Layout, wanted: tuple[str, ...], value_bytes: int, limits: Limits
) -> None:
    """Refuse, before the model runs, a request whose reply would pass ``max_response_bytes``."""
    info = layout.info
    timewise = (info.layer_units[-1] if "sequence" in wanted else 0) + (
        info.output_size if "outputs" in wanted else 0
    )
    states = sum(
        units * sum(name in wanted for name in pair)
        for pair, units in zip(layout.state_outputs, info.layer_units, strict=True)
    )
    size = value_bytes * len(rows.sequences) * (rows.timesteps * timewise + states)
    check_reply_bytes(size, limits, "ask for fewer outputs, or send fewer rows or timesteps")


def _is_state(name: str) -> bool:
    """Whether an input's name is an initial state's (``h0``, ``c0``, ``h0_<k>``, ``c0_<k>``)."""
    return name in ("h0", "c0") or name[:3] in ("h0_", "c0_")


def _given(request: InferRequest) -> RaggedSequence:
    """The one row of a sequence request's ``x``, before its model version is known: token ids
    (integers) or floats per timestep. Its shape is checked against that version before the
    step runs (``_rows``); anything unusable here is left for that check to refuse."""
    x = next((tensor for tensor in request.inputs if tensor.name == "x"), None)
    if x is None or len(x.shape) not in (2, 3) or x.shape[0] != 1:
        return RaggedSequence(_EMPTY, _EMPTY_WIDTHS)
    values = x.array
    if len(x.shape) == 2:
        return RaggedSequence(_EMPTY, _EMPTY_WIDTHS, values.reshape(-1).astype(np.int64))
    steps, width = int(x.shape[1]), int(x.shape[2])
    lengths = next((tensor for tensor in request.inputs if tensor.name == "lengths"), None)
    if lengths is not None and lengths.array.size == 1 and 1 <= int(lengths.array[0]) <= steps:
        steps = int(lengths.array[0])  # a shorter row: the rest is padding
    rows = np.ascontiguousarray(values, np.float32).reshape(-1, width)[:steps]
    return RaggedSequence(rows.reshape(-1), np.full(steps, width, np.int64))


def _earlier(deadline: float | None, parameters: dict[str, Parameter]) -> float | None:
    """The call's deadline, or the request's ``timeout`` parameter (microseconds, as Triton's)
    if that comes first."""
    if "timeout" not in parameters:
        return deadline
    timeout = _parameter_int(parameters, "timeout")
    if timeout == 0:
        return deadline
    own = time.monotonic() + timeout / 1e6
    return own if deadline is None else min(deadline, own)


def _unknown_sequence(sequence: int | str, model: str, error: SessionNotFound) -> SessionNotFound:
    how = {"SESSION_EXPIRED": " (it expired)", "SESSION_CLOSED": " (it ended)"}
    return SessionNotFound(
        f"inference request for sequence {sequence} to model '{model}' must specify the START "
        f"flag on the first request of the sequence{how.get(error.reason, '')}",
        reason=error.reason,
        sequence_id=sequence,
    )


def _shaped(tensor: Tensor, ndim: int, last: int | None, spec: str) -> Array:
    shape = tensor.shape
    if len(shape) != ndim or (last is not None and shape[-1] != last):
        raise InvalidInput.single(
            f"inputs[{tensor.name}]", f"has shape {list(shape)}; the model takes {spec}"
        )
    return tensor.array


class TensorFields(Fields):
    """The protocol's names for what the core checks: ``inputs[x][row][timestep]``, and
    ``inputs[h0][row]`` (``inputs[c0_1][row]`` for a stack's layer 1)."""

    sequences = "inputs[x]"
    step_input = "inputs[x][0]"
    created_state = created_layer_states = reset_state = reset_layer_states = "[0]"

    def row(self, i: int) -> str:
        return f"inputs[x][{i}]"

    def steps(self, row: str, tokens: bool) -> str:
        return row

    def timestep(self, row: str, t: int, tokens: bool) -> str:
        return f"{row}[{t}]"

    def states(self, layered: bool) -> str:
        return ""

    def state(self, states: str, i: int) -> str:
        return f"[{i}]"

    def layers(self, state: str) -> str:
        return f"inputs[h0_k, c0_k]{state}"

    def part(self, state: str, layer: int | None, name: str) -> str:
        return f"inputs[{name}0{'' if layer is None else f'_{layer}'}]{state}"


TENSOR_FIELDS = TensorFields()


def _rows(inputs: dict[str, Tensor], layout: Layout, single: bool = False) -> _Rows:
    """The inputs as rows: each row's sequence (``lengths`` long) and initial state. Only what
    the tensors' shapes say is checked here; their values, and the limits, are checked by the
    core (``TENSOR_FIELDS`` names them)."""
    info = layout.info
    x_tensor = inputs["x"]
    if info.vocabulary_size:
        x = _shaped(x_tensor, 2, None, "[batch, timesteps] token ids")
    else:
        features = info.input_features
        x = _shaped(x_tensor, 3, features, f"[batch, timesteps, {features}]")
    batch, timesteps = x.shape[0], x.shape[1]
    if single and batch != 1:
        raise InvalidInput.single(
            "inputs[x]", f"has a batch of {batch}: a request of a sequence carries one row"
        )
    lengths = np.full(batch, timesteps, np.int64)
    if "lengths" in inputs and batch:
        given = _shaped(inputs["lengths"], 1, batch, f"[{batch}] (one length per row of x)")
        bad = np.flatnonzero((given < 1) | (given > timesteps))
        if bad.size:
            raise InvalidInput.single(
                "inputs[lengths]",
                f"is {int(given[bad[0]])} for row {bad[0]}: lengths are between 1 and "
                f"the {timesteps} timesteps of x",
            )
        lengths = given.astype(np.int64)
    if info.vocabulary_size:
        sequences = [
            RaggedSequence(_EMPTY, _EMPTY_WIDTHS, x[i, : lengths[i]].astype(np.int64))
            for i in range(batch)
        ]
    else:
        x = np.ascontiguousarray(x, np.float32)
        sequences = [
            RaggedSequence(
                x[i, : lengths[i]].reshape(-1), np.full(int(lengths[i]), info.input_features)
            )
            for i in range(batch)
        ]
    return _Rows(sequences, _states(inputs, layout, batch), lengths, timesteps)


_EMPTY = np.zeros(0, np.float32)
_EMPTY_WIDTHS = np.zeros(0, np.int64)


def _states(inputs: dict[str, Tensor], layout: Layout, batch: int) -> list[GivenState]:
    """Each row's initial state: none given (zeros), or every layer's h and c (their values
    are the core's to check)."""
    names = [name for pair in layout.state_inputs for name in pair]
    given = [name for name in names if name in inputs]
    if not given:
        return []
    missing = [name for name in names if name not in inputs]
    if missing:
        raise InvalidInput.single(
            f"inputs[{missing[0]}]",
            f"is missing: an initial state needs all of {', '.join(names)} (or none: zeros)",
        )
    layers = []
    for (h_name, c_name), units in zip(layout.state_inputs, layout.info.layer_units, strict=True):
        pair = []
        for name in (h_name, c_name):
            value = _shaped(inputs[name], 2, units, f"[{batch}, {units}]")
            if value.shape[0] != batch:
                raise InvalidInput.single(
                    f"inputs[{name}]", f"has {value.shape[0]} rows; x has {batch}"
                )
            pair.append(value.astype(np.float32))
        layers.append(pair)
    if len(layers) == 1:
        [(h, c)] = layers
        return [(h[i], c[i]) for i in range(batch)]
    return [[(h[i], c[i]) for h, c in layers] for i in range(batch)]


def _outputs(
    results: list[RowResult], rows: _Rows, layout: Layout, wanted: tuple[str, ...]
) -> list[Tensor]:
    """The requested outputs of every row, rows shorter than the batch's zero-padded."""
    info = layout.info
    batch, timesteps = len(results), rows.timesteps
    made: dict[str, Array] = {}

    def timewise(columns: slice, width: int) -> Array:
        if batch == 1 and results[0].sequence.shape[0] == timesteps:  # no padding: no copy
            return results[0].sequence[None, :, columns]
        out = np.zeros((batch, timesteps, width), np.float32)
        for i, result in enumerate(results):
            out[i, : result.sequence.shape[0]] = result.sequence[:, columns]
        return out

    if "sequence" in wanted:
        made["sequence"] = timewise(info.hidden_columns(), info.layer_units[-1])
    if "outputs" in wanted:
        made["outputs"] = timewise(info.output_columns(), info.output_size)
    slices = info.layer_slices()
    for (h_name, c_name), part in zip(layout.state_outputs, slices, strict=True):
        for name, pick in ((h_name, _h), (c_name, _c)):
            if name in wanted:
                made[name] = np.stack([pick(r.state)[part] for r in results]).astype(np.float32)
    return [
        Tensor(name, "FP32", tuple(made[name].shape), made[name].reshape(-1)) for name in wanted
    ]


def _h(state: State) -> Array:
    return state.h


def _c(state: State) -> Array:
    return state.c
