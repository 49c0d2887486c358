"""Two replicas on one real Redis: each exports the sessions it holds or touched, and both the
same store-wide count, so a dashboard that sums the first and takes the max of the second shows
the true number of sessions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from lstm_client import LstmClient

from tests.helpers import scrape, value
from tests.redis_server import RedisServer
from tests.servers import ThreadedServer, free_port, settings


def _url(server: ThreadedServer) -> str:
    assert server.server.metrics_server is not None
    return f"http://127.0.0.1:{server.server.metrics_server.port}/metrics"


def test_per_replica_and_store_wide_session_counts(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    servers = [
        ThreadedServer(
            settings(session_store=redis.url, metrics_port=free_port(), features=2, units=3)
        )
        for _ in range(2)
    ]
    try:
        with LstmClient(servers[0].target) as a, LstmClient(servers[1].target) as b:
            on_a = [a.session() for _ in range(3)]
            on_b = [b.session() for _ in range(2)]
            for session in on_a + on_b:
                session.step(np.ones((1, 2), np.float32))
            time.sleep(0.6)  # a sweep (every 0.2 s) counts the store on each replica
            first, second = (scrape(_url(s)) for s in servers)
            assert value(first, "lstm_sessions_active") == 3
            assert value(second, "lstm_sessions_active") == 2
            assert value(first, "lstm_store_sessions") == 5
            assert value(second, "lstm_store_sessions") == 5
            on_a[0].close()
            time.sleep(0.6)
            first = scrape(_url(servers[0]))
            assert value(first, "lstm_sessions_active") == 2
            assert value(first, "lstm_store_sessions") == 4
    finally:
        for server in servers:
            server.stop()
        redis.stop()
