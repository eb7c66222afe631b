"""Per-request limits: a token bucket per key, and a body read bounded in size and time.

Both run before authentication, so they must be cheap and must hold no matter who calls: a
flood on one key empties that key's bucket and nobody else's; a body larger than allowed is
cut off at the limit, not read to the end; a body trickling in is cut off at a deadline, on
its own connection, while the event loop serves everyone else.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import Problem, too_large


class TokenBuckets:
    """`rate` tokens per second per key, holding at most `burst`; one request takes one.

    Used on the event loop only, so it needs no lock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep: int = 1024):
        self._clock = clock
        self._keep = keep
        self._buckets: dict[str, tuple[float, float, float, float]] = {}  # key -> (tokens, when, rate, burst)

    def take(self, key_id: str, rate: float, burst: float) -> float:
        """0 when the request may go on, else the seconds until a token is back."""
        now = self._clock()
        tokens, then, _, _ = self._buckets.get(key_id, (burst, now, rate, burst))
        tokens = min(burst, tokens + (now - then) * rate)
        if len(self._buckets) >= self._keep and key_id not in self._buckets:
            self._forget_full(now)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now, rate, burst)
            return 0.0
        self._buckets[key_id] = (tokens, now, rate, burst)
        return (1 - tokens) / rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have filled again: a new key gets a full one anyway. Keys that
        anyone may choose (login names) then hold memory only while they are being drained."""
        self._buckets = {key: bucket for key, bucket in self._buckets.items()
                         if bucket[0] + (now - bucket[1]) * bucket[2] < bucket[3]}


def rate_limited(wait: float) -> Problem:
    return Problem(429, "rate-limited", "this key sends faster than its rate; retry after the time given",
                   outcome="rate_limited", headers={"Retry-After": str(max(1, math.ceil(wait)))})


async def read_body(receive: Receive, declared: bytes | None, limit: int, timeout: float) -> bytes:
    """The whole body, or Problem: 413 past `limit` bytes (declared or read), 408 past `timeout`.

    `receive` is the request's ASGI receive; `declared` its Content-Length header as it arrived."""
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "bad-content-length", "Content-Length is not a number", outcome="bad_request")
        if int(declared) > limit:
            raise too_large(f"the body is {int(declared)} bytes; the limit is {limit}")
    # a timer that cancels this task: half what asyncio.timeout costs per request
    task, expired = asyncio.current_task(), []
    timer = asyncio.get_running_loop().call_later(timeout, lambda: expired.append(True) or task.cancel())  # type: ignore[union-attr]
    chunks, size = [], 0
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(f"the body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if not expired:
            raise
        task.uncancel()  # type: ignore[union-attr]
        raise Problem(408, "timeout", f"the body did not arrive within {timeout:g} s",
                      outcome="timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise Problem(400, "disconnected", "the client went away before the body ended", outcome="bad_request") from None
    finally:
        timer.cancel()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class HeaderLimit:
    """ASGI middleware: a request head larger than `limit` bytes is answered 431.

    uvicorn's h11 limit bounds only a head that arrives in pieces; one that arrives in a single
    read is parsed whole, so the size is checked again here, before any route runs.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = (len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
                    + sum(len(k) + len(v) + 4 for k, v in scope["headers"]))  # the request line's target too
            if size > self.limit:
                problem = Problem(431, "headers-too-large", f"the request head is larger than {self.limit} bytes",
                                  outcome="too_large", headers={"Connection": "close"})
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
