"""A bounded stress run against a real server process: valid and invalid steps, cancelled streams,
expiring and closed sessions from 8 concurrent clients. Afterwards no session is left behind,
every surviving session matches its reference, and memory has not kept growing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from lstm_client import AsyncLstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import scrape, seq_msg, value
from tests.reference import NumpyLstm
from tests.servers import ServerProcess

CLIENTS = 8
ROUND_SECONDS = 6.0


async def worker(target: str, seed: int, until: float) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """One client's mix of traffic; returns (inputs, outputs) of the sessions it keeps open."""
    rng = np.random.default_rng(seed)
    kept = []
    async with (
        AsyncLstmClient(target, timeout=20) as client,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.LstmServiceStub(channel)
        while time.monotonic() < until:
            kind = rng.integers(5)
            if kind == 0:  # a session that steps, with invalid steps in between, and stays open
                session = await client.session()
                x = rng.normal(size=(int(rng.integers(2, 6)), 4)).astype(np.float32)
                outputs = []
                for t in range(len(x)):
                    with pytest.raises(LstmError) as caught:
                        await session.step(np.ones((1, 3)))  # wrong feature count
                    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
                    outputs.append((await session.step(x[t : t + 1])).sequence)
                kept.append((session.session_id, x, outputs))
            elif kind == 1:  # a session that is closed
                async with await client.session() as session:
                    await session.step(rng.normal(size=(2, 4)))
            elif kind == 2:  # a session left to expire
                session = await client.session(ttl=1)
                await session.step(rng.normal(size=(1, 4)))
            elif kind == 3:  # a stream cancelled after its first message
                call = stub.PredictStream(pb.PredictRequest(sequences=[seq_msg(np.ones((500, 4)))]))
                await call.read()
                call.cancel()
            else:  # a bad request
                with pytest.raises(LstmError) as caught:
                    await client.predict(np.full((2, 4), np.nan))
                assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return kept


async def stress_round(target: str, seed: int) -> list:
    until = time.monotonic() + ROUND_SECONDS
    results = await asyncio.gather(*(worker(target, seed * 100 + i, until) for i in range(CLIENTS)))
    return [s for kept in results for s in kept]


def test_stress(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    server = ServerProcess(
        ["--features", "4", "--units", "16", "--reap-interval", "0.5", "--save-model", str(model)],
        log_dir=tmp_path,
    )
    try:
        reference = NumpyLstm.from_saved_model(model)
        kept = asyncio.run(stress_round(server.target, 1))  # also warms every code path
        rss_warm = value(scrape(server.metrics_url), "process_resident_memory_bytes")
        kept += asyncio.run(stress_round(server.target, 2))
        rss_after = value(scrape(server.metrics_url), "process_resident_memory_bytes")
        time.sleep(2.0)  # every ttl=1 session expires and is reaped
        samples = scrape(server.metrics_url)
        assert value(samples, "lstm_sessions_active") == len(kept)
        assert value(samples, "lstm_sessions_ended_total", reason="expired") > 0
        assert value(samples, "lstm_sessions_ended_total", reason="closed") > 0

        async def verify() -> None:
            async with AsyncLstmClient(server.target) as client:
                for sid, x, outputs in kept:
                    seq, _h, c = reference.run(x)
                    np.testing.assert_allclose(np.concatenate(outputs), seq, atol=1e-5)
                    session = await client.attach(sid)
                    assert session.step_count == len(x)
                    np.testing.assert_allclose(session.state[1], c, atol=1e-5)
                    await session.close()

        asyncio.run(verify())
        assert value(scrape(server.metrics_url), "lstm_sessions_active") == 0
        growth = rss_after - rss_warm
        assert growth < 64 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB in one round"
        assert len(kept) > CLIENTS
    finally:
        assert server.stop() == 0, server.log()
