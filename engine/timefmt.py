"""Date-times as the engine writes, compares and orders them.

Recorded times are RFC 3339 text in UTC. Fact identities compare date-times as instants,
digit for digit in the fraction; history orders recorded times as moments.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$")
_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def rfc3339(moment: datetime) -> str:
    """UTC, with a fraction only when there is one: 2026-01-31T18:00:00Z."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ")


class UtcClock:
    """Now, as rfc3339() writes it, cheaply: it is read once per event.

    Each instance remembers the last whole second it formatted; an engine has its own, so
    engines on several threads share nothing.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self) -> str:
        second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{fraction:06d}Z" if fraction else f"{self._text}Z"


def normalise_time(value: str) -> str:
    """An RFC 3339 date-time (with its offset) as UTC; raises ValueError for anything else."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time text such as 2026-01-31T18:00:00Z")
    text = value.strip()
    if not _RFC3339.match(text):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time such as 2026-01-31T18:00:00Z")
    return rfc3339(datetime.fromisoformat(text.upper().replace("Z", "+00:00")))


def utc_instant(value: str) -> str:
    """A date-time as a UTC instant, so that equal moments written differently compare equal.

    The fraction is kept digit for digit (RFC 3339 allows any precision; a datetime holds
    only microseconds), with trailing zeros dropped.
    """
    if _UTC.match(value):  # already UTC: only a fraction's trailing zeros can differ
        if "." not in value:
            return value
        whole, fraction = value[:-1].split(".")
        digits = fraction.rstrip("0")
        return f"{whole}.{digits}Z" if digits else f"{whole}Z"
    match = _DATETIME.match(value)
    if not match:
        return value
    whole, fraction, offset = match.groups()
    try:
        moment = datetime.fromisoformat(whole.upper().replace(" ", "T") + offset.upper().replace("Z", "+00:00"))
        utc = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return value  # a leap second, or an instant outside years 1-9999 in UTC: compared as written
    digits = (fraction or "").rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{digits}" if digits else "") + "Z"


def moment(at: str | None) -> datetime:
    """A recorded RFC 3339 time as a datetime, for ordering (the text form does not sort)."""
    try:
        return datetime.fromisoformat((at or "").replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def sortable(at: str | None) -> str:
    """A recorded time as fixed-width UTC text (microseconds always written), which sorts as time."""
    return moment(at).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
