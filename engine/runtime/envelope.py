"""Steps 1-3 of an event's way in: size, strict JSON, CloudEvents envelope.

Input is bytes, exactly as received, so a rejection can keep them byte for byte. JSON is
read strictly (I-JSON, RFC 7493): duplicate keys, NaN/Infinity, numbers outside what
SQLite and other languages can hold, lone surrogates and deep nesting are refused, each
with its own error code, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from rfc3339_validator import RFC3339_REGEX, validate_rfc3339

from ..jsonvalue import CANONICAL_OPTIONS, canonical_json, pointer
from ..reasons import Rejected, error

DEFAULT_MAX_EVENT_BYTES = 256 * 1024
MAX_DEPTH = 64
KEEP_HEAD_BYTES = 64 * 1024
_INT_LIMIT = 2**63


@dataclass(frozen=True)
class Oversized:
    """A line too large to read whole: its size, its hash and its first 64 KiB."""

    size: int
    sha256: str
    head: bytes


@dataclass
class Envelope:
    """A parsed, envelope-valid event and the canonical JSON it is compared and stored as.

    `source`, `id`, `type` and `data` are the event's, read once here: the pipeline reads them
    some twenty times per event, and a property would look them up each time.
    """

    event: dict[str, Any]
    canonical: str
    raw: bytes = field(repr=False, default=b"")
    floats: bool | None = None  # whether the event holds a float; None: not known
    source: str = field(init=False, repr=False, compare=False)
    id: str = field(init=False, repr=False, compare=False)
    type: str = field(init=False, repr=False, compare=False)
    data: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        event = self.event
        self.source, self.id, self.type, self.data = event["source"], event["id"], event["type"], event["data"]


class _Bad(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Bad("duplicate_key", f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise _Bad("non_finite_number", f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Bad("number_out_of_range", f"{text} does not fit a double")
    return value


def _int(text: str) -> int:
    if len(text) > 20:
        raise _Bad("number_out_of_range", f"integer of {len(text)} digits is out of range")
    value = int(text)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise _Bad("number_out_of_range", f"integer {text} is outside the 64-bit range")
    return value


def _decoder(floats: list[int]) -> json.JSONDecoder:
    """A strict decoder that counts the floats it reads into `floats`: one per parse, so that
    parses on several threads share no state (the strict path is the rare one)."""
    def parse_float(text: str) -> float:
        floats[0] += 1
        return _float(text)

    return json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=parse_float,
                            parse_int=_int)


def _too_deep(value: Any) -> bool:
    """Whether objects and arrays nest more than MAX_DEPTH levels (scalars add no level)."""
    todo = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            return True
        todo.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


def _parse_fast(raw: bytes) -> Any:
    """orjson, where it provably reads what the strict decoder below would; None: ask that one.

    orjson keeps the last of two equal keys and reads an integer beyond 64 bits as a float,
    where the strict decoder refuses both. So the shortcut is taken only for text without
    escapes, whose parsed value holds no float and no integer out of range, and whose count of
    `"` is twice the strings the value ended up with, keys and string values. Without escapes
    no string can hold a quote, so each string as written has two: a repeated key, which orjson
    drops with its value, would leave more quotes than that. tests/test_fast_paths.py holds
    the two equal.
    """
    if b"\\" in raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    strings, todo = 0, [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_DEPTH:
            return None
        if type(node) is dict:
            strings += len(node)
            children: Any = node.values()
        else:
            children = node if type(node) is list else (node,)
        for item in children:
            kind = type(item)
            if kind is str:
                strings += 1
            elif kind is int:
                if not -_INT_LIMIT <= item < _INT_LIMIT:
                    return None
            elif kind is dict or kind is list:
                todo.append((item, depth + 1))
            elif kind is float:
                return None
    if raw.count(b'"') != 2 * strings:
        return None
    return value


def parse_json(raw: bytes) -> tuple[Any, str, bool]:
    """Strict JSON from bytes, its canonical text, and whether it holds a float; raises
    `Rejected` (malformed_json)."""
    value = _parse_fast(raw)
    if value is not None:
        return value, orjson.dumps(value, option=CANONICAL_OPTIONS).decode("utf-8"), False
    return _parse_strict(raw)


def _parse_strict(raw: bytes) -> tuple[Any, str, bool]:  # noqa: C901
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("malformed_json", [error("", "invalid_utf8", f"not valid UTF-8 at byte {exc.start}")]) from None
    if text.startswith("\ufeff"):
        raise Rejected("malformed_json", [error("", "bom", "a byte order mark is not allowed in JSON")])
    floats = [0]
    try:
        value = _decoder(floats).decode(text)
    except _Bad as bad:
        raise Rejected("malformed_json", [error("", bad.code, bad.message)]) from None
    except RecursionError:
        raise Rejected("malformed_json", [error("", "nesting_too_deep", f"nesting deeper than {MAX_DEPTH} levels")]) from None
    except ValueError as exc:
        raise Rejected("malformed_json", [error("", "syntax", f"invalid JSON: {exc}")]) from None
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(value):
        raise Rejected("malformed_json", [error("", "nesting_too_deep", f"nesting deeper than {MAX_DEPTH} levels")])
    try:
        canonical = canonical_json(value, floats=floats[0] > 0)
    except ValueError:  # the only thing parsed JSON can fail on here: a lone surrogate
        raise Rejected("malformed_json", [error("", "lone_surrogate", "a string holds a lone UTF-16 surrogate")],
                       partial=value if isinstance(value, dict) else None) from None
    return value, canonical, floats[0] > 0


def _envelope_schema() -> dict[str, Any]:
    return json.loads(resources.files("engine.runtime").joinpath("schemas/envelope.schema.json").read_text("utf-8"))


_ENVELOPE = Draft202012Validator(_envelope_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def read_envelope(raw: bytes | Oversized, max_bytes: int) -> Envelope:
    """Steps 1-3; raises `Rejected` with too_large, malformed_json or invalid_envelope."""
    if isinstance(raw, Oversized) or len(raw) > max_bytes:
        size = raw.size if isinstance(raw, Oversized) else len(raw)
        raise Rejected("too_large", [error("", "too_large", f"{size} bytes; the limit is {max_bytes}")])
    value, canonical, floats = parse_json(raw)
    if not isinstance(value, dict):
        raise Rejected("invalid_envelope", [error("", "type", f"an event is a JSON object, not {_json_type(value)}")])
    if not _envelope_ok(value):
        errors = [e for err in _ENVELOPE.iter_errors(value) for e in schema_errors(err, "")]
        if errors:
            raise Rejected("invalid_envelope", sorted(errors, key=lambda e: e["path"]), partial=value)
    return Envelope(value, canonical, raw, floats=floats)


# A UTC date-time to the second on a day every month has, as producers mostly write one: valid
# whatever the calendar says, so no group needs reading.
_PLAIN_DATE_TIME = re.compile(r"(?!0000)\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])[Tt](?:[01]\d|2[0-3])"
                              r":[0-5]\d:[0-5]\d[Zz]", re.ASCII)


def is_date_time(value: str) -> bool:
    """The `date-time` format exactly as jsonschema checks it (rfc3339_validator on the upper-
    cased text), minus the calendar lookup for days every month has: it runs on every event."""
    if _PLAIN_DATE_TIME.fullmatch(value):
        return True
    value = value.upper()
    match = RFC3339_REGEX.match(value)
    if match is None:
        return False
    year, _, day = match.groups()
    return ("01" <= day <= "28" and year != "0000") or validate_rfc3339(value)


_REQUIRED = ("id", "source", "type")
_CORE = frozenset(("specversion", "id", "source", "type", "data"))
_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,64}$")
_CONTENT_TYPE = re.compile(r"^(application/json|text/json|application/[A-Za-z0-9.!#$&^_+-]+\+json)(\s*;.*)?$")


def _envelope_ok(event: dict[str, Any]) -> bool:
    """The envelope schema, checked by hand: it is on every event's path, and jsonschema is
    asked only for the errors of an envelope this says is wrong (a test holds the two equal)."""
    if event.get("specversion") != "1.0" or type(event.get("data")) is not dict:
        return False
    for name in _REQUIRED:
        value = event.get(name)
        if type(value) is not str or not value:
            return False
    for name, value in event.items():
        if name in _CORE:
            continue
        if name == "time":
            if type(value) is not str or not is_date_time(value):
                return False
        elif name in ("subject", "dataschema"):
            if type(value) is not str or not value:
                return False
        elif name == "datacontenttype":
            if type(value) is not str or not _CONTENT_TYPE.match(value):
                return False
        elif not _ATTRIBUTE.match(name) or type(value) not in (str, int, float, bool):
            return False
    return True


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def schema_errors(err: Any, prefix: str) -> list[dict[str, Any]]:
    """One jsonschema error as `{path, message, code}` entries, each path a JSON Pointer to the
    field at fault (a missing field, each unexpected field, a refused attribute name)."""
    path = list(err.absolute_path)
    if "propertyNames" in err.relative_schema_path:
        return [error(prefix + pointer(path + [err.instance]), "property_names",
                      f"{err.instance!r} is not a valid attribute name: {err.message}")]
    if err.validator == "required":
        missing = [p for p in err.validator_value if isinstance(err.instance, dict) and p not in err.instance
                   and repr(p) in err.message]
        return [error(prefix + pointer(path + [missing[0] if missing else ""]), "required", err.message)]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        patterns = [re.compile(p) for p in err.schema.get("patternProperties", {})]
        extra = sorted(k for k in err.instance if k not in allowed and not any(p.search(k) for p in patterns))
        return [error(prefix + pointer(path + [k]), "additional_properties", f"'{k}' is not a field of the contract")
                for k in extra]
    if err.validator == "not" and err.validator_value in ({}, True):
        return [error(prefix + pointer(path), "not_allowed", f"'{path[-1] if path else 'value'}' is not allowed here")]
    return [error(prefix + pointer(path), snake(str(err.validator)), err.message)]


def fingerprint(raw: bytes | Oversized, max_bytes: int) -> tuple[bytes, int, str, bool]:
    """What a rejection keeps of its input: the bytes exactly, or for an oversized line its
    first 64 KiB, with size and sha256 either way."""
    if isinstance(raw, Oversized):
        return raw.head, raw.size, raw.sha256, True
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) > max_bytes:
        return raw[:KEEP_HEAD_BYTES], len(raw), digest, True
    return raw, len(raw), digest, False
