"""Errors as RFC 9457 problem details: every answer but a 200 is one of these.

A handler raises `Problem`; the app's one exception handler renders it. A problem carries the
outcome word that logs and metrics count it under, and for a 400 the `reason`/`errors` of the
stored rejection, exactly as a result carries them.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:webinar-flows:problem:"

# The closed set of request outcomes (logs and the `outcome` label); a 200 is `processed`.
OUTCOMES = ("processed", "bad_request", "unauthorized", "not_found", "method_not_allowed", "timeout",
            "too_large", "unsupported_media_type", "rate_limited", "unavailable", "handshake", "error", "other")


class Problem(Exception):
    """An HTTP answer other than 200, as data."""

    def __init__(self, status: int, slug: str, detail: str, *, outcome: str,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status, self.slug, self.detail, self.outcome = status, slug, detail, outcome
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"type": TYPE_BASE + self.slug, "title": HTTPStatus(self.status).phrase, "status": self.status,
                "detail": self.detail, **self.extra}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), status_code=self.status, headers=self.headers,
                        media_type=MEDIA_TYPE)


def unauthorized() -> Problem:
    """One answer for every failed authentication: which check failed is not said."""
    return Problem(401, "unauthorized", "the request is not signed by a known key, or the signature or "
                   "its timestamp is not valid", outcome="unauthorized")


def too_large(detail: str) -> Problem:
    return Problem(413, "too-large", detail, outcome="too_large")


def unsupported(detail: str) -> Problem:
    return Problem(415, "unsupported-media-type", detail, outcome="unsupported_media_type")


def unavailable(detail: str, retry_after: int) -> Problem:
    return Problem(503, "unavailable", detail, outcome="unavailable", headers={"Retry-After": str(retry_after)})


def rejected(result: dict[str, Any]) -> Problem:
    """A 400 for an event the engine stored as malformed_json or invalid_envelope."""
    return Problem(400, result["reason"].replace("_", "-"), "the request is not a valid CloudEvent; it was stored "
                   "as a rejection", outcome="bad_request", reason=result["reason"], errors=result["errors"])
