"""The request decoder (transport.wire) against the protobuf library, value for value, on random
messages in every encoding protobuf allows (packed, unpacked and split floats, repeated and
reordered fields, unknown fields and groups), on random bytes, and on the limits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_server.core.errors import InvalidInput
from lstm_server.core.inference import StreamChunk
from lstm_server.core.sessions import StepOutcome
from lstm_server.core.types import Limits, ModelInfo, RaggedSequence, RowResult, State
from lstm_server.transport import wire
from lstm_server.transport.converters import state_in

from tests.helpers import length_delimited, tag, varint

LIMITS = Limits(max_batch_size=4, max_timesteps=6)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# A test-side encoder that writes the encodings the protobuf library accepts but never writes.


UNKNOWN = st.sampled_from(
    [
        tag(9, 0) + varint(300),
        tag(10, 5) + b"\x01\x02\x03\x04",
        tag(11, 1) + b"\x00" * 8,
        length_delimited(12, b"\x08\x01"),
        tag(13, 3) + tag(1, 0) + varint(7) + tag(13, 4),  # a group
    ]
)
FLOATS = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=5)


@st.composite
def with_unknown(draw: st.DrawFn, entries: list[bytes]) -> list[bytes]:
    """The entries with unknown fields slipped in anywhere."""
    extra = draw(st.lists(UNKNOWN, max_size=2))
    for item in extra:
        entries.insert(draw(st.integers(0, len(entries))), item)
    return entries


@st.composite
def vector(draw: st.DrawFn) -> tuple[list[float], bytes]:
    values = draw(FLOATS)
    raw = np.asarray(values, "<f4").tobytes()
    style = draw(st.sampled_from(["packed", "unpacked", "split", "empty-packed"]))
    if style == "packed":
        entries = [length_delimited(1, raw)] if values else []
    elif style == "empty-packed":
        entries = [length_delimited(1, b""), length_delimited(1, raw)]
    elif style == "unpacked":
        entries = [tag(1, 5) + raw[i : i + 4] for i in range(0, len(raw), 4)]
    else:
        cut = 4 * draw(st.integers(0, len(values)))
        entries = [
            length_delimited(1, raw[:cut]),
            *(tag(1, 5) + raw[i : i + 4] for i in range(cut, len(raw), 4)),
        ]
    return values, b"".join(draw(with_unknown(entries)))


@st.composite
def sequence(draw: st.DrawFn, uniform: bool = False) -> bytes:
    if uniform:  # what every protobuf library writes: the numpy path
        width = draw(st.integers(0, 4))
        steps = draw(st.integers(0, 8))
        message = pb.Sequence(
            timesteps=[
                pb.Vector(
                    values=draw(st.lists(st.floats(width=32), min_size=width, max_size=width))
                )
                for _ in range(steps)
            ]
        )
        return message.SerializeToString()
    vectors = draw(st.lists(vector(), max_size=8))
    entries = [length_delimited(1, encoded) for _, encoded in vectors]
    entries += draw(st.lists(st.just(tag(1, 0) + varint(5)), max_size=1))  # wrong wire type
    return b"".join(draw(with_unknown(entries)))


STATE = st.builds(
    lambda h, c, which: pb.LstmState(
        **{k: pb.Vector(values=v) for k, v in (("h", h), ("c", c)) if k in which}
    ).SerializeToString(),
    FLOATS,
    FLOATS,
    st.sampled_from([(), ("h",), ("c",), ("h", "c")]),
)


@st.composite
def predict_request(draw: st.DrawFn) -> bytes:
    uniform = draw(st.booleans())
    entries = [length_delimited(1, draw(sequence(uniform))) for _ in range(draw(st.integers(0, 6)))]
    entries += [length_delimited(2, draw(STATE)) for _ in range(draw(st.integers(0, 5)))]
    entries += [
        tag(3, 0) + varint(draw(st.integers(0, 2**40))) for _ in range(draw(st.integers(0, 2)))
    ]
    entries = draw(st.permutations(entries)) if draw(st.booleans()) else entries
    return b"".join(draw(with_unknown(entries)))


def expected_sequence(message: pb.Sequence) -> RaggedSequence:
    values = [np.asarray(v.values, np.float32) for v in message.timesteps]
    widths = np.array([v.size for v in values], np.int64)
    return RaggedSequence(np.concatenate(values) if values else np.zeros(0, np.float32), widths)


def _quieted(values: np.ndarray) -> np.ndarray:
    """Float32 bits with every NaN made quiet: the protobuf library hands floats over as Python
    floats, which quiets a signalling NaN; the payload's other bits are kept."""
    bits = np.asarray(values, np.float32).view(np.uint32).copy()
    bits[np.isnan(values)] |= 0x0040_0000
    return bits


