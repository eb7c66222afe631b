"""The CloudEvents HTTP protocol binding 1.0.2, read on the receiving side.

Not the SDK's parser: it invents an `id` and a `time` when they are missing, and a receiver
that dedupes on (source, id) must refuse such a request instead. What this module cannot
read as an event becomes a `Received` with a refusal, so the engine stores the bytes that
arrived as a rejection; a content mode it does not take is a 415 (`Problem`) and nothing is
stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from engine import Received

from .keys import EmitterKey
from .problems import too_large, unsupported

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_REQUIRED = ("specversion", "id", "source", "type")
_NOT_HEADERS = ("datacontenttype", "data")  # the Content-Type and the body carry these in binary mode


@dataclass(frozen=True)
class Parsed:
    """The events of one request. `single`: one event in structured or binary mode, whose
    envelope rejection is a 400; `refused`: the whole body is one stored rejection (a 400)."""

    items: list[Received]
    single: bool
    refused: bool = False


def media_type(content_type: str) -> str:
    """`application/cloudevents+json; charset=utf-8` → `application/cloudevents+json`."""
    return content_type.split(";", 1)[0].strip().lower()


def is_batch(content_type: str) -> bool:
    return media_type(content_type) == BATCH


def parse(content_type: str, headers: list[tuple[bytes, bytes]], body: bytes, key: EmitterKey, *,
          max_events: int) -> Parsed:
    """The request's events, by the mode its Content-Type chooses; Problem for 413 and 415."""
    mode = media_type(content_type)
    if mode == BATCH:
        if not key.batch:
            raise unsupported("batched mode is not enabled for this key")
        return _batch(body, key, max_events)
    if mode == STRUCTURED:
        return Parsed([Received(body, emitter=key.emitter)], single=True)
    if mode.startswith("application/cloudevents"):
        raise unsupported(f"the content mode {mode!r} is not supported; use {STRUCTURED}, {BATCH} or binary mode "
                          "with Content-Type application/json")
    if mode != "application/json":
        raise unsupported("binary mode takes Content-Type application/json (the event's data as JSON)")
    return Parsed([_binary(content_type, headers, body, key)], single=True)


def _error(path: str, code: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message, "code": code}


def _binary(content_type: str, headers: list[tuple[bytes, bytes]], body: bytes, key: EmitterKey) -> Received:
    attributes: dict[str, str] = {}
    errors = []
    for name, value in headers:
        if not name.lower().startswith(b"ce-"):
            continue
        attribute = name[3:].decode("latin-1").lower()
        try:
            decoded = unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            errors.append(_error(f"/{attribute}", "not_utf8", f"the ce-{attribute} header is not UTF-8 once "
                                 "percent-decoded"))
            continue
        if attribute in _NOT_HEADERS:
            errors.append(_error(f"/{attribute}", "not_allowed", f"a ce-{attribute} header is not allowed in "
                                 "binary mode (the Content-Type and the body carry it)"))
        elif attribute in attributes:
            errors.append(_error(f"/{attribute}", "repeated", f"the ce-{attribute} header is repeated"))
        else:
            attributes[attribute] = decoded
    errors += [_error(f"/{name}", "required", f"the ce-{name} header is missing")
               for name in _REQUIRED if name not in attributes]
    event: dict[str, object] = {**attributes, "datacontenttype": content_type}
    if errors:
        return Received(event, emitter=key.emitter, refusal=("invalid_envelope", errors), raw=body)
    if body:
        try:
            event["data"] = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            return Received(event, emitter=key.emitter, raw=body, refusal=(
                "malformed_json", [_error("/data", "not_json", f"the body is not JSON: {exc}")]))
    return Received(event, emitter=key.emitter, raw=body)


def _batch(body: bytes, key: EmitterKey, max_events: int) -> Parsed:
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return _refused(body, key, "malformed_json", _error("", "not_json", f"the batch is not JSON: {exc}"))
    if not isinstance(events, list):
        return _refused(body, key, "invalid_envelope", _error("", "type", "a batch is a JSON array of events"))
    if len(events) > max_events:
        raise too_large(f"a batch holds at most {max_events} events, not {len(events)}")
    versions = {e["specversion"] for e in events if isinstance(e, dict) and isinstance(e.get("specversion"), str)}
    if len(versions) > 1:
        return _refused(body, key, "invalid_envelope", _error(
            "", "mixed_specversion", f"the events of a batch share one specversion, not {sorted(versions)}"))
    items = [Received(e if isinstance(e, dict) else json.dumps(e).encode(), emitter=key.emitter) for e in events]
    return Parsed(items, single=False)


def _refused(body: bytes, key: EmitterKey, reason: str, error: dict[str, str]) -> Parsed:
    return Parsed([Received(body, emitter=key.emitter, refusal=(reason, [error]))], single=True, refused=True)
