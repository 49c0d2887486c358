"""An OTLP/gRPC trace receiver that accepts and discards spans: the far end of the benchmark's
traced server. Run as ``python bench/otlp_sink.py --port PORT``."""

from __future__ import annotations

import argparse
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):  # type: ignore[no-untyped-def]
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    server.add_insecure_port(f"127.0.0.1:{parser.parse_args().port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