def assert_same_sequence(got: RaggedSequence, expected: RaggedSequence) -> None:
    np.testing.assert_array_equal(got.widths, expected.widths)
    # Bit for bit, NaN payloads included (up to the quiet bit the library sets).
    np.testing.assert_array_equal(_quieted(got.values), _quieted(expected.values))


def assert_same_state(got, expected) -> None:  # type: ignore[no-untyped-def]
    for a, b in zip(got, expected, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(_quieted(a), _quieted(b))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A message with a few bytes changed, cut or repeated: mostly no longer a message."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 2))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        change = draw(st.sampled_from(["set", "cut", "repeat"]))
        if change == "set":
            data[i] = draw(st.integers(0, 255))
        elif change == "cut":
            del data[i:]
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


def refused_alike(kind, read, data: bytes):  # type: ignore[no-untyped-def]
    """The protobuf library's message, or None when both it and ``read`` refuse the bytes (``read``
    may refuse them for a limit first: it refuses what exceeds one before reading the rest)."""
    try:
        return kind.FromString(data)
    except Exception:
        with pytest.raises(InvalidInput):
            read(data, LIMITS)
        return None


@PROPERTY
@given(st.one_of(predict_request(), mutated(predict_request())))
def test_predict_requests_read_as_protobuf_parses_them(data: bytes) -> None:
    message = refused_alike(pb.PredictRequest, wire.predict_request, data)
    if message is None:
        return
    too_many = (
        len(message.sequences) > LIMITS.max_batch_size
        or len(message.initial_states) > LIMITS.max_batch_size
        or any(len(s.timesteps) > LIMITS.max_timesteps for s in message.sequences)
    )
    if too_many:
        with pytest.raises(InvalidInput, match="more than the limit"):
            wire.predict_request(data, LIMITS)
        return
    got = wire.predict_request(data, LIMITS)
    assert got.timesteps_per_message == message.timesteps_per_message
    assert len(got.sequences) == len(message.sequences)
    for mine, theirs in zip(got.sequences, message.sequences, strict=True):
        assert_same_sequence(mine, expected_sequence(theirs))
    assert len(got.initial_states) == len(message.initial_states)
    for mine, theirs in zip(got.initial_states, message.initial_states, strict=True):
        assert_same_state(mine, state_in(theirs))


@st.composite
def step_request(draw: st.DrawFn) -> bytes:
    entries = [length_delimited(2, draw(sequence())) for _ in range(draw(st.integers(0, 3)))]
    entries += [
        length_delimited(1, draw(st.text(max_size=5)).encode())
        for _ in range(draw(st.integers(0, 2)))
    ]
    entries += [
        tag(3, 0) + varint(draw(st.integers(0, 2**64 - 1))) for _ in range(draw(st.integers(0, 2)))
    ]
    entries = draw(st.permutations(entries))
    return b"".join(draw(with_unknown(entries)))


@PROPERTY
@given(st.one_of(step_request(), mutated(step_request())))
def test_step_requests_merge_repeated_inputs_as_protobuf_does(data: bytes) -> None:
    message = refused_alike(pb.StepRequest, wire.step_request, data)
    if message is None:
        return
    if len(message.input.timesteps) > LIMITS.max_timesteps:
        with pytest.raises(InvalidInput, match=r"input\.timesteps"):
            wire.step_request(data, LIMITS)
        return
    got = wire.step_request(data, LIMITS)
    assert (got.session_id, got.step_number) == (message.session_id, message.step_number)
    assert_same_sequence(got.input, expected_sequence(message.input))


@st.composite
def stream_message(draw: st.DrawFn) -> bytes:
    def step() -> bytes:
        entries = [length_delimited(1, draw(sequence())) for _ in range(draw(st.integers(0, 2)))]
        entries += [tag(2, 0) + varint(draw(st.integers(0, 50)))]
        return b"".join(draw(st.permutations(entries)))

    def opening() -> bytes:
        return pb.OpenSession(
            resume_session_id=draw(st.text(max_size=4)), close_on_end=draw(st.booleans())
        ).SerializeToString()

    kinds = draw(st.lists(st.sampled_from([1, 2]), max_size=4))
    entries = [length_delimited(k, opening() if k == 1 else step()) for k in kinds]
    return b"".join(draw(with_unknown(entries)))


@PROPERTY
@given(st.one_of(stream_message(), mutated(stream_message())))
def test_stream_messages_follow_the_last_kind_set(data: bytes) -> None:
    message = refused_alike(pb.SessionStreamRequest, wire.stream_message, data)
    if message is None:
        return
    kind = message.WhichOneof("kind")
    got = None
    refusal = ""
    try:
        got = wire.stream_message(data, LIMITS)
    except InvalidInput as error:
        refusal = error.message
    if got is None:
        # The timestep limit holds for every step the message carries, one that a later field
        # replaced included: protobuf reads those too before dropping them.
        assert "input.timesteps" in refusal
        assert b"\x12" in data
        return
    assert (got.open is not None, got.step is not None) == (kind == "open", kind == "step")
    if kind == "open":
        assert got.open == message.open
    elif kind == "step":
        assert len(message.step.input.timesteps) <= LIMITS.max_timesteps
        assert got.step.step_number == message.step.step_number
        assert_same_sequence(got.step.input, expected_sequence(message.step.input))


@PROPERTY
@given(st.binary(max_size=64))
def test_random_bytes_are_read_alike_or_refused_alike(data: bytes) -> None:
    try:
        message = pb.PredictRequest.FromString(data)
    except Exception:
        with pytest.raises(InvalidInput, match="is not a valid message"):
            wire.predict_request(data, Limits())
        return
    got = wire.predict_request(data, Limits())
    assert len(got.sequences) == len(message.sequences)
    for mine, theirs in zip(got.sequences, message.sequences, strict=True):
        assert_same_sequence(mine, expected_sequence(theirs))


def test_a_flood_of_empty_sequences_is_refused_at_the_first_one_too_many() -> None:
    flood = b"\x0a\x00" * 2_097_120  # 4 MiB: two million empty sequences
    with pytest.raises(InvalidInput, match=r"sequences: has 65 or more entries"):
        wire.predict_request(flood, Limits())


@pytest.mark.parametrize(
    "inner", [b"\x0a\x00", b"\x0a\x00\x0a\x02\x08\x00"], ids=["uniform", "mixed"]
)
def test_a_flood_of_timesteps_is_refused_unread(inner: bytes) -> None:
    payload = inner * 1_000_000
    request = length_delimited(1, payload)
    with pytest.raises(
        InvalidInput, match=r"sequences\[0\]\.timesteps: has .* more than the limit"
    ):
        wire.predict_request(request, Limits())
    step = length_delimited(2, payload)
    with pytest.raises(InvalidInput, match=r"input\.timesteps: has .* more than the limit 10000"):
        wire.step_request(step, Limits())


def test_a_uniform_sequence_is_read_with_numpy(rng) -> None:
    x = rng.normal(size=(1000, 32)).astype(np.float32)
    data = pb.PredictRequest(
        sequences=[pb.Sequence(timesteps=[pb.Vector(values=r) for r in x.tolist()])]
    ).SerializeToString()
    [got] = wire.predict_request(data, Limits()).sequences
    np.testing.assert_array_equal(got.values.reshape(1000, 32), x)
    assert set(got.widths.tolist()) == {32}


# Replies: byte for byte what the protobuf library serializes, and sizes known in advance.

ARRAYS = st.integers(1, 6).flatmap(
    lambda units: st.lists(
        st.lists(st.floats(width=32), min_size=units, max_size=units), min_size=0, max_size=6
    ).map(lambda rows, u=units: np.asarray(rows, np.float32).reshape(len(rows), u))
)


def _state(units: int, seed: int) -> State:
    rng = np.random.default_rng(seed)
    return State(*rng.normal(size=(2, units)).astype(np.float32))


def _vectors(rows: np.ndarray) -> list[pb.Vector]:
    return [pb.Vector(values=r) for r in rows.tolist()]


def _state_msg(state: State) -> pb.LstmState:
    return pb.LstmState(h=pb.Vector(values=state.h.tolist()), c=pb.Vector(values=state.c.tolist()))


def _bare(units: int) -> ModelInfo:
    return ModelInfo("m", "v", 1, units, "tanh", "sigmoid", True)


def _replies(units: int) -> wire.Replies:
    return wire.Replies(_bare(units), wire.Selection())


@PROPERTY
@given(st.lists(ARRAYS, min_size=0, max_size=4))
def test_predict_responses_are_the_bytes_protobuf_writes(sequences: list[np.ndarray]) -> None:
    results = [RowResult(s, _state(s.shape[1], i)) for i, s in enumerate(sequences)]
    expected = pb.PredictResponse(
        outputs=[
            pb.SequenceOutput(hidden_sequence=_vectors(r.sequence), final_state=_state_msg(r.state))
            for r in results
        ]
    )
    units = max((s.shape[1] for s in sequences), default=1)
    data = _replies(units).predict_response(results)
    assert data == expected.SerializeToString()
    ragged = [RaggedSequence(np.zeros(0), np.zeros(s.shape[0])) for s in sequences]
    assert (
        len(data) <= wire.predict_reply_bytes(ragged, _bare(units), wire.Selection())
        if len({s.shape[1] for s in sequences}) <= 1
        else True
    )


@PROPERTY
@given(ARRAYS, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans())
def test_stream_responses_are_the_bytes_protobuf_writes(
    hidden: np.ndarray, index: int, start: int, last: bool
) -> None:
    final = _state(hidden.shape[1], 1) if last else None
    expected = pb.PredictStreamResponse(
        sequence_index=index, start_timestep=start, hidden=_vectors(hidden)
    )
    if final is not None:
        expected.final_state.CopyFrom(_state_msg(final))
    chunk = StreamChunk(index, start, hidden, final)
    assert _replies(hidden.shape[1]).stream_response(chunk) == expected.SerializeToString()


@PROPERTY
@given(ARRAYS, st.text(max_size=40), st.integers(0, 2**64 - 1))
def test_step_responses_are_the_bytes_protobuf_writes(
    hidden: np.ndarray, session_id: str, number: int
) -> None:
    state = _state(hidden.shape[1], 2)
    outcome = StepOutcome(session_id, number, hidden, state)
    expected = pb.StepResponse(
        session_id=session_id,
        step_number=number,
        hidden_sequence=_vectors(hidden),
        state=_state_msg(state),
    )
    replies = _replies(hidden.shape[1])
    assert replies.step_response(outcome) == expected.SerializeToString()
    assert replies.stream_step_response(outcome) == (
        pb.SessionStreamResponse(step=expected).SerializeToString()
    )
    steps = RaggedSequence(np.zeros(0), np.zeros(hidden.shape[0]))
    bound = wire.step_reply_bytes(steps, _bare(hidden.shape[1]), wire.Selection())
    assert len(replies.step_response(outcome)) <= bound + len(session_id.encode())


STACK = ModelInfo("stack", "v", 3, 2, "tanh", "sigmoid", True, lstm_units=(3, 2), output_size=4)
SELECTIONS = st.builds(wire.Selection, st.booleans(), st.booleans(), st.booleans())


def _layer_states_msg(state: State, info: ModelInfo) -> pb.LayerStates:
    return pb.LayerStates(
        layers=[_state_msg(State(state.h[p], state.c[p])) for p in info.layer_slices()]
    )


@PROPERTY
@given(st.integers(0, 5), SELECTIONS, st.integers(0, 2**32 - 1))
def test_stack_replies_carry_what_was_asked_as_protobuf_writes_it(
    steps: int, selection: wire.Selection, number: int
) -> None:
    info = STACK
    rng = np.random.default_rng(steps)
    rows = rng.normal(size=(steps, info.timestep_width)).astype(np.float32)
    state = _state(info.state_size, 3)
    top = info.hidden_columns()
    expected = pb.StepResponse(
        session_id="s",
        step_number=number,
        state=_state_msg(State(state.h[top], state.c[top])),
        layer_states=_layer_states_msg(state, info),
    )
    if selection.hidden:
        expected.hidden_sequence.extend(_vectors(rows[:, top]))
    if selection.outputs:
        expected.outputs.extend(_vectors(rows[:, info.output_columns()]))
    if selection.layer_hidden:
        for part in info.layer_slices():
            expected.layer_hidden.add().timesteps.extend(_vectors(rows[:, part]))
    replies = wire.Replies(info, selection)
    data = replies.step_response(StepOutcome("s", number, rows, state))
    assert data == expected.SerializeToString()
    ragged = RaggedSequence(np.zeros(0), np.zeros(steps))
    assert len(data) <= wire.step_reply_bytes(ragged, info, selection)
    whole = replies.predict_response([RowResult(rows, state)])
    assert pb.PredictResponse.FromString(whole).outputs[0].final_layer_states == (
        expected.layer_states
    )
    assert len(whole) <= wire.predict_reply_bytes([ragged], info, selection)


@PROPERTY
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40), st.booleans())
def test_token_ids_read_as_protobuf_parses_them(ids: list[int], packed: bool) -> None:
    message = pb.StepRequest(session_id="s", input=pb.Sequence(tokens=ids), include=[2, 3])
    data = message.SerializeToString()
    if not packed:  # the same ids, one varint entry each (protobuf parsers accept both)
        entries = b"".join(tag(2, 0) + varint(i & (2**64 - 1)) for i in ids)
        data = (
            length_delimited(1, b"s")
            + length_delimited(2, entries)
            + tag(4, 0)
            + varint(2)
            + tag(4, 0)
            + varint(3)
        )
    step = wire.step_request(data, Limits())
    got = step.input.tokens
    assert (got.tolist() if got is not None else []) == ids
    assert wire.selection(step.include) == wire.Selection(False, True, True)


