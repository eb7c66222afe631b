"""Running the app under uvicorn as docs/service.md describes: one process, limits on, exit 0 on SIGTERM.

uvicorn re-raises a caught SIGTERM or SIGINT once it has shut down gracefully, so the
process would die of the signal (status 143) even though every queued event was committed
and answered. A graceful stop is the success case here, so the captured signals are dropped
and `run` returns normally.

The HTTP parser is httptools (llhttp, in C) and the event loop uvloop (uvicorn's "auto"
picks it when installed); both are dependencies. Per request they cost a fraction of h11's
pure-Python parsing and asyncio's loop, and uvloop does its socket writes without letting go
of the GIL, so the writer thread cannot hold up each answer on its way out (docs/service-performance.md).
h11 is the fallback when httptools is missing; both protocols get the same head limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the C parser (llhttp): a fraction of h11's cost per request; h11 when it is missing
    import httptools
    from uvicorn.protocols.http.httptools_impl import (
        HttpToolsProtocol,
        RequestResponseCycle,
    )
except ImportError:  # pragma: no cover - httptools is a dependency
    httptools = None

from engine import Engine, EngineError
from engine.store import display_name

from .app import create_app
from .settings import Settings, SettingsError

GRACEFUL_SECONDS = 5  # in-flight requests get this long after SIGTERM, the writer 2 s more: exit within 10 s


class _HeadTimer:
    """A deadline for each request head, for both HTTP protocols; uvicorn lacks one: any byte
    that arrives resets its keep-alive timer, so a client trickling its headers in would hold
    the connection forever. The app's body timeout does the same for bodies."""

    head_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout, self._expired)

    def _expired(self) -> None:
        waiting_for_a_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_a_head and not self.transport.is_closing():
            self.transport.close()


class _HeadDeadline(_HeadTimer, H11Protocol):
    """uvicorn's h11 protocol with the head deadline (the fallback when httptools is missing)."""


if httptools is not None:
    def _head_too_large(limit: int) -> bytes:
        body = orjson.dumps({"type": "urn:webinar-flows:problem:headers-too-large",
                             "title": "Request Header Fields Too Large", "status": 431,
                             "detail": f"the request head is larger than {limit} bytes"})
        return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))

    class _Gathered:
        """Stands in for the transport while an answer's head and first body part are written."""

        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.parts.append(data)

        def close(self) -> None:
            self.closed = True

    class _OneWrite(RequestResponseCycle):
        """uvicorn's cycle, writing an answer's head and its body in one socket write instead
        of two: a write to a socket is a system call, and per request it cost more than any
        step of the app. The head is held until the first body message, then both go out."""

        _held: dict | None = None

        async def send(self, message: dict) -> None:  # type: ignore[override]
            if message["type"] == "http.response.start" and not self.response_started and self._held is None:
                self._held = message
                return
            held, self._held = self._held, None
            if held is None:
                await super().send(message)  # type: ignore[arg-type]
                return
            transport, gathered = self.transport, _Gathered()
            self.transport = gathered  # type: ignore[assignment]
            try:
                await super().send(held)  # type: ignore[arg-type]
                await super().send(message)  # type: ignore[arg-type]
            finally:
                self.transport = transport
                if gathered.parts:
                    transport.write(b"".join(gathered.parts))
                if gathered.closed:
                    transport.close()

    class _HeadLimits(_HeadTimer, HttpToolsProtocol):
        """uvicorn's httptools protocol with the head deadline of `_HeadTimer`, and a
        bound on the head's size while it arrives in pieces (httptools has none: it would hold
        a head that never ends); past it the answer is 431 and the connection is closed. A head
        that arrives whole is checked by the app (`HeaderLimit`), as under h11."""

        max_head = 16 * 1024
        _head_size = 0  # bytes of the head so far
        _in_head = False

        def on_message_begin(self) -> None:
            self._in_head, self._head_size = True, 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()
            if type(self.cycle) is RequestResponseCycle:  # its task has not run yet
                self.cycle.__class__ = _OneWrite

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_head:  # the head is not complete yet: all of this is head (give or take a pipelined tail)
                self._head_size += len(data)
                if self._head_size > self.max_head and not self.transport.is_closing():
                    self.transport.write(_head_too_large(self.max_head))
                    self.transport.close()


def _protocol(head_timeout: float, max_head: int) -> type[asyncio.Protocol]:
    if httptools is not None:
        return type("HeadLimitsHttpTools", (_HeadLimits,), {"head_timeout": head_timeout, "max_head": max_head})
    return type("HeadDeadlineH11", (_HeadDeadline,), {"head_timeout": head_timeout})


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]):
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_signal()  # from now on a request that still arrives gets 503, not a place in the queue
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def check_database(settings: Settings) -> None:
    """Open (and migrate) the database once before listening, so a bad --db fails the start."""
    try:
        Engine.open(config=settings.config, db=settings.db, synchronous=settings.synchronous).close()
    except EngineError as exc:
        raise SettingsError(f"error: the database {display_name(settings.db)} cannot be used: {exc}") from None


def run(settings: Settings, *, host: str, port: int, keep_alive: int = 5, max_connections: int = 1024,
        head_timeout: float = 10.0) -> None:
    """Serve until SIGTERM or SIGINT, then drain; SettingsError when the server could not start."""
    check_database(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=host, port=port, workers=1, lifespan="on", access_log=False,
        http=_protocol(head_timeout, settings.max_header_bytes), h11_max_incomplete_event_size=settings.max_header_bytes, timeout_keep_alive=keep_alive,
        limit_concurrency=max_connections, timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)
    server = _Server(config, on_signal=app.state.service.begin_shutdown)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits on its own when it cannot bind: make that our exit 1
        if exc.code not in (0, None):
            raise SettingsError(f"error: the server did not start on {host}:{port} (see the messages above)") from None
        raise
    if not server.started:
        raise SettingsError("error: the server did not start (see the messages above)")
