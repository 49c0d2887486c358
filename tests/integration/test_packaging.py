"""The client package stays light; the server answers health checks and reflection."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.servers import ThreadedServer, settings


def test_importing_the_client_does_not_import_tensorflow() -> None:
    code = (
        "import sys, lstm_client, lstm_client.cli, lstm_client.aio\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras'})\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_health_reports_serving(wide_server) -> None:
    with grpc.insecure_channel(wide_server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lstm.v1.LstmService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _reflected_services(target: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request])))
        return sorted(s.name for s in reply.list_services_response.service)


def test_reflection_lists_the_service_and_describes_it(wide_server) -> None:
    assert "lstm.v1.LstmService" in _reflected_services(wide_server.target)
    with grpc.insecure_channel(wide_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="lstm.v1.LstmService"
        )
        (reply,) = list(stub.ServerReflectionInfo(iter([request])))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_reflection_can_be_turned_off() -> None:
    server = ThreadedServer(settings(reflection=False))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _reflected_services(server.target)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()
