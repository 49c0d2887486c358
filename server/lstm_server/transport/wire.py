"""The requests and replies that carry sequences, read and written as bytes: bounded work, array
speed. Callers still see the typed lstm.v1 messages: these are their exact bytes.

``Predict``, ``PredictStream``, ``Step`` and ``StreamSession`` messages can hold hundreds of
thousands of ``Vector`` messages. Parsing them with the protobuf library allocates one message per
timestep while holding the GIL (about 0.1 s for a 4 MiB request of empty sequences), so no other
thread, the event loop included, runs meanwhile. This module reads the same wire format instead:

- the limits on sequences and timesteps are checked while the bytes are walked, so a request that
  exceeds them is refused before any value is converted, however it is built;
- a sequence whose timesteps share one encoding (what every protobuf library writes: packed floats,
  same width) is read with a few numpy operations over its bytes;
- anything else (unpacked floats, unknown fields, varying widths) is walked in Python, which the
  interpreter can interrupt, and never past the timestep limit.

The result is what the protobuf library would parse (tested value for value on random messages,
in every encoding protobuf allows), as domain values; small embedded messages (states, the
opening of a session stream) are parsed by the protobuf library itself, bounded by their size.

Replies are written the same way: every timestep's ``Vector`` has the same bytes but for its
floats, so a reply of T timesteps is one (T, header + 4 * units) byte array, filled by numpy
(tested byte for byte against the protobuf library's serialization). Building the same reply as
messages takes one Python call per timestep and about 25 bytes of Python objects per float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message
from lstm_client.v1 import lstm_service_pb2 as pb

from lstm_server.core.errors import InvalidInput
from lstm_server.core.inference import StreamChunk
from lstm_server.core.registry import ModelRef
from lstm_server.core.sessions import StepOutcome
from lstm_server.core.types import GivenState, Limits, ModelInfo, RaggedSequence, RowResult, State
from lstm_server.transport.converters import layer_states_in, model_ref_in, state_in

VARINT, I64, LEN, START_GROUP, END_GROUP, I32 = 0, 1, 2, 3, 4, 5
Span = tuple[int, int]
# (field number, wire type, value, position after): see _entries.
Entry = tuple[int, int, Any, int]
M = TypeVar("M", bound=Message)
# Top-level entries a request may have beyond the ones its limits allow: protobuf lets a field
# repeat, but no client sends thousands of repeats, and each costs a Python iteration.
_SPARE_ENTRIES = 64
_FLOAT = np.dtype("<f4")


class _Malformed(Exception):
    """The bytes are not a protobuf message (the protobuf library would refuse them too)."""


def malformed(reason: str) -> InvalidInput:
    return InvalidInput.single("request", f"is not a valid message: {reason}")


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


# protobuf's limit on nesting (messages and groups together): deeper input is not a message.
MAX_DEPTH = 100
# Entries the Python walk reads per request; past them, the request is handed to protobuf's own
# parser (C), which reads the rest at its speed and accepts exactly what it accepts: odd
# encodings (unpacked floats, unknown fields, groups) cost no more than a parse.
WALK_BUDGET = 20_000
_WALKED: ContextVar[list[int]] = ContextVar("walked")


class _OverBudget(Exception):
    """The walk read its budget of entries: protobuf's parser takes over."""


