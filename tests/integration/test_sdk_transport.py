"""The SDK's transport and its exactly-once promise, tried against real servers: large messages
both ways, a stream that lives longer than its per-step timeout, an async generator feeding a
stream, a reply lost mid-stream then resumed by the SDK itself, a body's exception inside
``with session``, channel options, a caller's own channel, wait-for-ready and compression."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import grpc
import numpy as np
import pytest
from lstm_client import AsyncLstmClient, LstmClient, LstmError, RetryPolicy

from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, free_port, settings

FAST_RETRY = RetryPolicy(attempts=6, initial_backoff=0.05, max_backoff=0.5)


def test_predict_larger_than_4_mib_both_ways(rng) -> None:
    server = ThreadedServer(
        settings(features=64, units=64, max_message_bytes=16 << 20, max_timesteps=40_000)
    )
    try:
        with LstmClient(server.target, timeout=120) as client:
            x = rng.normal(size=(24_000, 64)).astype(np.float32)  # about 6.3 MB each way
            result = client.predict(x)
            assert result.sequence is not None
            assert result.sequence.shape == (24_000, 64)
            np.testing.assert_allclose(result.sequence[-1], result.h)
    finally:
        server.stop()


def test_a_session_stream_outlives_its_per_step_timeout(wide_server, rng) -> None:
    x = rng.normal(size=(6, 8)).astype(np.float32)

    def slowly() -> Iterator[np.ndarray]:
        for t in range(6):
            time.sleep(0.3)  # 1.8 s in all, six times the timeout of one step
            yield x[t : t + 1]

    with LstmClient(wide_server.target, timeout=0.3 + 5) as client:
        whole = client.predict(x)
    with LstmClient(wide_server.target, timeout=1.0) as client:
        stepped = [r.sequence for r in client.stream_session(slowly())]
    np.testing.assert_allclose(np.concatenate(stepped), whole.sequence, atol=1e-5)


async def test_an_async_generator_feeds_a_session_stream(wide_server, rng) -> None:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

    async def from_queue() -> AsyncIterator[np.ndarray]:
        while (chunk := await queue.get()) is not None:
            yield chunk

    async with AsyncLstmClient(wide_server.target, timeout=30) as client:
        whole = await client.predict(x)
        for t in range(5):
            queue.put_nowait(x[t : t + 1])
        queue.put_nowait(None)
        stepped = [r.sequence async for r in client.stream_session(from_queue())]
    np.testing.assert_allclose(np.concatenate(stepped), whole.sequence, atol=1e-5)


class LossyProxy:
    """A gRPC relay of StreamSession to a backend that, once, drops the reply it is told to and
    breaks the stream with UNAVAILABLE, as a lost connection does. Replies are counted from the
    opening's (1), so reply 3 is the reply to step 2."""

    def __init__(self, backend: str, drop_reply: int, linger: float = 0.0) -> None:
        self.backend = backend
        self.drop_reply: int | None = drop_reply
        self.linger = linger  # seconds the backend gets to apply steps in flight before the break
        self.streams = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.target = f"127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._channel = grpc.aio.insecure_channel(self.backend)
        self._server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(self._relay)
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "lstm.v1.LstmService", {"StreamSession": handler}
                )
            ]
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    async def _relay(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
        self.streams += 1
        call = self._channel.stream_stream("/lstm.v1.LstmService/StreamSession")()

        async def forward() -> None:
            async for message in requests:
                await call.write(message)
            await call.done_writing()

        pump = asyncio.ensure_future(forward())
        try:
            count = 0
            async for reply in call:
                count += 1
                if count == self.drop_reply:
                    self.drop_reply = None
                    await asyncio.sleep(self.linger)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
                yield reply
        finally:
            pump.cancel()
            call.cancel()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("twin", ["sync", "asyncio"])
def test_a_lost_reply_is_resumed_by_the_sdk_and_applied_once(
    wide_server, wide_reference: NumpyLstm, rng, twin: str, window: int
) -> None:
    x = rng.normal(size=(8, 8)).astype(np.float32)
    chunks = [x[0:1], x[1:3], *(x[t : t + 1] for t in range(3, 8))]
    # Step 2's reply is lost; with a window of 4, steps 3-5 are applied meanwhile and their
    # replies lost with the stream: the resumed stream gets all four from the kept replies.
    proxy = LossyProxy(wide_server.target, drop_reply=3, linger=0.3)
    try:
        if twin == "sync":
            with LstmClient(proxy.target, timeout=30, retry=FAST_RETRY) as client:
                results = list(client.stream_session(chunks, close_on_end=False, window=window))
        else:

            async def run() -> list:
                async with AsyncLstmClient(proxy.target, timeout=30, retry=FAST_RETRY) as client:
                    stream = client.stream_session(chunks, close_on_end=False, window=window)
                    return [r async for r in stream]

            results = asyncio.run(run())
    finally:
        proxy.stop()
    assert proxy.streams == 2  # broken once, resumed once
    assert [r.step_number for r in results] == list(range(1, 8))
    seq, _, c = wide_reference.run(x)
    np.testing.assert_allclose(np.concatenate([r.sequence for r in results]), seq, atol=1e-5)
    with LstmClient(wide_server.target) as client:
        session = client.attach(results[0].session_id)
        assert session.step_count == 7  # every step was applied once
        np.testing.assert_allclose(session.info.c, c, atol=1e-5)
        session.close()


def _lost_then(client: LstmClient, body_error: Exception | None) -> None:
    """A ``with session`` block whose session the server no longer knows (a store that lost it),
    so that closing it on exit fails; the block ends with ``body_error``, or normally. (A session
    closed by someone else closes without error: close is idempotent.)"""
    with client.session() as session:
        client.attach(session.session_id).close()
        session.info = replace(session.info, session_id="lost-" + session.session_id)
        if body_error is not None:
            raise body_error


def test_a_body_exception_is_not_hidden_by_closing_the_session(wide_server) -> None:
    with LstmClient(wide_server.target) as client:
        with pytest.raises(ValueError, match="the body's own"):
            _lost_then(client, ValueError("the body's own error"))
        with pytest.raises(LstmError) as closed:
            _lost_then(client, None)
        assert closed.value.reason == "SESSION_NOT_FOUND"  # without a body error, it is reported


def test_a_callers_channel_per_call_options_and_compression(wide_server, rng) -> None:
    x = rng.normal(size=(3, 8)).astype(np.float32)
    channel = grpc.insecure_channel(wide_server.target)
    with LstmClient(channel=channel, compression=grpc.Compression.Gzip) as client:
        first = client.predict(x, timeout=30, metadata=[("x-request-id", "abc")])
    # The client did not close the caller's channel.
    with LstmClient(channel=channel) as again:
        np.testing.assert_allclose(again.predict(x).h, first.h)
    channel.close()
    options = [("grpc.lb_policy_name", "round_robin"), ("grpc.max_receive_message_length", 1024)]
    with LstmClient(wide_server.target, options=options) as small, pytest.raises(LstmError) as big:
        small.predict(np.zeros((100, 8), np.float32))  # a reply over the limit the caller set
    assert big.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_wait_for_ready_waits_for_a_server_that_starts_later() -> None:
    port = free_port()
    got: list[object] = []

    def call() -> None:
        with LstmClient(f"127.0.0.1:{port}", timeout=60, wait_for_ready=True) as client:
            got.append(client.metadata())

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)
    assert not got  # still waiting, not failed
    server = ThreadedServer(settings(port=port))
    try:
        caller.join(60)
    finally:
        server.stop()
    assert len(got) == 1


