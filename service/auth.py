"""Standard Webhooks v1 verification: proof that a request's bytes come from a key's holder.

Written here rather than taken from the `standardwebhooks` package: its verifier decodes the
body as text and raises ValueError on a malformed header, both of which hostile input turns
into server errors, and its clock is not injectable. This one takes bytes, never decodes
them, compares in constant time and answers only yes or no, so a 401 cannot tell a caller
which check failed. The package stays the tests' signer, proving the two agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

TOLERANCE_SECONDS = 300
MAX_ID_LENGTH = 255
_MAX_ENTRIES = 8  # more signatures than any rotation needs is not a rotation


def verify(secrets: Iterable[bytes], webhook_id: bytes | None, timestamp: bytes | None,
           signature: bytes | None, body: bytes, now: float, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """True when some `v1,` entry of `signature` is the HMAC-SHA256 of `{id}.{timestamp}.{body}`
    under one of `secrets`, and `timestamp` (integer Unix seconds) is within `tolerance` of `now`.

    Header values come as the bytes that arrived: nothing is decoded before it is trusted.
    """
    if not webhook_id or not timestamp or not signature:
        return False
    if b"." in webhook_id or (len(webhook_id) > MAX_ID_LENGTH and _characters(webhook_id) > MAX_ID_LENGTH):
        return False
    if not timestamp.isdigit() or len(timestamp) > 12 or abs(int(timestamp) - now) > tolerance:
        return False
    given = _signatures(signature)
    if not given:
        return False
    signed = b"%s.%s.%s" % (webhook_id, timestamp, body)
    ok = False
    for secret in secrets:
        expected = hmac.new(secret, signed, hashlib.sha256).digest()
        for candidate in given:
            ok |= hmac.compare_digest(expected, candidate)  # no early exit: every pair is compared
    return ok


def _characters(text: bytes) -> int:
    """How many characters an id's bytes are (the limit is 255 characters); a byte that is not
    UTF-8 counts as one."""
    return len(text.decode("utf-8", "replace"))


def _signatures(header: bytes) -> list[bytes]:
    """The decoded `v1` entries of a `webhook-signature` header; other versions are skipped."""
    found = []
    for entry in header.split()[:_MAX_ENTRIES]:
        version, _, encoded = entry.partition(b",")
        if version != b"v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found
