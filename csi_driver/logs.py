"""Logging: text for humans or one JSON object per line (``--log-format json``).

An RPC's log line carries structured fields (volume id, pod, reference, resolved
digest, mode, duration, gRPC code). The interceptor opens a field set per call,
and the Node service adds what only it knows (the digest) with :func:`annotate`,
through a context variable, so no signature in the data flow has to carry it.
Nothing here ever receives a secret: the request's ``secrets`` never become fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

_fields: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar("rpc_fields", default=None)


def open_fields(**initial: object) -> dict[str, object]:
    fields = dict(initial)
    _fields.set(fields)
    return fields


def annotate(**more: object) -> None:
    """Add fields to the current RPC's log line (no-op outside an RPC)."""
    fields = _fields.get()
    if fields is not None:
        fields.update(more)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
