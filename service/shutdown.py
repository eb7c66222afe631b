"""The answer of a request that is still running when the server's graceful stop runs out.

After SIGTERM uvicorn waits a few seconds for requests under way, then cancels them. A request
whose body was still arriving (a slow or stalled sender) or whose read was still going would
end as uvicorn's plain-text 500 with a traceback in the log. Here it gets what the contract
promises a request at shutdown: 503 with Retry-After, as problem+json, and the connection closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .accesslog import note
from .problems import unavailable

RETRY_AFTER_SECONDS = 5


class CutAtShutdown:
    """ASGI middleware: a request cancelled while `closing()` is true, before its answer
    started, is answered 503; any other cancellation goes on as it came."""

    def __init__(self, app: ASGIApp, closing: Callable[[], bool]):
        self.app, self.closing = app, closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or not self.closing() or task is None:
                raise
            task.uncancel()
            problem = unavailable("the server is shutting down; this request was not complete", RETRY_AFTER_SECONDS)
            problem.headers["Connection"] = "close"
            note(scope).outcome = problem.outcome
            await problem.response()(scope, receive, send)
