"""Recorded times as integers where that loses nothing: schema 6 of the SQLite store.

The engine's clock writes UTC as `2026-01-31T18:00:00Z` or `2026-01-31T18:00:00.123456Z`
(engine.timefmt). Such a text from 1970 on is stored as microseconds since 1970 and read back
(the views in sqlite_migrations.py, `unpack_time` here) as the very same text; anything else —
another offset, a fraction of other than six digits or of six zeros, a leap second — is stored
as the text itself, so every recorded time reads back byte for byte.
"""

from __future__ import annotations

import calendar
import time

_WHOLE = "%Y-%m-%dT%H:%M:%S"


def _seconds(text: str) -> int | None:
    """Seconds since 1970 of a `YYYY-MM-DDTHH:MM:SS` text that formats back to itself, else None."""
    if not text.isascii():
        return None
    try:
        seconds = calendar.timegm(time.strptime(text, _WHOLE))
    except (ValueError, OverflowError):
        return None
    if 0 <= seconds < 253_402_300_800 and time.strftime(_WHOLE, time.gmtime(seconds)) == text:
        return seconds
    return None


# The last time packed, and the last whole second parsed: every write of one event records the
# same time, and a run's times share their seconds many times over. Each is one tuple, read once
# and replaced whole, so threads packing at once never see half of another's answer.
_last: tuple[str, object] = ("", "")
_second: tuple[str, int | None] = ("", None)


def pack_time(at: object) -> object:
    """A recorded time as stored: an int when `unpack_time` gives the same text back, else as given."""
    global _last, _second
    last = _last
    if at == last[0]:
        return last[1]
    if not isinstance(at, str):
        return at
    packed: object = at
    size = len(at)
    if size == 20 and at[19] == "Z":
        fraction = 0
    elif size == 27 and at[19] == "." and at[26] == "Z" and at[20:26].isascii() and at[20:26].isdigit():
        fraction = int(at[20:26]) or -1  # the clock writes no fraction rather than .000000
    else:
        fraction = -1
    if fraction >= 0:
        whole, second = at[:19], _second
        if whole != second[0]:
            second = _second = (whole, _seconds(whole))
        if second[1] is not None:
            packed = second[1] * 1_000_000 + fraction
    _last = (at, packed)
    return packed


def unpack_time(stored: object) -> object:
    """The text a stored time was written as (the views do the same in SQL)."""
    if not isinstance(stored, int):
        return stored
    seconds, fraction = divmod(stored, 1_000_000)
    whole = time.strftime(_WHOLE, time.gmtime(seconds))
    return f"{whole}.{fraction:06d}Z" if fraction else f"{whole}Z"
