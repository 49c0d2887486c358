"""``lstm-server``: parse settings, serve until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from lstm_server import logs
from lstm_server.app import LstmServer
from lstm_server.config import ConfigError, Settings, load_settings
from lstm_server.core.errors import ModelLoadError, StoreSetupError
from lstm_server.process import one_blas_thread, return_large_buffers_to_the_system

log = logging.getLogger("lstm_server")


async def serve(settings: Settings) -> None:
    one_blas_thread()
    server = LstmServer(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(logs.RepeatedLoopErrors())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    starting = asyncio.ensure_future(server.start())
    signalled = asyncio.ensure_future(stopping.wait())
    await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during start-up: stop without waiting for the model
        starting.cancel()
        log.info("stopping during start-up")
    try:
        await starting
    except asyncio.CancelledError:
        await server.stop(0)
        return
    except BaseException:
        await server.stop(0)
        raise
    return_large_buffers_to_the_system()  # now: the model's load is not slowed by it
    await signalled
    log.info(
        "shutting down; draining %.1f s, then in-flight calls have %.1f s",
        settings.drain,
        settings.grace,
    )
    await server.stop(drain=settings.drain)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ModelLoadError as exc:
        log.error("cannot serve the model: %s", exc)
        sys.exit(2)
    except (ConfigError, StoreSetupError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
