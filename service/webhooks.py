"""Sending Standard Webhooks v1 requests: the signature, one POST and its answer.

One copy for both senders: `webinar-flows send` (to the service's ingestion) and the
deliverer (service/delivery.py, to consumers). The standard library only (urllib, hmac).
Verification is service/auth.py's, which takes bytes and answers only yes or no.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import http.client
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

STRUCTURED = "application/cloudevents+json"
RETRIED = {429, 503}  # plus every 5xx


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(key: bytes | tuple[bytes, ...], body: bytes, content_type: str, now: float | None = None, *,
                   msg_id: str | None = None) -> dict[str, str]:
    """The headers of one request: the webhook-id (fresh unless given; never with '.'), the
    timestamp and the signature (one `v1,` entry per key, space-separated, for a rotation)."""
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    timestamp = int(time.time() if now is None else now)
    keys = (key,) if isinstance(key, bytes) else key
    return {"Content-Type": content_type, "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sign(k, msg_id, timestamp, body) for k in keys)}


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (connection failure, timeout)
    body: bytes
    retry_after: float | None
    error: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer, never followed (CloudEvents web-hook spec)


_OPENER = urllib.request.build_opener(_NoRedirect)


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header's wait in seconds (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, user_agent: str) -> Answer:
    """POST once; every outcome is an Answer (a network failure has status None), never an exception."""
    request = urllib.request.Request(url, data=body, method="POST", headers={**headers, "User-Agent": user_agent})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(response.status, response.read(), retry_after(response.headers.get("Retry-After")))
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read()
        except (OSError, http.client.HTTPException):
            data = b""
        return Answer(exc.code, data, retry_after(exc.headers.get("Retry-After") if exc.headers else None))
    except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Answer(None, b"", None, f"{type(exc).__name__}: {reason}")


def retryable(status: int | None) -> bool:
    """429, 503, any other 5xx, and no answer at all are worth another try; the rest is final."""
    return status is None or status in RETRIED or 500 <= status <= 599
