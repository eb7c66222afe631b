"""Refusing regular expressions that can backtrack catastrophically.

Python's `re` backtracks: `(a+)+$` takes seconds on thirty characters. A payload schema
is config, checked once, so we refuse the shapes that explode — a repeat inside an
unbounded repeat, nested counted repeats whose product is large, and alternatives under a
repeat that can match the same text — rather than pay for them on every event.
"""

from __future__ import annotations

import re
from typing import Any

try:
    from re import _parser as sre  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as sre  # type: ignore[no-redef]

_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT)}
_UNBOUNDED = 1_000
_PRODUCT_LIMIT = 10_000


def unsafe_pattern(pattern: str) -> str | None:
    """Why `pattern` is refused, or None when it is safe to run on untrusted input."""
    try:
        tree = sre.parse(pattern)
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"not a valid regular expression: {exc}"
    return _walk(list(tree), 1, False)


def _walk(items: list[Any], product: int, in_unbounded: bool) -> str | None:
    for op, arg in items:
        if op in _REPEATS:
            low, high, body = arg
            unbounded = high == sre.MAXREPEAT or high >= _UNBOUNDED
            if in_unbounded and (unbounded or high > 1):
                return "a repeat inside an unbounded repeat (such as (a+)+) can backtrack exponentially"
            scale = product * (high if not unbounded else _UNBOUNDED)
            if scale > _PRODUCT_LIMIT and not unbounded and product > 1:
                return "nested counted repeats multiply to more than 10,000 steps"
            found = _walk(list(body), scale, in_unbounded or unbounded)
            if found:
                return found
        elif op is sre.BRANCH:
            alternatives = arg[1]
            if in_unbounded and _overlapping(alternatives):
                return "alternatives under a repeat that can match the same text (such as (a|a)*) backtrack exponentially"
            for alt in alternatives:
                found = _walk(list(alt), product, in_unbounded)
                if found:
                    return found
        elif op is sre.SUBPATTERN:
            found = _walk(list(arg[-1]), product, in_unbounded)
            if found:
                return found
    return None


def _overlapping(alternatives: list[Any]) -> bool:
    """Whether two alternatives may start with the same character (conservatively: any class,
    category or wildcard is taken to overlap with everything)."""
    literals: list[int] = []
    for alt in alternatives:
        items = list(alt)
        if not items:
            return True
        op, arg = items[0]
        if op is not sre.LITERAL:
            return len(alternatives) > 1
        literals.append(arg)
    return len(set(literals)) < len(literals)
