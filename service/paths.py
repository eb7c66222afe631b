"""A route key in a URL path: each value one percent-encoded segment.

A key value may hold a `/` (`org/123`). Sent as `%2F`, it survives only if each segment is
decoded on its own: the server's decoded path would split the value in two. The JSON API
(`/v1/routes/...`) and the console (`/console/routes/...`) read and write keys this way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote_to_bytes


def key_path(values: Iterable[Any]) -> str:
    """The key's values as path segments, each percent-encoded (a `/` in a value as `%2F`)."""
    return "/".join(quote(str(value), safe="") for value in values)


def key_segments(scope: dict[str, Any], marker: bytes, decoded: str) -> list[str] | None:
    """The values after `marker` in the request's raw path, each percent-decoded on its own;
    `decoded` (the server's decoded rest of the path) when the server passes no raw path. None
    when a value is not UTF-8."""
    raw = scope.get("raw_path")
    at = raw.find(marker) if isinstance(raw, bytes) else -1
    if at < 0:
        return decoded.split("/")
    try:
        return [unquote_to_bytes(part).decode("utf-8") for part in raw[at + len(marker):].split(b"/")]
    except UnicodeDecodeError:
        return None
