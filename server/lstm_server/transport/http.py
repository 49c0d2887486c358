"""The operators' HTTP endpoint, on its own threads: ``/metrics`` for Prometheus, ``/healthz``
(the process is alive) and ``/readyz`` (it serves: model warm, session store reachable).

The probes are plain HTTP whatever TLS the gRPC port uses, and they answer from the moment the
process starts, before the gRPC port opens, so Docker, Kubernetes and load balancers can ask.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


class _QuietHandler(WSGIRequestHandler):
    # Seconds a connection's reads may wait (socketserver's socket timeout): each connection
    # holds a thread, so one that sends nothing must not hold it for ever.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""


def _answer(start_response: Callable[..., Any], ok: bool) -> Iterable[bytes]:
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok\n" if ok else b"not ready\n"]


class OpsHttpServer:
    """``/metrics`` of ``registry``, ``/healthz`` and ``/readyz`` (``ready()``) on host:port."""

    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, *, ready: Callable[[], bool]
    ) -> None:
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return _answer(start_response, True)
            if path == "/readyz":
                return _answer(start_response, ready())
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
        self._server: WSGIServer = make_server(
            host, port, app, server_class, handler_class=_QuietHandler
        )
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ops-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
