"""The console's routes: each page is one data function (data.py) rendered as HTML, or as JSON
when the request asks for `application/json` (the page's twin).

Every page needs a session (else 303 to /console/login; a twin answers 401); every POST needs
its session's CSRF token (else 403). Pages are server-rendered Jinja2; htmx swaps small
partials (a quarantine row); scripts and styles are files under static/, so the CSP can say
`script-src 'self'` and no request leaves the host.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..accesslog import note
from ..limits import TokenBuckets
from ..paths import key_segments
from ..writer import QueueFull, WriterClosed
from . import data
from .session import CSRF_FIELD, CSRF_HEADER, Session, Sessions, csrf_ok

Service = Any  # service.app.Service; not imported: the app imports the console

HERE = Path(__file__).parent
PREFIX = "/console"
LOGIN = f"{PREFIX}/login"
MAX_FORM_BYTES = 2 * 1024 * 1024
FAILED_LOGIN = "Invalid username or password"
STALE_FORM = "the form's CSRF token is missing or does not match the session; reload the page and try again"
# Login attempts (each an argon2 verify, ~0.1-1 s of CPU): per user name and for all together, so
# guessing is slow and cannot take the server's CPU. A name the keys file does not hold gets its own
# count as a user's would: were they counted together, a drained count would answer 429 for unknown
# names and not for users, and tell which names exist.
LOGIN_RATE, LOGIN_BURST = 1.0, 10.0
LOGIN_RATE_ALL, LOGIN_BURST_ALL = 5.0, 20.0
_SEQ = re.compile(r"[1-9][0-9]{0,17}")
MAX_NAME = 256  # characters of a login name that key its count
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}

_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["tojson_pretty"] = data.as_json
_env.filters["short"] = lambda value, n=data.HASH_SHORT: (value or "")[:n]


class _Refused(Exception):
    def __init__(self, status: int, message: str, token: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.token = token  # the form's CSRF token, when the part that was read holds one


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _wants_page(request: Request) -> bool:
    """A browser's own form submission (no htmx, no twin): what refuses it is a page, not JSON."""
    return "text/html" in request.headers.get("accept", "") and "hx-request" not in request.headers


