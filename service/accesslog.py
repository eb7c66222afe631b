"""One JSON line per request on stderr, and the request metrics, from one place.

The line says what an operator needs to follow a request (time, route, key id, outcome,
status, event count, duration) and nothing a request brought in: no secret, signature,
header value or payload field, and no key id that is not in the keys file (a mistyped URL
might hold a secret).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
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


class _Lines(logging.StreamHandler):  # type: ignore[type-arg]
    """The default handler: stderr, one message per line. `AccessLog` writes through it in bulk."""


def _logger() -> logging.Logger:
    if not _LOG.handlers:
        handler = _Lines(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOG.addHandler(handler)
        _LOG.setLevel(logging.INFO)
        _LOG.propagate = False
    return _LOG


_second: tuple[int, str] = (0, "")


def _timestamp(now: float) -> str:
    """`2026-12-03T13:25:25.123Z` (UTC, milliseconds); the part up to the second is formatted once a second."""
    global _second
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


class AccessLog:
    """ASGI middleware: times each HTTP request, then logs it and counts ingestion outcomes.

    With the default handler (stderr) the lines of the requests that end in one turn of the
    event loop are written together, at the end of that turn: one write instead of one per
    request, and no logging record each. A handler configured by an embedder gets one record
    per request, as before.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.log = _logger()
        self._pending: list[bytes] = []

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
            "time": _timestamp(time.time()),
            "method": scope.get("method"), "route": info.route or "other", "key_id": info.key,
            "outcome": outcome, "status": status, "events": info.events, "duration_ms": round(seconds * 1000, 3),
        }
        handlers = self.log.handlers
        if len(handlers) == 1 and type(handlers[0]) is _Lines and self.log.isEnabledFor(logging.INFO):
            if not self._pending:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:  # no loop (a direct call): write now
                    self._pending.append(orjson.dumps(line))
                    self.flush()
                    return
            self._pending.append(orjson.dumps(line))
        else:
            self.log.info(orjson.dumps(line).decode())

    def flush(self) -> None:
        """Write the lines gathered so far through the default handler, in one write."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        handler = self.log.handlers[0] if self.log.handlers else None
        if not isinstance(handler, logging.StreamHandler):
            for line in lines:
                self.log.info(line.decode())
            return
        text = b"\n".join(lines).decode() + "\n"
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except (OSError, ValueError):  # stderr closed or gone: the log must not fail a request
            pass
        finally:
            handler.release()
