"""Structured JSON logs that carry the request id, incident id and trace id."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
incident_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("incident_id", default="")

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if request_id := request_id_var.get():
            entry["request_id"] = request_id
        if incident_id := incident_id_var.get():
            entry["incident_id"] = incident_id
        # Fields passed with `extra=` land on the record; keep them.
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON line per record on stderr, for the whole process."""
    # The JSON lines carry none of the caller's file and line, thread, process or
    # multiprocessing names: skip finding them for every record (the logging HOWTO's
    # "Optimization": microseconds a record, and the per-RPC line is one record a call).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request's full URL at INFO; a vendor's URL can be its credential
    # (a Teams or webhook URL, a token in a query string).
    logging.getLogger("httpx").setLevel(logging.WARNING)