def test_unknown_outputs_and_too_many_tokens_are_refused() -> None:
    read = wire.step_request(pb.StepRequest(include=[9]).SerializeToString(), Limits())
    with pytest.raises(InvalidInput, match="include: has 9, which is not an Output"):
        wire.selection(read.include)
    data = pb.StepRequest(input=pb.Sequence(tokens=[1] * 11)).SerializeToString()
    with pytest.raises(InvalidInput, match="limit 10"):
        wire.step_request(data, Limits(max_timesteps=10))


# Parse budgets: the walk reads a bounded number of entries, then protobuf's parser takes over;
# either way, exactly what protobuf accepts is accepted.


@contextlib.contextmanager
def walk_budget(entries: int) -> Iterator[None]:
    kept = wire.WALK_BUDGET
    wire.WALK_BUDGET = entries
    try:
        yield
    finally:
        wire.WALK_BUDGET = kept


@PROPERTY
@given(st.one_of(predict_request(), mutated(predict_request())), st.integers(0, 8))
def test_past_its_budget_a_predict_request_is_read_by_protobuf_alike(
    data: bytes, budget: int
) -> None:
    """The property test's messages again, with a walk budget of a few entries: whether the
    walk or protobuf's parser reads them, the same values and the same refusals."""
    with walk_budget(budget):
        test_predict_requests_read_as_protobuf_parses_them.hypothesis.inner_test(data)


