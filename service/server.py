"""Running the app under uvicorn as docs/service.md describes: one process, limits on, exit 0 on SIGTERM.

uvicorn re-raises a caught SIGTERM or SIGINT once it has shut down gracefully, so the
process would die of the signal (status 143) even though every queued event was committed
and answered. A graceful stop is the success case here, so the captured signals are dropped
and `run` returns normally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from engine import Engine, EngineError
from engine.store import display_name

from .app import create_app
from .settings import Settings, SettingsError

GRACEFUL_SECONDS = 5  # in-flight requests get this long after SIGTERM, the writer 2 s more: exit within 10 s


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head, which uvicorn lacks: any
    byte that arrives resets its keep-alive timer, so a client trickling its headers in would
    hold the connection forever. The app's body timeout does the same for bodies."""

    head_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None

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


def _protocol(head_timeout: float) -> type[H11Protocol]:
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
        app, host=host, port=port, workers=1, lifespan="on", access_log=False, http=_protocol(head_timeout),
        h11_max_incomplete_event_size=settings.max_header_bytes, timeout_keep_alive=keep_alive,
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
