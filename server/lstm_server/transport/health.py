"""gRPC health: readiness for ``""`` and the service, and a ``liveness`` service that stays SERVING
while the process runs. A watcher re-checks readiness (the session store answers) periodically."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

# Liveness under its own name stays SERVING while the process runs, even when the session store
# is down: an orchestrator should take the replica out of rotation, not restart it.
LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """Owns the health servicer's statuses; ``watch`` re-checks ``probe`` every ``interval``."""

    def __init__(
        self, *service_names: str, on_change: Callable[[bool], None] | None = None
    ) -> None:
        """``on_change(ready)`` is told of every change (metrics export it)."""
        self.servicer = health.aio.HealthServicer()
        self._names = ("", *service_names)
        self._ready = False
        self._watcher: asyncio.Task[None] | None = None
        self._on_change = on_change

    def ready(self) -> bool:
        """Whether the server serves now (what ``/readyz`` reports)."""
        return self._ready

    async def starting(self) -> None:
        """Live, not ready: the model is loading."""
        await self.servicer.set(LIVENESS, SERVING)
        await self._set(NOT_SERVING)

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in self._names:
            await self.servicer.set(name, status)

    async def update(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if self._on_change is not None:
            self._on_change(ready)
        await self._set(SERVING if ready else NOT_SERVING)
        log.log(
            logging.INFO if ready else logging.WARNING,
            "readiness: %s",
            "SERVING" if ready else "NOT_SERVING (the session store is unreachable)",
        )

    async def watch(self, probe: Callable[[], Awaitable[bool]], interval: float) -> None:
        """Set readiness from ``probe`` now, then every ``interval`` seconds until ``stop``."""
        await self.update(await probe())

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.update(await probe())

        self._watcher = asyncio.get_running_loop().create_task(loop(), name="readiness")

    async def stop(self) -> None:
        """NOT_SERVING for every service (liveness included): the process is going away."""
        self._ready = False
        if self._on_change is not None:
            self._on_change(False)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.servicer.enter_graceful_shutdown()
