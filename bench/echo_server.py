"""The floor: a plain Python gRPC (grpc.aio) echo server, for the benchmark to compare against.

``/bench.Echo/Unary`` and ``/bench.Echo/Stream`` (bidirectional) take raw bytes and answer with
as many zero bytes as the ``x-response-bytes`` metadata asks for: the same payload sizes as the
lstm-serving call being compared, with no work in between.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from functools import cache

import grpc


@cache
def payload(size: int) -> bytes:
    return bytes(size)


def _size(context: grpc.aio.ServicerContext) -> int:
    return int(dict(context.invocation_metadata() or ()).get("x-response-bytes", "0"))


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return payload(_size(context))


async def stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    size = _size(context)
    async for _ in requests:
        yield payload(size)


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
