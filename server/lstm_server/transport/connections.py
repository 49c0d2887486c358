"""Bounds on the doors' connections, below what a request can see. gRPC's are capped by gRPC
itself (``grpc.max_allowed_incoming_connections``, within half the open-file limit); the HTTP
door's here: at most ``total`` open at
once and ``per_peer`` from one address; past either, a new connection is closed as soon as it is
accepted, so idle or slow connections (which need no token) cannot take the file descriptors that
gRPC, health checks and metrics need. The time a connection may sit without a whole request
(its first request's headers, or the next one after a reply) is aiohttp's ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)


def within_open_files(limit: int, share: float, flag: str) -> int:
    """``limit`` (0: none), lowered to ``share`` of the process's open-file limit: the rest is
    left for the other ports, the model's files and the session store."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    room = max(1, int(soft * share))
    if limit == 0 or limit > room:
        if limit:
            log.warning(
                "%s %d lowered to %d: %d%% of the open-file limit (%d)",
                flag,
                limit,
                room,
                round(share * 100),
                soft,
            )
        return room
    return limit


class ConnectionCaps:
    """Counts the open connections, in all and per peer address."""

    def __init__(self, total: int, per_peer: int) -> None:
        """``total`` and ``per_peer``: the caps (0: none)."""
        self.total = total
        self.per_peer = per_peer
        self.open = 0
        self.refused = 0
        self._by_peer: Counter[str] = Counter()

    def admit(self, peer: str) -> bool:
        if (self.total and self.open >= self.total) or (
            self.per_peer and self._by_peer[peer] >= self.per_peer
        ):
            self.refused += 1
            return False
        self.open += 1
        self._by_peer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open -= 1
        self._by_peer[peer] -= 1
        if not self._by_peer[peer]:
            del self._by_peer[peer]

    def protocol(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``make()``'s protocols, counted."""
        return lambda: _Counted(self, make)


class _Counted(asyncio.Protocol):
    """One connection: admitted (then served by the protocol ``make`` gives) or closed at once."""

    def __init__(self, caps: ConnectionCaps, make: Callable[[], asyncio.Protocol]) -> None:
        self._caps = caps
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername: Any = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "-"
        if not self._caps.admit(peer):
            cast(asyncio.Transport, transport).abort()
            return
        self._peer = peer
        self._inner = self._make()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._caps.release(self._peer)
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
