"""``lstm-server``'s entry point. The server's dependencies are the ``server`` extra: a client-only
install (``pip install lstm-serving``) says so and exits 2 instead of ending in a traceback."""

from __future__ import annotations

import importlib.util
import sys

# Import names of the ``server`` extra's packages.
SERVER_MODULES = (
    "tensorflow",
    "keras",
    "prometheus_client",
    "grpc_health",
    "grpc_reflection",
    "redis",
    "pythonjsonlogger",
    "aiohttp",
    "orjson",
)


def missing_modules() -> list[str]:
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    missing = missing_modules()
    if missing:
        sys.stderr.write(
            "lstm-server: this installation has the client only (missing: "
            f"{', '.join(missing)}); install the server with: pip install 'lstm-serving[server]'\n"
        )
        sys.exit(2)
    from lstm_server.cli import main as serve

    serve()