@PROPERTY
@given(st.one_of(step_request(), mutated(step_request())), st.integers(0, 8))
def test_past_its_budget_a_step_request_is_read_by_protobuf_alike(data: bytes, budget: int) -> None:
    with walk_budget(budget):
        test_step_requests_merge_repeated_inputs_as_protobuf_does.hypothesis.inner_test(data)


@PROPERTY
@given(st.one_of(stream_message(), mutated(stream_message())), st.integers(0, 8))
def test_past_its_budget_a_stream_message_is_read_by_protobuf_alike(
    data: bytes, budget: int
) -> None:
    with walk_budget(budget):
        test_stream_messages_follow_the_last_kind_set.hypothesis.inner_test(data)


def test_a_request_of_a_million_unknown_fields_is_parsed_not_walked() -> None:
    """4 MiB of unknown varints inside a sequence: past the budget protobuf reads them (the walk
    took seconds of Python); the sequence's timesteps come out all the same."""
    noise = (tag(9, 0) + varint(1)) * 2_000_000
    data = length_delimited(1, length_delimited(1, b"\x0d" + b"\x00\x00\x80\x3f") + noise)
    [read] = wire.predict_request(data, Limits()).sequences
    np.testing.assert_array_equal(read.values, [1.0])


def _nested_groups(depth: int) -> bytes:
    return tag(15, 3) * depth + tag(15, 4) * depth


