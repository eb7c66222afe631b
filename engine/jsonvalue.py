"""JSON values as the engine compares, stores and points into them.

One spelling per value (canonical JSON: sorted keys, no spaces, integral numbers as
integers), JSON equality, and RFC 6901 pointers for errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

def _integral(value: Any) -> Any:
    """JSON has one number 1: spell an integral float as an integer (as RFC 8785 does)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


CANONICAL_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def canonical_json(value: Any, *, floats: bool | None = None) -> str:
    """The one spelling of a JSON value: sorted keys, no spaces, integral numbers as integers.

    `floats=False` says the value holds no float (the parser counted them), which skips the
    walk that rewrites integral floats. Raises TypeError or ValueError for what is not JSON
    (a cycle, NaN, an object, an integer beyond 64 bits, a lone surrogate).
    """
    if floats is None or floats:
        if floats is None:
            _finite(value)
        value = _integral(value)
    try:
        return orjson.dumps(value, option=CANONICAL_OPTIONS).decode("utf-8")
    except orjson.JSONEncodeError as exc:
        raise ValueError(str(exc)) from None


def _finite(value: Any) -> None:
    """NaN and infinities are not JSON; orjson would write them as null."""
    todo, seen = [value], 0
    while todo:
        node = todo.pop()
        seen += 1
        if seen > 1_000_000:
            raise ValueError("too many values (a cycle?)")
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{node} is not a JSON number")
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)


# The types of a value whose canonical JSON needs no walk: no float to rewrite, nothing nested.
PLAIN_TYPES = frozenset((str, int, bool, type(None)))


def flat_json(values: list[Any]) -> str:
    """canonical_json for a list of key values, skipping its walk when they are plain scalars."""
    if PLAIN_TYPES.issuperset(map(type, values)):
        return canonical_json(values, floats=False)
    return canonical_json(values)


def same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def pointer(path: Sequence[str | int]) -> str:
    """A JSON Pointer (RFC 6901) for a path of keys and indexes."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def mentions(node: Any, keys: tuple[str, ...]) -> bool:
    """Whether any object inside a JSON value (a schema, say) holds one of `keys`."""
    todo = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if any(k in item for k in keys):
                return True
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False
