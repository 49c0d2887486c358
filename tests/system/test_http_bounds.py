"""The doors' connections bounded, on a real server run under a low open-file limit: connections
past the caps are closed at once (HTTP and gRPC), connections that never finish a request are cut
after the idle timeout, a body that does not arrive is 408, and meanwhile gRPC, its health checks
and /healthz answer and the log stays small."""

from __future__ import annotations

import json
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import ServerProcess

NOFILE = 512
IDLE = 2.0


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        ["--http-port", "0", "--http-idle-timeout", str(IDLE), "--http-body-timeout", "1",
         "--max-http-connections", "1000", "--max-http-connections-per-peer", "40"],
        tmp_path_factory.mktemp("logs"),
        preexec_fn=_low_nofile,
    )  # fmt: skip
    yield server
    server.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _grpc_healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_caps_follow_the_open_file_limit(bounded: ServerProcess) -> None:
    """1,000 HTTP connections asked, a quarter of 512 granted; 4,096 gRPC ones by default, half
    of 512 granted; and the log says so."""
    log = bounded.log()
    assert "--max-http-connections 1000 lowered to 128" in log
    assert "--max-grpc-connections 4096 lowered to 256" in log


def test_grpc_connections_past_the_cap_are_closed_and_the_other_ports_answer(
    bounded: ServerProcess,
) -> None:
    held = [_connect(bounded.port) for _ in range(320)]
    try:
        time.sleep(1)
        closed = sum(_closed_by_server(s, 0.2) for s in held)
        assert closed >= 320 - 256
        health = bounded.metrics_url.replace("/metrics", "/healthz")
        assert urllib.request.urlopen(health, timeout=2).status == 200
        url = f"http://127.0.0.1:{bounded.ports['http_port']}/v2/health/live"
        assert json.loads(urllib.request.urlopen(url, timeout=5).read()) == {"live": True}
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while not _grpc_healthy_or_false(bounded.target):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _grpc_healthy_or_false(target: str) -> bool:
    try:
        return _grpc_healthy(target)
    except grpc.RpcError:
        return False


def test_idle_connections_past_the_caps_are_closed_at_once_and_the_rest_cut_when_idle(
    bounded: ServerProcess,
) -> None:
    port = bounded.ports["http_port"]
    held = [_connect(port) for _ in range(100)]
    partial = _connect(port)  # headers begun, never finished: held as long as it is idle
    try:
        refused = [s for s in held if _closed_by_server(s, 0.2)]
        assert len(refused) >= 60  # past 40 from one address
        kept = [s for s in held if s not in refused]
        # gRPC and the metrics port answer while the HTTP door is full
        assert _grpc_healthy(bounded.target)
        health = bounded.metrics_url.replace("/metrics", "/healthz")
        assert urllib.request.urlopen(health, timeout=2).status == 200
        partial.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        assert all(_closed_by_server(s, IDLE + 3) for s in kept)
        assert _closed_by_server(partial, IDLE + 3)
        assert time.monotonic() - began < IDLE + 3
    finally:
        for sock in [*held, partial]:
            sock.close()
    url = f"http://127.0.0.1:{port}/v2/health/live"
    assert json.loads(urllib.request.urlopen(url, timeout=5).read()) == {"live": True}
    assert bounded.process.poll() is None
    assert Path(bounded.log_path).stat().st_size < 200_000


def test_a_body_that_does_not_arrive_is_408_and_its_connection_closed(
    bounded: ServerProcess,
) -> None:
    sock = _connect(bounded.ports["http_port"])
    try:
        sock.sendall(
            b"POST /v2/models/default-lstm/infer HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"inputs"'
        )
        sock.settimeout(5)
        began, reply = time.monotonic(), b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            reply += chunk
        assert time.monotonic() - began < 4
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 1 s" in reply