@pytest.mark.parametrize(("depth", "inside"), [(100, False), (101, False), (99, True), (100, True)])
def test_groups_nest_as_deep_as_protobuf_allows_and_no_deeper(depth: int, inside: bool) -> None:
    data = _nested_groups(depth)
    if inside:  # in a Sequence: a level down already
        data = length_delimited(1, data)
    try:
        pb.PredictRequest.FromString(data)
    except Exception:
        with pytest.raises(InvalidInput, match="is not a valid message"):
            wire.predict_request(data, Limits())
        return
    wire.predict_request(data, Limits())


def test_tags_longer_than_five_bytes_are_refused_as_protobuf_refuses_them() -> None:
    five = bytes([0x88, 0x80, 0x80, 0x80, 0x00]) + varint(5)  # field 1 (varint): unknown here
    six = bytes([0x88, 0x80, 0x80, 0x80, 0x80, 0x00]) + varint(5)
    pb.PredictRequest.FromString(five)
    wire.predict_request(five, Limits())
    with pytest.raises(InvalidInput, match="tag longer than 5 bytes"):
        wire.predict_request(six, Limits())


def test_include_values_are_truncated_to_32_bits_as_protobuf_keeps_enums() -> None:
    data = tag(4, 0) + varint(2**32 + 2)  # OUTPUT_HIDDEN, with bits above 32
    assert list(pb.PredictRequest.FromString(data).include) == [2]
    assert wire.predict_request(data, Limits()).include == (2,)
    high = tag(4, 0) + varint(2**31)
    assert wire.predict_request(high, Limits()).include == (-(2**31),)
