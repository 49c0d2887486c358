"""The server's log: text or JSON lines (``--log-format``), each with the trace id of the call
being served (``trace_id``; "-" outside calls)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from lstm_server.transport.access_log import TraceIdFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "trace_id", "message")


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level``, as ``text`` or ``json`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(list(JSON_FIELDS), rename_fields={"asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
