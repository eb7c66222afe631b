"""The ASGI app: routes that parse a request, hand its events to the writer, render the answer.

`create_app(settings)` builds it; nothing is built at import time, so tests and other ASGI
servers make their own (`uvicorn --factory service.app:app_from_environment`). Handlers stay
thin: the checks run in the documented order (docs/service.md) (key, size, rate, signature, content mode, envelope,
engine) through the modules that own them, and one exception handler turns every failure
into problem+json. `POST /v1/ingest/{key_id}`, the route whose cost per request bounds the
service's rate, is plain ASGI (`Ingest`) in front of the router.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import Engine, StoreError, UsageError
from engine.store import open_reader

from . import binding
from .accesslog import INGEST, AccessLog, Note, note
from .auth import verify
from .console import console_routes
from .delivery import Deliverer
from .engine_process import Answered, EngineProcess
from .jsonbytes import dumps
from .limits import HeaderLimit, TokenBuckets, rate_limited, read_body
from .metrics import CONTENT_TYPE, Metrics
from .paths import key_segments
from .problems import Problem, rejected, unauthorized, unavailable
from .settings import Settings, settings_from_environment
from .shutdown import CutAtShutdown
from .writer import QueueFull, Writer, WriterClosed

ALLOW = "POST, OPTIONS"
READY_QUEUE_SHARE = 0.8
FAILURE_SECONDS = 10.0
STUCK_SECONDS = 2.0  # a commit takes milliseconds; one waiting this long means the database is not writable
WATCH_SECONDS = 0.5  # how often the requests waiting on a stuck writer are looked at
STUCK_DETAIL = (f"the database cannot be written now (a transaction has waited more than {STUCK_SECONDS:g} s: "
                "a lock held elsewhere?); nothing of this request was acknowledged")
_ENVELOPE_REASONS = ("malformed_json", "invalid_envelope")


def _version() -> str:
    try:
        return version("webinar-flows")
    except PackageNotFoundError:
        return "unknown"


_dumps = dumps


def _json(obj: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return Response(_dumps(obj), status_code=status, media_type=media_type)


class Service:
    """The state one app holds: keys, the writer, its read engines, the buckets, the metrics."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = settings.keys
        self.writer = Writer(self._open_write_engine, capacity=settings.queue_events, max_batch=settings.commit_events,
                             on_commit=lambda size: self.metrics.commit(size))
        self.metrics = Metrics(settings.config, _version(), lambda: self.writer.depth)
        self.buckets = TokenBuckets()
        self.closing = False
        self._readers = threading.local()
        self._reader_list: list[Engine] = []
        self.deliverer: Deliverer | None = None
        if settings.deliver and settings.keys.push:  # push to the consumers with a url (service/delivery.py)
            schedule = {} if settings.retry_schedule is None else {"schedule": settings.retry_schedule}
            self.deliverer = Deliverer(self._open_engine, settings.keys.push, metrics=self.metrics, **schedule)

    def _open_engine(self) -> Engine:
        s = self.settings
        return Engine.open(config=s.config, db=s.db, max_event_bytes=s.max_event_bytes, synchronous=s.synchronous)

    def _open_write_engine(self) -> Engine | EngineProcess:
        """The writer's engine: in a process of its own unless the settings say a thread
        (service/engine_process.py says why)."""
        s = self.settings
        if s.writer == "thread":
            return self._open_engine()
        return EngineProcess(s.config, s.db, max_event_bytes=s.max_event_bytes, synchronous=s.synchronous)

    def reader(self) -> Engine:
        """This thread's read engine: reads never wait on the writer's connection."""
        engine = getattr(self._readers, "engine", None)
        if engine is None:
            engine = self._readers.engine = self._open_engine()
            self._reader_list.append(engine)
        return engine

    def body_limit(self, content_type: str) -> int:
        if binding.is_batch(content_type):  # a batch from a key without batch = true is 415 later, not 413 here
            return self.settings.max_batch_bytes
        return self.settings.max_event_bytes

    async def process(self, items: list[Any]) -> list[dict[str, Any]]:
        """The items' results once committed by the writer; 503 when it cannot take them."""
        if not items:
            return []
        if self.closing:
            raise unavailable("the server is shutting down", retry_after=5)
        if self.writer_stuck():
            raise unavailable(STUCK_DETAIL, retry_after=5)
        try:
            future = self.writer.submit_async(items)
        except QueueFull:
            raise unavailable("the writer's queue is full", retry_after=1) from None
        except WriterClosed:
            raise unavailable("the server is shutting down", retry_after=5) from None
        try:
            return await future
        except asyncio.CancelledError:
            if not self.closing:
                raise
            # uvicorn's graceful shutdown ran out while the writer still held these events: they
            # may yet commit, but unanswered; the sender's resend is deduped.
            raise unavailable("the server shut down before this request's events were committed",
                              retry_after=5) from None

    def writer_stuck(self) -> bool:
        """Whether the transaction under way has waited past STUCK_SECONDS (a lock held elsewhere)."""
        since = self.writer.busy_since
        return since is not None and time.monotonic() - since > STUCK_SECONDS

    async def _watch_writer(self) -> None:
        """Requests waiting on a stuck writer are answered 503 (Retry-After) within about
        STUCK_SECONDS, not when the lock ends (the database waits up to a minute for it): a
        sender's own timeout is often shorter, and a 503 tells it when to come back."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if self.writer_stuck():
                self.writer.fail_waiting(lambda: unavailable(STUCK_DETAIL, retry_after=5))

    def database_writable(self) -> tuple[bool, str]:
        """Whether the writer can commit: the file and its directory are writable, the last
        transaction did not fail and none has been waiting (on a lock, a full disk) too long.

        A probe of its own would need a second write connection, which only the writer has.
        """
        if isinstance(self.settings.db, str) and self.settings.db.startswith(("postgresql://", "postgres://")):
            try:  # a shared server: can a session be opened on it now (a restart, a lost network)?
                open_reader(self.settings.db).close()
            except StoreError as exc:
                return False, str(exc)
        else:
            db = Path(self.settings.db)
            if not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK):
                return False, "the database file or its directory is not writable"
        failed = self.writer.last_error
        if failed is not None and time.monotonic() - failed[1] < FAILURE_SECONDS:
            return False, failed[0]  # for a while only: unready gets no traffic, so no commit would clear it
        if self.writer_stuck():
            return False, f"a transaction has waited more than {STUCK_SECONDS:g} s (a lock held elsewhere?)"
        return True, "writable"

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(self.writer.start)
        if self.deliverer is not None:
            self.deliverer.start()
        watch = asyncio.get_running_loop().create_task(self._watch_writer())
        try:
            yield
        finally:
            self.closing = True
            watch.cancel()
            await run_in_threadpool(self.shutdown)

    def begin_shutdown(self) -> None:
        """Refuse new work (503); what is queued is still committed and answered."""
        self.closing = True

    def shutdown(self) -> None:
        if self.deliverer is not None:
            self.deliverer.stop(timeout=2.0)  # an item in flight is sent again later, with the same id
        self.writer.stop(timeout=2.0)  # a writer stuck on a lock is abandoned: nothing it holds was answered
        for engine in self._reader_list:
            engine.close()


def _service(request: Request) -> Service:
    return request.app.state.service


INGEST_PREFIX = "/v1/ingest/"
_JSON_HEADERS = (b"content-type", b"application/json")


class Ingest:
    """POST /v1/ingest/{key_id} as plain ASGI, in front of Starlette's router.

    The busiest route, and the one whose cost per request bounds the service's rate: it reads
    the scope and the body itself and writes its answer as two ASGI messages, without a
    Request, a Response, the router or the exception middleware around it. Everything else
    (access log, head limit, every other route) is as for any route. Checks run in the
    documented order (docs/service.md): key, size, rate, signature, content mode, envelope,
    engine; a Problem or StoreError is answered as problem+json here, anything else goes on to
    Starlette's server-error handler (a 500), exactly as from a route.
    """

    def __init__(self, app: ASGIApp | None, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:  # the router's own route for the path (see create_app)
            await self.answer(scope, receive, send, scope["path_params"]["key_id"])
            return
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(INGEST_PREFIX):
                key_id = path[len(INGEST_PREFIX):]
                if key_id and "/" not in key_id:
                    await self.answer(scope, receive, send, key_id)
                    return
        await self.app(scope, receive, send)

    async def answer(self, scope: Scope, receive: Receive, send: Send, key_id: str) -> None:
        info = note(scope)
        info.route = INGEST
        method = scope["method"]
        try:
            if method == "OPTIONS":
                response = handshake(self.service, Request(scope), key_id)
                await response(scope, receive, send)
                return
            if method != "POST":
                raise Problem(405, "method-not-allowed", f"{method} is not allowed here; POST an event",
                              outcome="method_not_allowed", headers={"Allow": ALLOW})
            body = await self.ingest(scope, receive, key_id, info)
        except (Problem, StoreError) as exc:
            problem = _as_problem(exc)
            info.outcome = problem.outcome
            await problem.response()(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON_HEADERS, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async def ingest(self, scope: Scope, receive: Receive, key_id: str, info: Note) -> bytes:
        """The answer's body for a request that passes every check; else Problem."""
        service = self.service
        key = service.keys.keys.get(key_id)
        if key is None:
            raise unauthorized()
        info.key = key.id
        raw = scope["headers"]
        content_type = declared = None
        for name, value in raw:  # the first of each, as Starlette's Headers.get
            if name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"content-length" and declared is None:
                declared = value
        content_type = content_type or ""
        settings = service.settings
        body = await read_body(receive, declared, service.body_limit(content_type), settings.body_timeout)
        if wait := service.buckets.take(key.id, key.rate, key.burst):
            raise rate_limited(wait)
        headers = dict(raw)
        if not verify(key.secrets, headers.get(b"webhook-id"), headers.get(b"webhook-timestamp"),
                      headers.get(b"webhook-signature"), body, time.time(), settings.tolerance):
            raise unauthorized()
        parsed = binding.parse(content_type, raw, body, key, max_events=settings.max_batch_events)
        results = await service.process(parsed.items)
        info.events = len(results)
        service.metrics.events(key.emitter, results)
        if parsed.refused or (parsed.single and results[0]["reason"] in _ENVELOPE_REASONS):
            raise rejected(results[0])
        if results and isinstance(results[0], Answered):  # their JSON was made in the writer process
            return b'{"results":[' + b",".join(r.body for r in results) + b"]}"
        return _dumps({"results": [{k: v for k, v in r.items() if k != "line"} for r in results]})


