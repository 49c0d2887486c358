"""One scenario suite run against both SDK twins, ``LstmClient`` and ``AsyncLstmClient``.

The asyncio client runs on a loop thread of its own behind a blocking facade, so every scenario is
written once and each twin must pass it as it stands.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from lstm_client import AsyncLstmClient, FinalState, LstmClient, LstmError, StreamChunk
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import seq_msg
from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, free_port, settings

TOL = 1e-5


class Blocking:
    """An asyncio object's methods as blocking calls on ``loop``: coroutines are awaited, async
    iterators become iterators, and async context managers plain ones."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def _run(self, awaitable: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._loop).result(60)

    def _wrap(self, value: Any) -> Any:
        return Blocking(value, self._loop) if hasattr(value, "__aenter__") else value

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(iterator.aclose())  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if inspect.isasyncgen(result):
                return self._iterate(result)
            if inspect.isawaitable(result):
                return self._wrap(self._run(result))
            return result

        return call

    def __enter__(self) -> Blocking:
        self._run(self._target.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._run(self._target.__aexit__(*exc))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop()
    thread = threading.Thread(target=made.run_forever, daemon=True)
    thread.start()
    yield made
    made.call_soon_threadsafe(made.stop)
    thread.join(timeout=10)


@pytest.fixture(params=["sync", "async"])
def twin(request, wide_server: ThreadedServer, loop) -> Iterator[Any]:
    if request.param == "sync":
        with LstmClient(wide_server.target, timeout=30) as client:
            yield client
        return

    async def make() -> AsyncLstmClient:
        return AsyncLstmClient(wide_server.target, timeout=30)

    client = Blocking(asyncio.run_coroutine_threadsafe(make(), loop).result(10), loop)
    with client:
        yield client


def test_predict_one_sequence_and_a_batch(twin, wide_reference: NumpyLstm, rng) -> None:
    x = rng.normal(size=(6, 8)).astype(np.float32)
    one = twin.predict(x)
    seq, h, c = wide_reference.run(x)
    np.testing.assert_allclose(one.sequence, seq, atol=TOL)
    np.testing.assert_allclose(one.state[0], h, atol=TOL)
    np.testing.assert_allclose(one.state[1], c, atol=TOL)
    batch = twin.predict(np.stack([x, x[::-1]]))
    assert batch.sequence.shape == (2, 6, 16)
    np.testing.assert_allclose(batch.sequence[0], seq, atol=TOL)
    many = twin.predict_many([x[:2], x])
    assert [r.sequence.shape for r in many] == [(2, 16), (6, 16)]


def test_stream_yields_chunks_then_the_final_state(twin, rng) -> None:
    x = rng.normal(size=(9, 8)).astype(np.float32)
    items = list(twin.stream(x, timesteps_per_message=4))
    chunks = [i for i in items if isinstance(i, StreamChunk)]
    assert [c.start_timestep for c in chunks] == [0, 4, 8]
    assert isinstance(items[-1], FinalState)
    whole = twin.predict(x)
    np.testing.assert_allclose(np.concatenate([c.hidden for c in chunks]), whole.sequence, atol=TOL)
    np.testing.assert_allclose(items[-1].h, whole.h, atol=TOL)


def _stream_endings(server: ThreadedServer) -> dict[str, float]:
    registry = server.server.metrics.registry
    labels = {"grpc_type": "server_stream", "grpc_service": "lstm.v1.LstmService"}
    return {
        code: registry.get_sample_value(
            "grpc_server_handled_total",
            {**labels, "grpc_method": "PredictStream", "grpc_code": code},
        )
        or 0.0
        for code in ("OK", "CANCELLED")
    }


def test_stopping_a_stream_early_cancels_the_call(twin, wide_server: ThreadedServer, rng) -> None:
    before = _stream_endings(wide_server)
    stream = twin.stream(rng.normal(size=(10_000, 8)).astype(np.float32))
    assert isinstance(next(stream), StreamChunk)
    stream.close()
    deadline = time.monotonic() + 20
    while (after := _stream_endings(wide_server)) == before:
        assert time.monotonic() < deadline, "the server never saw the stream end"
        time.sleep(0.02)
    assert after["CANCELLED"] == before["CANCELLED"] + 1
    assert after["OK"] == before["OK"]


def test_session_steps_chain_and_state_round_trips(twin, wide_reference, rng) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    with twin.session(ttl=60) as session:
        first = session.step(x[:2])
        second = session.step(x[2:])
        assert (first.step_number, second.step_number, session.step_count) == (1, 2, 2)
        seq, h, c = wide_reference.run(x)
        np.testing.assert_allclose(np.concatenate([first.sequence, second.sequence]), seq, atol=TOL)
        np.testing.assert_allclose(session.state[0], h, atol=TOL)
        exported = session.refresh()
        assert exported.step_count == 2
        np.testing.assert_allclose(exported.c, c, atol=TOL)
        attached = twin.attach(session.session_id)
        assert attached.step_count == 2
        reset = session.reset()
        assert reset.step_count == 0
        assert session.step_count == 0
        np.testing.assert_array_equal(session.state[0], np.zeros(16))
        session_id = session.session_id
    with pytest.raises(LstmError) as closed:
        twin.attach(session_id)
    assert closed.value.code == grpc.StatusCode.NOT_FOUND
    assert "was closed" in closed.value.details


def test_stream_session_and_resume(twin, wide_reference, rng) -> None:
    x = rng.normal(size=(6, 8)).astype(np.float32)
    results = list(twin.stream_session([x[:1], x[1:3]], close_on_end=False))
    assert [r.step_number for r in results] == [1, 2]
    session_id = results[0].session_id
    more = list(twin.stream_session([x[3:]], session_id=session_id, close_on_end=True))
    assert [r.step_number for r in more] == [3]
    _, h, _ = wide_reference.run(x)
    np.testing.assert_allclose(more[0].h, h, atol=TOL)
    with pytest.raises(LstmError) as gone:
        twin.attach(session_id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_a_pipelined_stream_session_equals_one_call(twin, wide_reference, rng) -> None:
    x = rng.normal(size=(20, 8)).astype(np.float32)
    results = list(twin.stream_session([x[t : t + 1] for t in range(20)], window=8))
    assert [r.step_number for r in results] == list(range(1, 21))
    seq, h, c = wide_reference.run(x)
    np.testing.assert_allclose(np.concatenate([r.sequence for r in results]), seq, atol=TOL)
    np.testing.assert_allclose(results[-1].h, h, atol=TOL)
    np.testing.assert_allclose(results[-1].c, c, atol=TOL)
    with pytest.raises(LstmError, match="1 to 64 steps may be in flight") as refused:
        list(twin.stream_session([x], window=0))
    assert refused.value.reason == "INVALID_INPUT"


def test_a_refused_step_in_a_window_raises_its_error(twin, rng) -> None:
    good = rng.normal(size=(1, 8))
    chunks = [good, good, rng.normal(size=(1, 2)), good, good]
    seen: list[int] = []

    def step_through() -> None:
        seen.extend(result.step_number for result in twin.stream_session(chunks, window=4))

    with pytest.raises(LstmError) as in_band:
        step_through()
    assert seen == [1, 2]
    assert in_band.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected input_features=8" in in_band.value.details


def test_errors_carry_code_details_and_violations(twin, rng) -> None:
    with pytest.raises(LstmError) as bad:
        twin.predict(rng.normal(size=(2, 3)))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.value.violations] == [
        "sequences[0].timesteps[0].values",
        "sequences[0].timesteps[1].values",
    ]
    with pytest.raises(LstmError) as in_band:
        list(twin.stream_session([rng.normal(size=(1, 8)), rng.normal(size=(1, 2))]))
    assert in_band.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected input_features=8" in in_band.value.details


ARGUMENT_MISTAKES = {
    "a negative ttl": lambda twin, x: twin.session(ttl=-1),
    "an unknown include": lambda twin, x: twin.predict(x, include=["everything"]),
    "a negative model version": lambda twin, x: twin.with_model("m", -1),
    "an input of four axes": lambda twin, x: twin.predict(x[None, None]),
    "words for numbers": lambda twin, x: twin.predict([["one", "two"]]),
    "a negative message size": lambda twin, x: list(twin.stream(x, timesteps_per_message=-1)),
    "no steps in flight": lambda twin, x: list(twin.stream_session([x], window=0)),
    "token ids of two axes": lambda twin, x: twin.predict_many([np.ones((2, 2), np.int64)]),
}


@pytest.mark.parametrize("mistake", sorted(ARGUMENT_MISTAKES))
def test_every_argument_mistake_is_an_lstm_error_with_invalid_input(twin, mistake, rng) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    with pytest.raises(LstmError) as refused:
        ARGUMENT_MISTAKES[mistake](twin, x)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason == "INVALID_INPUT"
    assert refused.value.details
    assert twin.predict(x).sequence.shape == (3, 16)  # the client still works


def test_closing_a_session_is_idempotent(twin, rng) -> None:
    session = twin.session()
    session.step(rng.normal(size=(1, 8)))
    other = twin.attach(session.session_id)
    session.close()
    session.close()  # again: done, not NOT_FOUND
    other.close()  # closed through another handle: done too
    with pytest.raises(LstmError) as gone:
        twin.attach(session.session_id)
    assert gone.value.reason == "SESSION_CLOSED"


def test_a_request_over_the_servers_limit_is_refused_before_it_is_sent(twin, rng) -> None:
    """64 sequences of 2,500 timesteps of 8 features: about 5.8 MB, over the 4 MiB limit."""
    x = rng.normal(size=(64, 2500, 8)).astype(np.float32)
    with pytest.raises(LstmError) as refused:
        twin.predict(x)
    error = refused.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "LIMIT_EXCEEDED"
    assert error.metadata == {"limit": "max_message_bytes", "value": str(4 * 1024 * 1024)}
    assert "more than the server's limit of 4194304 bytes" in error.details
    with pytest.raises(LstmError) as streamed:
        list(twin.stream(x))
    assert streamed.value.reason == "LIMIT_EXCEEDED"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_creating_a_session_waits_for_a_server_that_is_starting(kind: str, rng) -> None:
    """The server comes up a second after the call: the creation is retried as a step is."""
    port = free_port()
    started: list[ThreadedServer] = []
    later = threading.Timer(1.0, lambda: started.append(ThreadedServer(settings(port=port))))
    later.start()
    try:
        if kind == "sync":
            with LstmClient(f"127.0.0.1:{port}", timeout=5) as client, client.session() as session:
                assert session.step([[0.5]]).step_number == 1
        else:

            async def main() -> int:
                async with (
                    AsyncLstmClient(f"127.0.0.1:{port}", timeout=5) as client,
                    await client.session() as session,
                ):
                    return (await session.step([[0.5]])).step_number

            assert asyncio.run(main()) == 1
    finally:
        later.join()
        for server in started:
            server.stop()


def test_resuming_after_a_lost_reply_applies_no_step_twice(
    twin, wide_server: ThreadedServer, wide_reference, rng
) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    chunks = [x[:1], x[1:2], x[2:4], x[4:]]
    with grpc.insecure_channel(wide_server.target) as channel:
        stub = pb_grpc.LstmServiceStub(channel)
        outbox: queue.SimpleQueue = queue.SimpleQueue()
        outbox.put(pb.SessionStreamRequest(open=pb.OpenSession(create=pb.CreateSessionRequest())))
        replies = stub.StreamSession(iter(outbox.get, None))
        session_id = next(replies).session.session_id
        for number, chunk in enumerate(chunks[:3], start=1):
            step = pb.SessionStep(input=seq_msg(chunk), step_number=number)
            outbox.put(pb.SessionStreamRequest(step=step))
            if number < 3:
                next(replies)
        deadline = time.monotonic() + 10  # step 3 is applied; its reply is never read
        while stub.GetSession(pb.GetSessionRequest(session_id=session_id)).step_count < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        replies.cancel()  # the connection is lost
    resumed = list(twin.stream_session(chunks[2:], session_id=session_id, first_step_number=3))
    assert [r.step_number for r in resumed] == [3, 4]  # 3 answered again, not applied again
    _, h, c = wide_reference.run(x)
    np.testing.assert_allclose(resumed[-1].h, h, atol=TOL)
    np.testing.assert_allclose(resumed[-1].c, c, atol=TOL)
    assert twin.attach(session_id).step_count == 4
