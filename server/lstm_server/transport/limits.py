"""A cap on calls in flight, so that overload is refused at once instead of queueing unbounded."""

from __future__ import annotations

from grpc.aio import ServicerContext as Context

from lstm_server.core.errors import LimitExceeded
from lstm_server.transport.errors import abort
from lstm_server.transport.handlers import GateInterceptor


class ConcurrencyLimitInterceptor(GateInterceptor):
    """Refuses calls of the service beyond ``limit`` in flight with RESOURCE_EXHAUSTED at once,
    instead of queueing without bound. Health checks are not counted, so they still answer."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.in_flight = 0

    async def admit(self, context: Context) -> None:
        if self.in_flight >= self.limit:
            error = LimitExceeded(f"the server is at its limit of {self.limit} concurrent calls")
            await abort(context, error)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