def _skip_group(buf: bytes, pos: int, end: int, field: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise _Malformed("nested too deeply")
    for number, wire, _, after in _entries(buf, pos, end, in_group=True, depth=depth):
        if wire == END_GROUP:
            if number != field:
                raise _Malformed("mismatched end of group")
            return after
    raise _Malformed("unterminated group")


def _entries(
    buf: bytes, pos: int, end: int, *, in_group: bool = False, depth: int = 0
) -> Iterator[Entry]:
    """(field number, wire type, value, position after) for each entry in ``buf[pos:end]``, a
    message (or group) ``depth`` levels down.

    The value of a varint is the number; of a LEN entry, its (start, end); of fixed-size
    entries, their start. Groups (a legacy encoding of unknown fields) are skipped whole; an end
    of group is yielded only ``in_group``. Field number 0 is refused everywhere, inside groups
    too, and so are tags longer than 5 bytes and nesting past ``MAX_DEPTH``, as protobuf refuses
    them. Every entry counts against the request's walk budget.
    """
    walked = _WALKED.get(None)
    while pos < end:
        if walked is not None:
            walked[0] -= 1
            if walked[0] < 0:
                raise _OverBudget
        tag_start = pos
        key, pos = _varint(buf, pos, end)
        if pos - tag_start > 5:
            raise _Malformed("tag longer than 5 bytes")
        number, wire = key >> 3, key & 7
        if number >= 1 << 29 or number == 0:
            raise _Malformed(f"field number {number}")
        value: Any
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == LEN:
            size, pos = _varint(buf, pos, end)
            if size > end - pos:
                raise _Malformed("truncated length-delimited field")
            value, pos = (pos, pos + size), pos + size
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            if width > end - pos:
                raise _Malformed("truncated fixed-size field")
            value, pos = pos, pos + width
        elif wire == START_GROUP:
            value, pos = pos, _skip_group(buf, pos, end, number, depth + 1)
            continue
        elif wire == END_GROUP:
            if not in_group:
                raise _Malformed("end of group outside a group")
            yield number, wire, pos, pos
            return
        else:
            raise _Malformed(f"wire type {wire}")
        yield number, wire, value, pos


def _vector_values(buf: bytes, start: int, end: int, depth: int) -> np.ndarray:
    """The floats of one Vector: packed and unpacked entries in order; other fields skipped."""
    parts: list[np.ndarray] = []
    for number, wire, value, _ in _entries(buf, start, end, depth=depth):
        if number != 1:
            continue
        if wire == LEN:
            lo, hi = value
            if (hi - lo) % 4:
                raise _Malformed("packed floats of a length not a multiple of 4")
            parts.append(np.frombuffer(buf, _FLOAT, (hi - lo) // 4, lo))
        elif wire == I32:
            parts.append(np.frombuffer(buf, _FLOAT, 1, value))
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _uniform(buf: bytes, start: int, end: int, limit: int) -> tuple[int, int, int] | None:
    """(timesteps, header bytes, floats per timestep) when every timestep of the Sequence at
    ``buf[start:end]`` is encoded alike: one packed field of the same width, nothing else.

    Past ``limit`` timesteps only the first ``limit + 1`` are checked: that many are enough to
    refuse the sequence, whatever follows them."""
    if end == start or buf[start] != 0x0A:
        return None
    try:
        size, pos = _varint(buf, start + 1, end)
        if size > end - pos:
            return None  # truncated: the walk below says so
        stride = pos - start + size
        if size == 0:
            header, count = stride, 0
        else:
            if buf[pos] != 0x0A:
                return None
            packed, inner = _varint(buf, pos + 1, end)
            if inner - pos + packed != size or packed % 4:
                return None
            header, count = inner - start, packed // 4
    except _Malformed:
        return None
    if (end - start) % stride:
        return None
    steps = (end - start) // stride
    if steps == 1:
        return steps, header, count
    checked = min(steps, limit + 1)
    rows = np.frombuffer(buf, np.uint8, checked * stride, start).reshape(checked, stride)
    if not (rows[:, :header] == rows[0, :header]).all():
        return None
    return steps, header, count


def _too_many(field: str, steps: str, limit: int) -> InvalidInput:
    return InvalidInput.single(
        f"{field}.timesteps", f"has {steps} timesteps, more than the limit {limit}"
    )


def sequence(
    buf: bytes, start: int, end: int, field: str, limits: Limits, depth: int = 1
) -> RaggedSequence:
    """The Sequence at ``buf[start:end]`` (``depth`` levels down); more timesteps than the limit
    are refused unread."""
    shape = _uniform(buf, start, end, limits.max_timesteps)
    if shape is not None:
        steps, header, count = shape
        if steps > limits.max_timesteps:
            raise _too_many(field, f"{limits.max_timesteps + 1} or more", limits.max_timesteps)
        rows = np.frombuffer(buf, np.uint8, end - start, start).reshape(steps, -1)
        values = np.ascontiguousarray(rows[:, header:]).view(_FLOAT).reshape(-1)
        return RaggedSequence(values, np.full(steps, count, np.int64))
    vectors: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    count = 0
    for number, wire, value, _ in _entries(buf, start, end, depth=depth):
        if number == 1 and wire == LEN:
            lo, hi = value
            vectors.append(_vector_values(buf, lo, hi, depth + 1))
            count += 1
        elif number == 2 and wire in (VARINT, LEN):
            found = _packed_varints(buf, *value) if wire == LEN else np.array([value], np.uint64)
            tokens.append(found.view(np.int64))
            count += found.size
        if count > limits.max_timesteps:
            raise _too_many(field, f"{limits.max_timesteps + 1} or more", limits.max_timesteps)
    widths = np.fromiter((v.size for v in vectors), np.int64, len(vectors))
    values = np.concatenate(vectors) if vectors else np.zeros(0, np.float32)
    ids = np.concatenate(tokens) if tokens else None
    return RaggedSequence(values.astype(np.float32, copy=False), widths, ids)


def _packed_varints(buf: bytes, start: int, end: int) -> np.ndarray:
    """The varints packed in ``buf[start:end]`` as uint64 (protobuf keeps the low 64 bits)."""
    raw = np.frombuffer(buf, np.uint8, end - start, start)
    if raw.size and raw[-1] & 0x80:
        raise _Malformed("truncated varint")
    last = np.flatnonzero(raw < 0x80)
    first = np.concatenate(([0], last[:-1] + 1))
    sizes = last - first + 1
    if sizes.size and sizes.max() > 10:
        raise _Malformed("varint longer than 10 bytes")
    owner = np.repeat(np.arange(last.size), sizes)
    shifts = (7 * (np.arange(raw.size) - first[owner])).astype(np.uint64)
    values = np.zeros(last.size, np.uint64)
    np.bitwise_or.at(values, owner, (raw & 0x7F).astype(np.uint64) << shifts)
    return values


def _merged_sequence(
    buf: bytes, spans: list[Span], field: str, limits: Limits, depth: int
) -> RaggedSequence:
    """A Sequence field that occurs several times: protobuf merges the occurrences, which for
    its one repeated field means their timesteps one after the other."""
    if len(spans) == 1:
        return sequence(buf, *spans[0], field, limits, depth)
    parts: list[RaggedSequence] = []
    steps = 0
    for lo, hi in spans:
        part = sequence(buf, lo, hi, field, limits, depth)
        steps += part.timesteps
        if steps > limits.max_timesteps:
            raise _too_many(field, str(steps), limits.max_timesteps)
        parts.append(part)
    if not parts:
        return RaggedSequence(np.zeros(0, np.float32), np.zeros(0, np.int64))
    tokens = [p.tokens for p in parts if p.tokens is not None]
    return RaggedSequence(
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.widths for p in parts]),
        np.concatenate(tokens) if tokens else None,
    )


def _parse(kind: type[M], buf: bytes, spans: list[Span]) -> M:
    """An embedded message, merged from its occurrences as protobuf merges them."""
    message = kind()
    try:
        for lo, hi in spans:
            message.MergeFromString(buf[lo:hi])
    except DecodeError as error:
        raise _Malformed(str(error)) from None
    return message


def _text(buf: bytes, span: tuple[int, int]) -> str:
    try:
        return buf[span[0] : span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a string field is not valid UTF-8") from None


@dataclass(frozen=True)
class Selection:
    """The per-timestep results a request asks for (its ``include`` field)."""

    outputs: bool = True
    hidden: bool = False
    layer_hidden: bool = False


_OUTPUTS = {0: "outputs", 1: "outputs", 2: "hidden", 3: "layer_hidden"}


def selection(values: tuple[int, ...], field: str = "include") -> Selection:
    """What a request's ``include`` asks for; values that are no ``Output`` are refused."""
    if not values:
        return Selection()
    unknown = [v for v in values if v not in _OUTPUTS]
    if unknown:
        raise InvalidInput.single(
            field, f"has {unknown[0]}, which is not an Output (known: {sorted(_OUTPUTS)})"
        )
    chosen = {_OUTPUTS[v] for v in values}
    return Selection("outputs" in chosen, "hidden" in chosen, "layer_hidden" in chosen)


def _enum(value: int) -> int:
    """An enum's value as protobuf keeps it: the low 32 bits, signed."""
    low = int(value) & 0xFFFF_FFFF
    return low - (1 << 32) if low >= 1 << 31 else low


def _include(buf: bytes, wire: int, value: Any, into: list[int]) -> None:
    """An entry of a repeated Output field, packed or not."""
    if wire == VARINT:
        into.append(_enum(value))
    elif wire == LEN:
        into.extend(_enum(v) for v in _packed_varints(buf, *value)[: _SPARE_ENTRIES + 1])
    if len(into) > _SPARE_ENTRIES:
        raise malformed("has too many include entries")


@dataclass(frozen=True)
class PredictInput:
    """A Predict or PredictStream request, read."""

    sequences: list[RaggedSequence]
    initial_states: list[GivenState]
    timesteps_per_message: int = 0
    include: tuple[int, ...] = ()
    model: ModelRef = field(default_factory=ModelRef)


@dataclass(frozen=True)
class StepInput:
    """A session step (``Step``, or a step of ``StreamSession``), read."""

    input: RaggedSequence
    step_number: int
    session_id: str = ""
    include: tuple[int, ...] = ()


@dataclass(frozen=True)
class StreamMessage:
    """A message of ``StreamSession``: the opening or a step (or neither, if it set no kind)."""

    open: pb.OpenSession | None = None
    step: StepInput | None = None


R = TypeVar("R")


def _within_budget(
    parsed: Callable[[bytes, Limits], R],
) -> Callable[[Callable[[bytes, Limits], R]], Callable[[bytes, Limits], R]]:
    """The walk it decorates, reading at most ``WALK_BUDGET`` entries; past them, ``parsed``
    (protobuf's parser, then the same conversion). Bytes that are no message are refused as
    INVALID_ARGUMENT either way."""

    def decorate(read: Callable[[bytes, Limits], R]) -> Callable[[bytes, Limits], R]:
        def reader(data: bytes, limits: Limits) -> R:
            budget = _WALKED.set([WALK_BUDGET])
            try:
                try:
                    return read(data, limits)
                except _OverBudget:
                    return parsed(data, limits)
            except _Malformed as error:
                raise malformed(str(error)) from None
            except RecursionError:
                raise malformed("nested too deeply") from None
            finally:
                _WALKED.reset(budget)

        reader.__doc__ = read.__doc__
        reader.__name__ = read.__name__
        return reader

    return decorate


def _from_bytes(kind: type[M], data: bytes) -> M:
    try:
        return kind.FromString(data)
    except DecodeError as error:
        raise _Malformed(str(error)) from None


def _sequence_in(message: pb.Sequence, field: str, limits: Limits) -> RaggedSequence:
    """A parsed Sequence, as the walk reads one."""
    steps = len(message.timesteps) + len(message.tokens)
    if steps > limits.max_timesteps:
        raise _too_many(field, str(steps), limits.max_timesteps)
    vectors = [np.asarray(v.values, np.float32) for v in message.timesteps]
    widths = np.fromiter((v.size for v in vectors), np.int64, len(vectors))
    values = np.concatenate(vectors) if vectors else np.zeros(0, np.float32)
    tokens = np.asarray(message.tokens, np.int64) if len(message.tokens) else None
    return RaggedSequence(values, widths, tokens)


def _check_count(field: str, count: int, limits: Limits) -> None:
    if count > limits.max_batch_size:
        raise InvalidInput.single(
            field, f"has {count} entries, more than the limit {limits.max_batch_size}"
        )


def _parsed_predict(data: bytes, limits: Limits) -> PredictInput:
    message = _from_bytes(pb.PredictRequest, data)
    _check_count("sequences", len(message.sequences), limits)
    _check_count("initial_states", len(message.initial_states), limits)
    _check_count("initial_layer_states", len(message.initial_layer_states), limits)
    if len(message.include) > _SPARE_ENTRIES:
        raise malformed("has too many include entries")
    if len(message.initial_states) and len(message.initial_layer_states):
        raise InvalidInput.single(
            "initial_layer_states", "is set with initial_states; send one or the other"
        )
    given: list[GivenState] = [state_in(s) for s in message.initial_states]
    given += [layer_states_in(s) for s in message.initial_layer_states]
    return PredictInput(
        [_sequence_in(s, f"sequences[{i}]", limits) for i, s in enumerate(message.sequences)],
        given,
        message.timesteps_per_message,
        tuple(message.include),
        model_ref_in(message.model),
    )


def _parsed_step(message: Any, limits: Limits, session_id: str = "") -> StepInput:
    if len(message.include) > _SPARE_ENTRIES:
        raise malformed("has too many include entries")
    read = _sequence_in(message.input, "input", limits)
    return StepInput(read, message.step_number, session_id, tuple(message.include))


def _parsed_step_request(data: bytes, limits: Limits) -> StepInput:
    message = _from_bytes(pb.StepRequest, data)
    return _parsed_step(message, limits, message.session_id)


def _parsed_stream_message(data: bytes, limits: Limits) -> StreamMessage:
    message = _from_bytes(pb.SessionStreamRequest, data)
    kind = message.WhichOneof("kind")
    if kind == "open":
        return StreamMessage(open=message.open)
    if kind == "step":
        return StreamMessage(step=_parsed_step(message.step, limits))
    return StreamMessage()


@_within_budget(_parsed_predict)
def predict_request(data: bytes, limits: Limits) -> PredictInput:
    """A ``PredictRequest``; more sequences or states than ``max_batch_size`` are refused at the
    first one too many, before anything is converted."""
    sequences: list[Span] = []
    states: list[Span] = []
    layer_states: list[Span] = []
    include: list[int] = []
    model: list[Span] = []
    per_message = 0
    budget = 3 * limits.max_batch_size + _SPARE_ENTRIES
    fields = {1: ("sequences", sequences), 2: ("initial_states", states)}
    fields[5] = ("initial_layer_states", layer_states)
    for seen, (number, wire, value, _) in enumerate(_entries(data, 0, len(data))):
        if seen > budget:
            raise malformed("has too many fields")
        if number == 4:
            _include(data, wire, value, include)
        elif number in fields and wire == LEN:
            field, spans = fields[number]
            if len(spans) == limits.max_batch_size:
                raise InvalidInput.single(
                    field,
                    f"has {limits.max_batch_size + 1} or more entries, "
                    f"more than the limit {limits.max_batch_size}",
                )
            spans.append(value)
        elif number == 3 and wire == VARINT:
            per_message = int(value) & 0xFFFF_FFFF
        elif number == 6 and wire == LEN:
            model.append(value)
    if states and layer_states:
        raise InvalidInput.single(
            "initial_layer_states", "is set with initial_states; send one or the other"
        )
    given: list[GivenState] = [state_in(_parse(pb.LstmState, data, [span])) for span in states]
    given += [layer_states_in(_parse(pb.LayerStates, data, [span])) for span in layer_states]
    return PredictInput(
        [sequence(data, lo, hi, f"sequences[{i}]", limits) for i, (lo, hi) in enumerate(sequences)],
        given,
        per_message,
        tuple(include),
        model_ref_in(_parse(pb.ModelSpec, data, model)),
    )


def _step(data: bytes, spans: list[Span], limits: Limits, *, unary: bool) -> StepInput:
    """A StepRequest (``unary``) or a SessionStep (one level down), merged from its
    occurrences."""
    depth = 0 if unary else 1
    session_id, step_number = "", 0
    inputs: list[Span] = []
    include: list[int] = []
    input_field, number_field, include_field = (2, 3, 4) if unary else (1, 2, 3)
    seen = 0
    for start, end in spans:
        for number, wire, value, _ in _entries(data, start, end, depth=depth):
            seen += 1
            if seen > _SPARE_ENTRIES:
                raise malformed("has too many fields")
            if unary and number == 1 and wire == LEN:
                session_id = _text(data, value)
            elif number == input_field and wire == LEN:
                inputs.append(value)
            elif number == number_field and wire == VARINT:
                step_number = int(value)
            elif number == include_field:
                _include(data, wire, value, include)
    read = _merged_sequence(data, inputs, "input", limits, depth + 1)
    return StepInput(read, step_number, session_id, tuple(include))


@_within_budget(_parsed_step_request)
def step_request(data: bytes, limits: Limits) -> StepInput:
    """A ``StepRequest``."""
    return _step(data, [(0, len(data))], limits, unary=True)


@_within_budget(_parsed_stream_message)
def stream_message(data: bytes, limits: Limits) -> StreamMessage:
    """A ``SessionStreamRequest``: of its ``kind`` oneof, the last field set wins, and repeats of
    that field merge, as protobuf has it (a kind that a later one replaced is still checked)."""
    kind, spans = 0, list[Span]()
    for seen, (number, wire, value, _) in enumerate(_entries(data, 0, len(data))):
        if seen > _SPARE_ENTRIES:
            raise malformed("has too many fields")
        if number in (1, 2) and wire == LEN:
            if number != kind:
                _stream_kind(data, kind, spans, limits)  # replaced, but it must parse
                kind, spans = number, []
            spans.append(value)
    return _stream_kind(data, kind, spans, limits)


def _stream_kind(data: bytes, kind: int, spans: list[Span], limits: Limits) -> StreamMessage:
    if kind == 1:
        return StreamMessage(open=_parse(pb.OpenSession, data, spans))
    if kind == 2:
        return StreamMessage(step=_step(data, spans, limits, unary=False))
    return StreamMessage()


# Replies


# Reply sizes, known before the work is done


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field_size(payload: int) -> int:
    """A length-delimited field of ``payload`` bytes (one-byte tag)."""
    return 1 + _varint_size(payload) + payload


def vector_size(values: int) -> int:
    """A Vector of ``values`` floats as an entry of a repeated field."""
    return _field_size(_field_size(4 * values) if values else 0)


def _state_size(units: int) -> int:
    return _field_size(2 * vector_size(units))


def _layer_states_size(info: ModelInfo) -> int:
    if info.lstm_layers == 1:
        return 0
    return _field_size(sum(_state_size(units) for units in info.layer_units))


def _timestep_size(info: ModelInfo, selection: Selection) -> int:
    """The bytes one timestep adds to a reply: one Vector per field it appears in."""
    return sum(
        vector_size(part.stop - part.start) + (4 if layered else 0)
        for part, layered in _columns(info, selection)
    )


def _states_size(info: ModelInfo) -> int:
    return _state_size(info.units) + _layer_states_size(info)


def predict_reply_bytes(
    sequences: list[RaggedSequence], info: ModelInfo, selection: Selection
) -> int:
    timesteps = sum(s.timesteps for s in sequences)
    per_output = _states_size(info) + 4 * _varint_size(timesteps * vector_size(info.timestep_width))
    return timesteps * _timestep_size(info, selection) + len(sequences) * (per_output + 8)


def step_reply_bytes(sequence: RaggedSequence, info: ModelInfo, selection: Selection) -> int:
    return sequence.timesteps * _timestep_size(info, selection) + _states_size(info) + 128


def stream_message_bytes(timesteps_per_message: int, info: ModelInfo, selection: Selection) -> int:
    per_message = max(1, timesteps_per_message) * _timestep_size(info, selection)
    return per_message + _states_size(info) + 16


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint_bytes(number << 3 | LEN) + _varint_bytes(len(payload)) + payload


def _scalar(number: int, value: int) -> bytes:
    """A varint field; proto3 leaves zeros out."""
    return _varint_bytes(number << 3 | VARINT) + _varint_bytes(value) if value else b""


def _vector_payload(values: np.ndarray) -> bytes:
    floats = np.ascontiguousarray(values, _FLOAT).tobytes()
    return length_delimited(1, floats) if floats else b""


def vectors(number: int, rows: np.ndarray) -> bytes:
    """A repeated Vector field, one entry per row of ``rows`` (T, units)."""
    steps, units = rows.shape
    inner = length_delimited(1, b"\0" * 4 * units)[: -4 * units] if units else b""
    head = _varint_bytes(number << 3 | LEN) + _varint_bytes(len(inner) + 4 * units) + inner
    out = np.empty((steps, len(head) + 4 * units), np.uint8)
    out[:, : len(head)] = np.frombuffer(head, np.uint8)
    floats = np.ascontiguousarray(rows, _FLOAT).view(np.uint8)
    out[:, len(head) :] = floats.reshape(steps, 4 * units)
    return out.tobytes()


def _columns(info: ModelInfo, selection: Selection) -> list[tuple[slice, bool]]:
    """The parts of a timestep's result a reply carries, and whether each is a layer's."""
    parts: list[tuple[slice, bool]] = []
    if selection.hidden or (selection.outputs and not info.has_output_layers):
        parts.append((info.hidden_columns(), False))
    if selection.outputs and info.has_output_layers:
        parts.append((info.output_columns(), False))
    if selection.layer_hidden:
        parts += [(part, True) for part in info.layer_slices()]
    return parts


# Field numbers of a reply message: (hidden, outputs, layer_hidden, state, layer_states).
Fields = tuple[int, int, int, int, int]
SEQUENCE_OUTPUT: Fields = (1, 3, 4, 2, 5)
STREAM_RESPONSE: Fields = (3, 5, 6, 4, 7)
STEP_RESPONSE: Fields = (3, 5, 6, 4, 7)


class Replies:
    """Writes the replies of one request: the results it asked for, of the served model."""

    def __init__(self, info: ModelInfo, selection: Selection) -> None:
        self.info = info
        self.selection = selection

    def fields(self, rows: np.ndarray, state: State | None, numbers: Fields) -> bytes:
        """The per-timestep fields of ``rows`` (T, timestep_width) and the state's fields, in
        field-number order (as protobuf writes them)."""
        hidden, outputs, layer_hidden, single, layered = numbers
        parts: dict[int, bytes] = {}
        info, selection = self.info, self.selection
        if selection.hidden or (selection.outputs and not info.has_output_layers):
            parts[hidden] = vectors(hidden, rows[:, info.hidden_columns()])
        if selection.outputs and info.has_output_layers:
            parts[outputs] = vectors(outputs, rows[:, info.output_columns()])
        if selection.layer_hidden:
            parts[layer_hidden] = b"".join(
                length_delimited(layer_hidden, vectors(1, rows[:, part]))
                for part in info.layer_slices()
            )
        if state is not None:
            top = info.hidden_columns()
            parts[single] = _state_field(single, state.h[top], state.c[top])
            if info.lstm_layers > 1:
                parts[layered] = length_delimited(
                    layered,
                    b"".join(
                        _state_field(1, state.h[part], state.c[part])
                        for part in info.layer_slices()
                    ),
                )
        return b"".join(parts[number] for number in sorted(parts))

    def predict_response(self, results: list[RowResult]) -> bytes:
        """A PredictResponse."""
        return b"".join(
            length_delimited(1, self.fields(r.sequence, r.state, SEQUENCE_OUTPUT)) for r in results
        )

    def stream_response(self, chunk: StreamChunk) -> bytes:
        """A PredictStreamResponse."""
        return (
            _scalar(1, chunk.sequence_index)
            + _scalar(2, chunk.start_timestep)
            + self.fields(chunk.results, chunk.final_state, STREAM_RESPONSE)
        )

    def step_response(self, outcome: StepOutcome) -> bytes:
        """A StepResponse."""
        session_id = outcome.session_id.encode()
        return (
            (length_delimited(1, session_id) if session_id else b"")
            + _scalar(2, outcome.step_number)
            + self.fields(outcome.sequence, outcome.state, STEP_RESPONSE)
        )

    def stream_step_response(self, outcome: StepOutcome) -> bytes:
        """A SessionStreamResponse carrying a StepResponse."""
        return length_delimited(2, self.step_response(outcome))


def _state_field(number: int, h: np.ndarray, c: np.ndarray) -> bytes:
    return length_delimited(
        number, length_delimited(1, _vector_payload(h)) + length_delimited(2, _vector_payload(c))
    )