def _json(value: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return Response(orjson.dumps(value, default=str), status_code=status, media_type=media_type,
                    headers=SECURITY_HEADERS)


def _problem(status: int, title: str, detail: str) -> Response:
    return _json({"type": "about:blank", "title": title, "status": status, "detail": detail}, status,
                 "application/problem+json")


class Console:
    """The console of one service: its sessions and its routes."""

    def __init__(self, service: Service):
        self.service = service
        keys = service.settings.keys
        self.sessions = Sessions(keys.session_secret, keys.console_users)
        self.users = frozenset(keys.console_users)
        self.attempts = TokenBuckets()

    # -- rendering -----------------------------------------------------------------------------

    def html(self, request: Request, session: Session, template: str, context: dict[str, Any],
             status: int = 200) -> Response:
        page = _env.get_template(template).render(
            request=request, user=session.user, csrf=session.csrf, csrf_field=CSRF_FIELD, prefix=PREFIX,
            path=request.url.path, hash_short=data.HASH_SHORT, **context)
        response = HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)
        if session.new:
            self.sessions.write(response, request, session)
        return response

    def refuse(self, request: Request, session: Session, status: int, detail: str) -> Response:
        """An action refused: problem+json for htmx (console.js shows its detail) and for scripts,
        an error page for a browser's plain form submission."""
        if _wants_page(request):
            return self.html(request, session, "error.html", {
                "status": status, "heading": f"{status} {HTTPStatus(status).phrase}", "message": detail}, status)
        return _problem(status, HTTPStatus(status).phrase, detail)

    # -- the frame every page and action shares -----------------------------------------------

    def page(self, name: str, template: str, load: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        """GET: a session or a redirect (401 for the twin), then `load` on a worker thread."""

        async def endpoint(request: Request) -> Response:
            note(request.scope).route = f"{PREFIX}/{name}" if name else PREFIX
            session = self.sessions.read(request)
            if session.user is None:
                if _wants_json(request):
                    return _problem(401, "Unauthorized", "log in at /console/login")
                return RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
            try:
                value = await run_in_threadpool(load, request)
            except (data.NotFound, data.BadInput, _Refused) as exc:
                status = 404 if isinstance(exc, data.NotFound) else getattr(exc, "status", 400)
                if _wants_json(request):
                    return _problem(status, "Not Found" if status == 404 else "Bad Request", str(exc))
                return self.html(request, session, "error.html", {"status": status, "message": str(exc)}, status)
            if _wants_json(request):
                return _json(value)
            return self.html(request, session, template, {"page": name, "data": value})

        return endpoint

    def action(self, name: str, act: Callable[[Request, Session, list[tuple[str, str]]], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
        """POST: the CSRF token of the request's own session (else 403), a session (else 303/401)."""

        async def endpoint(request: Request) -> Response:
            note(request.scope).route = f"{PREFIX}/{name}"
            session = self.sessions.read(request)
            try:
                form = await _form(request)
            except _Refused as exc:
                # a body that cannot be read says what is wrong with it only to a request that
                # proves its session; any other POST without a valid token is a 403 as always
                if not csrf_ok(session, request.headers.get(CSRF_HEADER) or exc.token):
                    return self.refuse(request, session, 403, STALE_FORM)
                return self.refuse(request, session, exc.status, exc.message)
            given = request.headers.get(CSRF_HEADER) or next((v for k, v in form if k == CSRF_FIELD), None)
            if not csrf_ok(session, given):
                return self.refuse(request, session, 403, STALE_FORM)
            if session.user is None and name != "login":
                if _wants_json(request) or "hx-request" in request.headers:
                    return _problem(401, "Unauthorized", "log in at /console/login")
                return RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
            return await act(request, session, form)

        return endpoint

    # -- login and logout ----------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        note(request.scope).route = LOGIN
        session = self.sessions.read(request)
        if _wants_json(request):
            return _json({"fields": ["username", "password"], "user": session.user})
        return self.html(request, session, "login.html", {"page": "login", "error": None, "username": ""})

    async def login(self, request: Request, session: Session, form: list[tuple[str, str]]) -> Response:
        values = dict(form)
        username, password = values.get("username", ""), values.get("password", "")
        wait = max(self.attempts.take("user:" + username[:MAX_NAME], LOGIN_RATE, LOGIN_BURST),
                   self.attempts.take("all", LOGIN_RATE_ALL, LOGIN_BURST_ALL))
        if wait:
            retry = {"Retry-After": str(max(1, int(wait + 0.999)))}
            if _wants_json(request):
                response = _problem(429, "Too Many Requests", "too many login attempts; retry later")
            else:
                response = self.html(request, session, "login.html", {
                    "page": "login", "error": "Too many login attempts; wait a moment and try again.",
                    "username": username}, 429)
            response.headers.update(retry)
            return response
        ok = await run_in_threadpool(self.sessions.check_password, username, password)
        if not ok:
            if _wants_json(request):
                return _problem(401, "Unauthorized", FAILED_LOGIN)
            return self.html(request, session, "login.html", {"page": "login", "error": FAILED_LOGIN,
                                                              "username": username}, 200)
        fresh = Session(username, _fresh_token())  # a new token at login: one seen before it is worth nothing
        response: Response = RedirectResponse(PREFIX, status_code=303, headers=SECURITY_HEADERS)
        if _wants_json(request):
            response = _json({"user": username, "csrf": fresh.csrf})
        self.sessions.write(response, request, fresh)
        return response

    async def logout(self, request: Request, session: Session, form: list[tuple[str, str]]) -> Response:
        response = RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
        self.sessions.end(session)  # a copy of the cookie kept elsewhere is no session any more
        self.sessions.clear(response, request)
        return response

    # -- pages -----------------------------------------------------------------------------------

    def _reader(self) -> Any:
        return self.service.reader()

    def load_overview(self, request: Request) -> Any:
        return data.overview(self.service, self._reader())

    def load_contract(self, request: Request) -> Any:
        return data.contract(self.service.settings.config)

    def load_preview_form(self, request: Request) -> Any:
        config = self.service.settings.config
        return {"files": data.preview_files(config), "file": request.query_params.get("file", "events.yaml"),
                "text": None, "result": None}

    def load_routes(self, request: Request) -> Any:
        return data.find_routes(self.service.settings.config, self._reader(), _query(request))

    def load_route(self, request: Request) -> Any:
        values = key_segments(request.scope, f"{PREFIX}/routes/".encode(), request.path_params["segments"])
        if values is None:
            raise data.NotFound("a route key value in the path is not UTF-8")
        return data.one_route(self.service.settings.config, self._reader(), values)

    def load_quarantine(self, request: Request) -> Any:
        return data.quarantine(self._reader(), _query(request))

    def load_rejection(self, request: Request) -> Any:
        seq = _seq(request.path_params["seq"])
        if seq is None:
            raise data.NotFound("a rejection's id is a number, as `rejections` lists it")
        return data.rejection(self._reader(), seq)

    def load_deliveries(self, request: Request) -> Any:
        return data.deliveries(self.service, self._reader())

    # -- actions -----------------------------------------------------------------------------------

    async def preview(self, request: Request, session: Session, form: list[tuple[str, str]]) -> Response:
        values = dict(form)
        config = self.service.settings.config
        file, text = values.get("file", ""), values.get("text", "")
        try:
            result = await run_in_threadpool(data.preview, config, file, text)
        except data.BadInput as exc:
            if _wants_json(request):
                return _problem(400, "Bad Request", str(exc))
            return self.html(request, session, "error.html", {"status": 400, "message": str(exc)}, 400)
        if _wants_json(request):
            return _json(result)
        return self.html(request, session, "preview.html", {
            "page": "contract/preview", "data": {"files": data.preview_files(config), "file": file, "text": text,
                                                 "result": result}})

    async def _on_writer(self, job: Callable[[Any], Any]) -> Any:
        try:
            future = self.service.writer.submit_call(job)
        except WriterClosed:
            raise _Refused(503, "the server is shutting down") from None
        except QueueFull:
            raise _Refused(503, "the writer's queue is full") from None
        return await asyncio.wrap_future(future)

    async def reprocess(self, request: Request, session: Session, form: list[tuple[str, str]]) -> Response:
        seqs = _seqs(request, form)
        if not seqs:
            return self.refuse(request, session, 400, "check at least one rejection")
        before = await run_in_threadpool(lambda: {seq: _row_or_none(self._reader(), seq) for seq in seqs})
        if not any(before.values()):
            return self.refuse(request, session, 404, f"no rejection {seqs[0]}" if len(seqs) == 1
                               else "none of the checked rejections exists any more")
        try:
            results = await self._on_writer(data.reprocess_job(seqs))
        except _Refused as exc:
            return self.refuse(request, session, exc.status, exc.message)
        # one not re-processed says why, so that a click never ends in silence
        outcome = {seq: results.get(seq) or {"status": None, "note": _not_reprocessed(before[seq])} for seq in seqs}
        if _wants_json(request):
            return _json({"results": [{"rejection": seq, **r} for seq, r in outcome.items()]})
        if "hx-request" not in request.headers:
            return RedirectResponse(request.headers.get("referer") or f"{PREFIX}/quarantine", status_code=303)
        rows = await run_in_threadpool(lambda: {seq: _row_or_none(self._reader(), seq) for seq in seqs})
        return self.html(request, session, "_rows.html", {"rows": [(seq, rows[seq], outcome[seq]) for seq in seqs]})

    async def purge(self, request: Request, session: Session, form: list[tuple[str, str]]) -> Response:
        seqs = _seqs(request, form)
        if not seqs:
            return self.refuse(request, session, 400, "check at least one rejection")
        try:
            count = await self._on_writer(data.purge_job(seqs))
        except _Refused as exc:
            return self.refuse(request, session, exc.status, exc.message)
        if _wants_json(request):
            return _json({"purged": count, "rejections": seqs})
        if "hx-request" not in request.headers:
            return RedirectResponse(f"{PREFIX}/quarantine", status_code=303)
        return self.html(request, session, "_purged.html", {"seqs": seqs, "count": count})

    async def retry(self, request: Request, session: Session, form: list[tuple[str, str]]) -> Response:
        values = dict(form)
        if not callable(_engine_retry()):
            return self.refuse(request, session, 409, "this version keeps no push deliveries to retry")
        consumer = values.get("consumer") or None
        if consumer is not None and consumer not in self.service.settings.config.consumers:
            return self.refuse(request, session, 400, f"no consumer {consumer!r} in consumers.yaml")
        item = values.get("item")
        item = None if item in (None, "", "*") else item
        try:
            count = await self._on_writer(data.retry_job(consumer, item))
        except _Refused as exc:
            return self.refuse(request, session, exc.status, exc.message)
        if item is not None and count == 0:  # as `deliveries --retry ID`, which exits 1 then
            return self.refuse(request, session, 404, f"no failed delivery with id {item!r}"
                               + (f" for {consumer}" if consumer else ""))
        if _wants_json(request):
            return _json({"retried": count})
        return RedirectResponse(f"{PREFIX}/deliveries", status_code=303, headers=SECURITY_HEADERS)

    # -- the table ---------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        def post(path: str, name: str, act: Any) -> Route:
            return Route(f"{PREFIX}{path}", self.action(name, act), methods=["POST"])

        return [
            Route(PREFIX, self.page("", "overview.html", self.load_overview), methods=["GET"]),
            Route(LOGIN, self.login_page, methods=["GET"]),
            post("/login", "login", self.login),
            post("/logout", "logout", self.logout),
            Route(f"{PREFIX}/contract", self.page("contract", "contract.html", self.load_contract), methods=["GET"]),
            Route(f"{PREFIX}/contract/preview", self.page("contract/preview", "preview.html", self.load_preview_form),
                  methods=["GET"]),
            post("/contract/preview", "contract/preview", self.preview),
            Route(f"{PREFIX}/routes", self.page("routes", "routes.html", self.load_routes), methods=["GET"]),
            Route(f"{PREFIX}/routes/{{segments:path}}", self.page("routes/{key}", "route.html", self.load_route),
                  methods=["GET"]),
            Route(f"{PREFIX}/quarantine", self.page("quarantine", "quarantine.html", self.load_quarantine),
                  methods=["GET"]),
            post("/quarantine/reprocess", "quarantine/reprocess", self.reprocess),
            post("/quarantine/purge", "quarantine/purge", self.purge),
            Route(f"{PREFIX}/quarantine/{{seq}}", self.page("quarantine/{id}", "rejection.html", self.load_rejection),
                  methods=["GET"]),
            post("/quarantine/{seq}/reprocess", "quarantine/reprocess", self.reprocess),
            Route(f"{PREFIX}/deliveries", self.page("deliveries", "deliveries.html", self.load_deliveries),
                  methods=["GET"]),
            post("/deliveries/retry", "deliveries/retry", self.retry),
            Mount(f"{PREFIX}/static", app=StaticFiles(directory=HERE / "static"), name="console-static"),
        ]


def console_routes(service: Service) -> list[BaseRoute]:
    """The console's routes for `service`, to add to the app's route table."""
    return Console(service).routes()


def _engine_retry() -> Any:
    """The engine's retry of failed push deliveries (None on a version without push delivery)."""
    from engine import Engine

    return getattr(Engine, "retry_deliveries", None)


def _fresh_token() -> str:
    import secrets

    return secrets.token_urlsafe(24)


def _seqs(request: Request, form: list[tuple[str, str]]) -> list[int]:
    given = [request.path_params["seq"]] if "seq" in request.path_params else [v for k, v in form if k == "seq"]
    seqs = []
    for value in given:
        seq = _seq(value)
        if seq is not None:
            seqs.append(seq)
    return list(dict.fromkeys(seqs))


def _query(request: Request) -> dict[str, list[str]]:
    """The query's parameters, each with every value it was given (a repeated one is not cut to its last)."""
    values: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        values.setdefault(key, []).append(value)
    return values


def _seq(value: str) -> int | None:
    """A rejection's id as `rejections` writes it (ASCII digits, no sign, space or leading zero):
    one URL per rejection, not `0013`, `1_3` or other scripts' digits."""
    return int(value) if _SEQ.fullmatch(value) else None


def _not_reprocessed(row: dict[str, Any] | None) -> str:
    """Why the writer re-ran nothing for a rejection."""
    if row is None:
        return "purged: nothing is left to re-process"
    if row["truncated"]:
        return "kept only in part (too_large): it cannot be re-processed"
    if row["resolved_at"]:
        return "already resolved"
    return "purged or resolved meanwhile"


def _row_or_none(reader: Any, seq: int) -> dict[str, Any] | None:
    try:
        return data.rejection(reader, seq)
    except data.NotFound:
        return None


def _token_in(body: bytearray, kind: str) -> str | None:
    """The CSRF field of an urlencoded form's first MAX_FORM_BYTES bytes, if it stands there."""
    if kind != "application/x-www-form-urlencoded":
        return None
    head = bytes(body[:MAX_FORM_BYTES]).decode("utf-8", "ignore")
    return next((v for k, v in parse_qsl(head, keep_blank_values=True) if k == CSRF_FIELD), None)


async def _form(request: Request) -> list[tuple[str, str]]:
    """An urlencoded form (what the console's forms and htmx send), at most MAX_FORM_BYTES."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, f"a form may hold at most {MAX_FORM_BYTES} bytes", _token_in(body, kind))
    if not body:
        return []
    if kind != "application/x-www-form-urlencoded":
        raise _Refused(415, "send the form as application/x-www-form-urlencoded")
    try:
        return parse_qsl(bytes(body).decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise _Refused(400, "the form is not UTF-8") from None