def handshake(service: Service, request: Request, key_id: str) -> Response:
    """The CloudEvents web-hook handshake: consent (and a rate per minute) for listed origins only."""
    note(request.scope).outcome = "handshake"
    headers = {"Allow": ALLOW}
    origin = request.headers.get("webhook-request-origin")
    key = service.keys.keys.get(key_id)
    origins = service.keys.origins
    if origin and key is not None and (origin in origins or "*" in origins):
        headers["WebHook-Allowed-Origin"] = origin
        headers["WebHook-Allowed-Rate"] = str(max(1, int(key.rate * 60)))
    return Response(status_code=200, headers=headers)


async def read_route(request: Request) -> Response:
    """GET /v1/routes/{...}: a route as `webinar-flows route` prints it, for a consumer token."""
    service, info = _service(request), note(request.scope)
    info.route = "/v1/routes/{key}"
    if not _consumer(service, request.headers.get("authorization", "")):
        raise Problem(401, "unauthorized", "a consumer token of the keys file is required "
                      "(Authorization: Bearer TOKEN)", outcome="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    fields = service.settings.config.route.key
    values = key_segments(request.scope, b"/v1/routes/", request.path_params["segments"])
    if values is None or len(values) != len(fields) or not all(values):
        raise _no_route(f"the path is /v1/routes/{'/'.join('{' + f + '}' for f in fields)}")
    try:
        route = await run_in_threadpool(lambda: service.reader().route(**dict(zip(fields, values, strict=True))))
    except UsageError as exc:
        raise _no_route(str(exc)) from None
    if route is None:
        raise _no_route("no route for this key")
    info.outcome = "processed"
    return _json(route)


def _no_route(detail: str) -> Problem:
    return Problem(404, "not-found", detail, outcome="not_found")


def _consumer(service: Service, header: str) -> bool:
    return bool(_token_owners(service, header))


def _token_owners(service: Service, header: str) -> set[str]:
    """The consumers whose token the Authorization header carries; every token is compared, in constant time."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return set()
    given, owners = token.strip().encode(), set()
    for name, tokens in service.keys.consumer_tokens.items():
        for known in tokens:
            if hmac.compare_digest(given, known.encode()):
                owners.add(name)
    return owners


# -- the feed: GET /v1/feed/{consumer} (long poll) and POST /v1/feed/{consumer}/ack ------------------

FEED_WAIT_MAX = 30.0
FEED_POLL_SECONDS = 0.1
FEED_LIMIT_MAX = 1000


def _feed_consumer(service: Service, request: Request) -> str:
    """The consumer of the path, for a token of its own: 401 without a consumer token, 404 for a
    consumer the config does not declare, 403 for another consumer's token."""
    name = request.path_params["consumer"]
    owners = _token_owners(service, request.headers.get("authorization", ""))
    if not owners:
        raise Problem(401, "unauthorized", "a consumer token of the keys file is required "
                      "(Authorization: Bearer TOKEN)", outcome="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    if name not in service.settings.config.consumers:
        raise Problem(404, "not-found", "no such consumer in the config's consumers.yaml", outcome="not_found")
    if name not in owners:
        raise Problem(403, "forbidden", "this token does not open this consumer's feed", outcome="unauthorized")
    return name


_DIGITS = re.compile(r"[0-9]{1,9}")
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def _query(request: Request, name: str, form: re.Pattern[str], rule: str) -> str | None:
    """A query parameter written as `form` says (ASCII digits: no sign, exponent or other script),
    else a 400 that says `rule`."""
    text = request.query_params.get(name)
    if text is not None and form.fullmatch(text) is None:
        raise Problem(400, "bad-request", f"{name} must be {rule}, not {text[:40]!r}", outcome="bad_request")
    return text


def _limit(request: Request) -> int:
    rule = f"a whole number from 1 to {FEED_LIMIT_MAX}"
    text = _query(request, "limit", _DIGITS, rule)
    limit = 100 if text is None else int(text)
    if not 1 <= limit <= FEED_LIMIT_MAX:
        raise Problem(400, "bad-request", f"limit must be {rule}, not {limit}", outcome="bad_request")
    return limit


def _wait(request: Request) -> float:
    text = _query(request, "wait", _SECONDS, f"a number of seconds, 0 or more (at most {FEED_WAIT_MAX:g} are waited)")
    return 0.0 if text is None else min(float(text), FEED_WAIT_MAX)


async def read_feed(request: Request) -> Response:
    """GET /v1/feed/{consumer}?after=CURSOR&limit=N&wait=SECONDS: the next items after `after` (else
    the consumer's stored cursor), waiting up to `wait` seconds (at most 30) while there are none."""
    service, info = _service(request), note(request.scope)
    info.route = "/v1/feed/{consumer}"
    name = _feed_consumer(service, request)
    limit, wait = _limit(request), _wait(request)
    after = request.query_params.get("after")
    deadline = time.monotonic() + wait
    while True:
        try:
            items, cursor = await run_in_threadpool(lambda: service.reader().feed(name, limit, cursor=after))
        except UsageError as exc:
            raise Problem(400, "bad-request", str(exc), outcome="bad_request") from None
        if items or service.closing or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(FEED_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    info.outcome = "processed"
    return _json({"items": items, "cursor": cursor})


async def ack_feed(request: Request) -> Response:
    """POST /v1/feed/{consumer}/ack with {"cursor": "..."}: move the consumer's stored cursor."""
    service, info = _service(request), note(request.scope)
    info.route = "/v1/feed/{consumer}/ack"
    name = _feed_consumer(service, request)
    try:
        cursor = orjson.loads(await request.body()).get("cursor")
    except (orjson.JSONDecodeError, AttributeError):
        cursor = None
    if not isinstance(cursor, str):
        raise Problem(400, "bad-request", 'the body must be {"cursor": "..."}, a cursor the feed gave',
                      outcome="bad_request")
    try:
        await asyncio.wrap_future(service.writer.submit_call(partial(_ack, name, cursor)))
    except UsageError as exc:
        raise Problem(400, "bad-request", str(exc), outcome="bad_request") from None
    except WriterClosed:
        raise unavailable("the server is shutting down", retry_after=5) from None
    info.outcome = "processed"
    return _json({"cursor": cursor})


def _ack(name: str, cursor: str, engine: Engine) -> None:
    """The ack as a writer job: a module function, so it can travel to the writer process."""
    engine.ack(name, cursor)


async def healthz(request: Request) -> Response:
    note(request.scope).route = "/healthz"
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database takes a write, the writer runs and its queue is below 80%."""
    service = _service(request)
    note(request.scope).route = "/readyz"
    writable, detail = service.database_writable()
    depth, capacity = service.writer.depth, service.settings.queue_events
    checks = {
        "database": {"ok": writable, "detail": detail},
        "writer": {"ok": service.writer.alive and not service.closing,
                   "detail": "running" if service.writer.alive and not service.closing else "stopped"},
        "queue": {"ok": depth < READY_QUEUE_SHARE * capacity, "detail": f"{depth} of {capacity} events"},
    }
    if all(check["ok"] for check in checks.values()):
        return _json({"status": "ready", "checks": checks})
    problem = unavailable("not ready: " + ", ".join(name for name, c in checks.items() if not c["ok"]), 5)
    problem.extra["checks"] = checks
    raise problem


async def metrics(request: Request) -> Response:
    service = _service(request)
    note(request.scope).route = "/metrics"
    return Response(await run_in_threadpool(service.metrics.exposition), media_type=CONTENT_TYPE)


def _as_problem(exc: Exception) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, StoreError):
        return unavailable(f"the database cannot be written now: {exc}", retry_after=5)
    if isinstance(exc, HTTPException):
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        outcome = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "other")
        return Problem(exc.status_code, slug, str(exc.detail), outcome=outcome, headers=dict(exc.headers or {}))
    return Problem(500, "internal-error", "the server failed; the events of this request may not be stored",
                   outcome="error")


async def _problem(request: Request, exc: Exception) -> Response:
    """The one place a failure becomes an answer."""
    problem = _as_problem(exc)
    note(request.scope).outcome = problem.outcome
    return problem.response()


def create_app(settings: Settings) -> Starlette:
    """The service's ASGI app for `settings`; it opens the writer on startup and drains it on shutdown."""
    service = Service(settings)
    routes = [
        # answered by the Ingest middleware before the router; listed so that the router knows the
        # path as before (a trailing slash is redirected to it)
        Route("/v1/ingest/{key_id}", Ingest(None, service)),
        Route("/v1/routes/{segments:path}", read_route, methods=["GET"]),
        Route("/v1/feed/{consumer}", read_feed, methods=["GET"]),
        Route("/v1/feed/{consumer}/ack", ack_feed, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *console_routes(service),  # /console: the web console (service/console)
    ]
    handlers = {cls: _problem for cls in (Problem, StoreError, HTTPException, Exception)}
    app = Starlette(routes=routes, lifespan=service.lifespan, exception_handlers=handlers,  # type: ignore[arg-type]
                    middleware=[Middleware(AccessLog, metrics=service.metrics),
                                Middleware(CutAtShutdown, closing=lambda: service.closing),
                                Middleware(HeaderLimit, limit=settings.max_header_bytes),
                                Middleware(Ingest, service=service)])  # POST /v1/ingest/{key_id}
    app.state.service = service
    return app


def app_from_environment() -> Starlette:
    """For other ASGI servers: `uvicorn --factory service.app:app_from_environment` (one worker)."""
    return create_app(settings_from_environment())
