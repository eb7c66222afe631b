"""One JSON line per request on stderr, and the request metrics, from one place.

The line says what an operator needs to follow a request (time, route, key id, outcome,
status, event count, duration) and nothing a request brought in: no secret, signature,
header value or payload field, and no key id that is not in the keys file (a mistyped URL
might hold a secret).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

NOTE = "webinar_flows.note"
INGEST = "/v1/ingest/{key_id}"
_LOG = logging.getLogger("webinar_flows.access")


@dataclass
class Note:
    """What a handler learnt about its request, for the log line and the metrics."""

    route: str | None = None
    key: str | None = None
    outcome: str | None = None
    events: int = 0


def note(scope: Scope) -> Note:
    return scope.setdefault(NOTE, Note())


def _logger() -> logging.Logger:
    if not _LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOG.addHandler(handler)
        _LOG.setLevel(logging.INFO)
        _LOG.propagate = False
    return _LOG


class AccessLog:
    """ASGI middleware: times each HTTP request, then logs it and counts ingestion outcomes."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.log = _logger()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]
        info = note(scope)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._record(scope, info, status[0], time.perf_counter() - started)

    def _record(self, scope: Scope, info: Note, status: int, seconds: float) -> None:
        outcome = info.outcome or ("processed" if status == 200 else "error" if status >= 500 else "other")
        if info.route == INGEST:
            self.metrics.request(outcome, seconds)
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": scope.get("method"), "route": info.route or "other", "key_id": info.key,
            "outcome": outcome, "status": status, "events": info.events, "duration_ms": round(seconds * 1000, 3),
        }
        self.log.info(orjson.dumps(line).decode())
