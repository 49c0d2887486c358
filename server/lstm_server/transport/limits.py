"""Limits every door enforces: calls in flight (one count for gRPC and HTTP), refused at once
instead of queueing unbounded, and the size of a reply, refused before the work that would
build it is done."""

from __future__ import annotations

from collections import Counter

from lstm_server.core.errors import LimitExceeded
from lstm_server.core.types import Limits
from lstm_server.transport.calls import Call, Method, Policy

HEALTH_WATCH = "Watch"


class ConcurrencyLimitPolicy(Policy):
    """Refuses calls that serve models beyond ``limit`` in flight (0: no cap), or beyond
    ``per_principal`` of one principal, with RESOURCE_EXHAUSTED at once, instead of queueing
    without bound, so that one principal cannot lock the others out. One instance serves every
    door, so gRPC and HTTP calls share the counts. Health checks are not counted."""

    def __init__(self, limit: int, per_principal: int = 0) -> None:
        self.limit = limit
        self.per_principal = per_principal
        self.in_flight = 0
        self._by_principal: Counter[str] = Counter()

    def applies_to(self, method: Method) -> bool:
        return method.serving

    def enter(self, call: Call) -> str:
        who = call.principal
        if self.limit and self.in_flight >= self.limit:
            raise LimitExceeded(
                f"the server is at its limit of {self.limit} concurrent calls",
                limit="max_concurrent_rpcs",
                value=self.limit,
            )
        if self.per_principal and self._by_principal[who] >= self.per_principal:
            raise LimitExceeded(
                f"{'principal ' + repr(who) if who else 'the caller'} is at its limit of "
                f"{self.per_principal} concurrent calls (max_concurrent_rpcs_per_principal)",
                limit="max_concurrent_rpcs_per_principal",
                value=self.per_principal,
            )
        self.in_flight += 1
        self._by_principal[who] += 1
        return who

    def exit(self, call: Call, entered: str) -> None:
        self.in_flight -= 1
        self._by_principal[entered] -= 1
        if not self._by_principal[entered]:
            del self._by_principal[entered]


class HealthWatchLimitPolicy(Policy):
    """Caps open ``grpc.health.v1.Health/Watch`` streams: they need no credentials and each holds
    memory for as long as the caller keeps it open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def applies_to(self, method: Method) -> bool:
        return method.health and method.name == HEALTH_WATCH

    def enter(self, call: Call) -> None:
        if self.open >= self.limit:
            raise LimitExceeded(
                f"the server is at its limit of {self.limit} health watches",
                limit="max_health_watches",
                value=self.limit,
            )
        self.open += 1

    def exit(self, call: Call, entered: None) -> None:
        self.open -= 1


def check_reply_bytes(size: int, limits: Limits, instead: str) -> None:
    """Refuse a request whose reply would exceed ``max_response_bytes`` (0: no limit)."""
    limit = limits.max_response_bytes
    if limit and size > limit:
        raise LimitExceeded(
            f"the reply would take about {size} bytes, more than the limit "
            f"max_response_bytes={limit}; {instead}",
            limit="max_response_bytes",
            value=limit,
        )