def test_errors_carry_reasons_the_caller_can_act_on(wide_server, rng) -> None:
    x = rng.normal(size=(2, 8)).astype(np.float32)
    with LstmClient(wide_server.target) as client:
        with pytest.raises(LstmError) as missing:
            client.attach("no-such-session")
        assert (missing.value.reason, missing.value.metadata) == (
            "SESSION_NOT_FOUND",
            {"session_id": "no-such-session"},
        )
        with client.session() as session:
            session.step(x)
            session.info = session.info.__class__(
                **{**session.info.__dict__, "step_count": 5}
            )  # a client that lost count: its next step is numbered 6
            with pytest.raises(LstmError) as out_of_order:
                session.step(x)
        assert out_of_order.value.reason == "STEP_OUT_OF_ORDER"
        assert out_of_order.value.metadata["expected_step_number"] == "2"
        with pytest.raises(LstmError) as bad:
            client.predict(np.zeros((2, 3), np.float32))
        assert bad.value.reason == "INVALID_INPUT"
        assert bad.value.violations


@pytest.mark.parametrize("twin", ["sync", "asyncio"])
def test_a_reply_that_does_not_come_in_time_is_deadline_exceeded(
    wide_server, rng, twin: str
) -> None:
    chunks = [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(4)]
    proxy = LossyProxy(wide_server.target, drop_reply=3, linger=5.0)  # step 2's reply stalls

    def step_through() -> None:
        if twin == "sync":
            with LstmClient(proxy.target, timeout=0.5, retry=FAST_RETRY) as client:
                list(client.stream_session(chunks, window=2))
            return

        async def run() -> None:
            async with AsyncLstmClient(proxy.target, timeout=0.5) as client:
                async for _ in client.stream_session(chunks, window=2):
                    pass

        asyncio.run(run())

    began = time.monotonic()
    try:
        with pytest.raises(LstmError) as late:
            step_through()
    finally:
        proxy.stop()
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message within 0.5 s" in late.value.details
    assert time.monotonic() - began < 4.5  # the watchdog fired, not the proxy's break
