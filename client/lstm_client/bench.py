"""A load generator for lstm-serving (and, for comparison, any gRPC method taking raw bytes).

Requests are serialized once up front and sent as raw bytes, so the figures are the server's and
the transport's, not this process's protobuf encoding. Each of ``concurrency`` workers keeps one
call in flight for ``duration`` seconds; latencies are per call (per message on a stream).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from lstm_client.connection import NO_RETRIES, ChannelSettings, TlsOptions, open_channel
from lstm_client.v1 import lstm_service_pb2 as pb

SERVICE = "/lstm.v1.LstmService/"


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    concurrency: int
    seconds: float
    latencies: np.ndarray  # seconds, one per call or stream message
    first_message: np.ndarray | None = None  # server streams: seconds to the first message

    @property
    def requests(self) -> int:
        return int(self.latencies.size)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.requests else float("nan")

    def row(self, timesteps_per_request: int) -> dict[str, float]:
        return {
            "concurrency": self.concurrency,
            "requests/s": self.rps,
            "timesteps/s": self.rps * timesteps_per_request,
            "p50 ms": self.percentile(50) * 1e3,
            "p90 ms": self.percentile(90) * 1e3,
            "p99 ms": self.percentile(99) * 1e3,
        }


async def _run(workers: Sequence[asyncio.Future[None]], began: float) -> float:
    await asyncio.gather(*workers)
    return time.perf_counter() - began


async def unary_load(
    channel: grpc.aio.Channel, method: str, request: bytes, concurrency: int, duration: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> LoadResult:  # fmt: skip
    call = channel.unary_unary(method)
    latencies: list[float] = []
    end = time.perf_counter() + duration

    async def worker() -> None:
        while (start := time.perf_counter()) < end:
            await call(request, metadata=metadata)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    seconds = await _run([asyncio.ensure_future(worker()) for _ in range(concurrency)], began)
    return LoadResult(concurrency, seconds, np.array(latencies))


async def server_stream_load(
    channel: grpc.aio.Channel, method: str, request: bytes, concurrency: int, duration: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> LoadResult:  # fmt: skip
    """Latency is to the last message of each stream; ``first_message`` to the first."""
    call = channel.unary_stream(method)
    latencies: list[float] = []
    firsts: list[float] = []
    end = time.perf_counter() + duration

    async def worker() -> None:
        while (start := time.perf_counter()) < end:
            first = None
            async for _ in call(request, metadata=metadata):
                if first is None:
                    first = time.perf_counter() - start
            latencies.append(time.perf_counter() - start)
            firsts.append(first if first is not None else float("nan"))

    began = time.perf_counter()
    seconds = await _run([asyncio.ensure_future(worker()) for _ in range(concurrency)], began)
    return LoadResult(concurrency, seconds, np.array(latencies), np.array(firsts))


async def bidi_load(
    channel: grpc.aio.Channel, method: str, opening: bytes | None, message: bytes,
    concurrency: int, duration: float, metadata: tuple[tuple[str, str], ...] = (),
    window: int = 1,
) -> LoadResult:  # fmt: skip
    """Each worker holds one stream open and keeps ``window`` messages in flight (1: it sends
    ``message`` after each reply); a latency is from a message's send to its reply."""
    call_factory = channel.stream_stream(method)
    latencies: list[float] = []
    end = time.perf_counter() + duration

    async def worker() -> None:
        call = call_factory(metadata=metadata)
        if opening is not None:
            await call.write(opening)
            await call.read()
        sent: deque[float] = deque()
        room = asyncio.Semaphore(window)

        async def send() -> None:
            while time.perf_counter() < end:
                await room.acquire()
                sent.append(time.perf_counter())
                await call.write(message)
            await call.done_writing()

        sender = asyncio.ensure_future(send())
        try:
            while await call.read() is not grpc.aio.EOF:
                latencies.append(time.perf_counter() - sent.popleft())
                room.release()
        finally:
            sender.cancel()

    began = time.perf_counter()
    seconds = await _run([asyncio.ensure_future(worker()) for _ in range(concurrency)], began)
    return LoadResult(concurrency, seconds, np.array(latencies))


def predict_request(features: int, timesteps: int, batch: int, seed: int = 0) -> pb.PredictRequest:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(batch, timesteps, features)).astype(np.float32)
    return pb.PredictRequest(
        sequences=[pb.Sequence(timesteps=[pb.Vector(values=r) for r in s.tolist()]) for s in x]
    )


def session_messages(
    features: int, timesteps: int, seed: int = 0, window: int = 1
) -> tuple[bytes, bytes]:
    """The opening message of a session stream (closed at its end; ``window`` steps in
    flight) and one step (append)."""
    sequence = predict_request(features, timesteps, 1, seed).sequences[0]
    opening = pb.SessionStreamRequest(
        open=pb.OpenSession(create=pb.CreateSessionRequest(), close_on_end=True, window=window)
    )
    step = pb.SessionStreamRequest(step=pb.SessionStep(input=sequence, step_number=0))
    return opening.SerializeToString(), step.SerializeToString()


async def lstm_load(
    target: str, rpc: str, features: int, timesteps: int, batch: int, concurrency: int,
    duration: float, metadata: tuple[tuple[str, str], ...] = (), tls: TlsOptions | None = None,
    window: int = 1,
) -> LoadResult:  # fmt: skip
    """Drive one lstm-serving RPC (``predict``, ``stream`` or ``session``) at a concurrency,
    over TLS if ``tls`` is given (``metadata`` carries a token, if any); session streams keep
    ``window`` steps in flight."""
    settings = ChannelSettings(tls=tls, retry=NO_RETRIES)
    async with open_channel(target, settings, aio=True) as channel:
        if rpc == "session":
            opening, step = session_messages(features, timesteps, window=window)
            return await bidi_load(
                channel, SERVICE + "StreamSession", opening, step, concurrency, duration,
                metadata, window,
            )  # fmt: skip
        request = predict_request(features, timesteps, batch).SerializeToString()
        if rpc == "stream":
            return await server_stream_load(
                channel, SERVICE + "PredictStream", request, concurrency, duration, metadata
            )
        return await unary_load(
            channel, SERVICE + "Predict", request, concurrency, duration, metadata
        )
