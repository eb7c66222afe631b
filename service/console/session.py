"""Console sessions: a signed cookie, argon2 password checks, CSRF tokens.

The cookie holds `{"user": NAME or None, "csrf": TOKEN}` signed (and timestamped) with
itsdangerous under the keys file's `[console] session_secret`, which `keys user` writes when
the file has none. Without one (a file edited by hand), a random secret is made per process:
sessions then end when `serve` restarts. A cookie signed under another secret, tampered with
or older than `MAX_AGE` is no session at all.

Every form carries the session's CSRF token (a hidden `csrf` field; htmx requests send it as
the `X-CSRF-Token` header): a POST without the token of its own session is refused with 403.
The login form has one too, so the first GET of /console/login starts an anonymous session.

The cookie is `HttpOnly`, `SameSite=Lax`, and `Secure` when the request came over TLS:
`request.url.scheme` is "https" when uvicorn terminates TLS, or when a proxy it trusts
(uvicorn's --forwarded-allow-ips, 127.0.0.1 by default) sent `X-Forwarded-Proto: https`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "wf_console"
MAX_AGE = 12 * 3600  # seconds a session lasts after its login
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("not a password of anyone")  # an unknown user costs a verify too


@dataclass
class Session:
    user: str | None
    csrf: str
    new: bool = False  # not from the request's cookie: the answer must set it


class Sessions:
    """Reads and writes the session cookie and checks passwords against the keys file's users."""

    def __init__(self, secret: str | None, users: dict[str, str]):
        self._serializer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32), salt="wf-console-session")
        self._users = users
        self._ended: dict[str, float] = {}  # the CSRF token of each session logged out -> when it would expire

    def read(self, request: Request) -> Session:
        """The request's session; a fresh anonymous one when its cookie is missing or invalid."""
        value = request.cookies.get(COOKIE)
        if value:
            try:
                data: Any = self._serializer.loads(value, max_age=MAX_AGE)
            except BadSignature:
                data = None
            if isinstance(data, dict) and isinstance(data.get("csrf"), str) and data["csrf"] not in self._ended:
                user = data.get("user")
                if user is not None and user not in self._users:
                    user = None  # removed from the keys file since
                return Session(user if isinstance(user, str) else None, data["csrf"])
        return Session(None, secrets.token_urlsafe(24), new=True)

    def write(self, response: Response, request: Request, session: Session) -> None:
        response.set_cookie(COOKIE, self._serializer.dumps({"user": session.user, "csrf": session.csrf}),
                            max_age=MAX_AGE, path="/console", httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")

    def end(self, session: Session) -> None:
        """Log `session` out for good: its cookie, wherever a copy of it is, is no session from now
        on (until `serve` restarts: the list is kept in memory; a new `session_secret` ends every
        session at once). A session is known by its CSRF token, random and new at each login."""
        now = time.time()
        self._ended = {token: until for token, until in self._ended.items() if until > now}
        self._ended[session.csrf] = now + MAX_AGE

    def clear(self, response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="lax",
                               secure=request.url.scheme == "https")

    def check_password(self, username: str, password: str) -> bool:
        """Whether `password` is the user's; as slow for an unknown user as for a known one."""
        stored = self._users.get(username)
        try:
            return _HASHER.verify(stored if stored is not None else _DUMMY, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def csrf_ok(session: Session, given: str | None) -> bool:
    return not session.new and bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())
