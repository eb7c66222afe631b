"""JSON bytes as the CLI prints them, for answers made in the server and in the writer process."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    """orjson; what it refuses (an integer beyond 64 bits) goes through json."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")
