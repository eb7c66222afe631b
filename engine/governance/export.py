"""Exporting the contract for other tools: a JSON Schema per event, an AsyncAPI 3.0 document.

Each event's schema describes a whole CloudEvents envelope (the engine's own envelope schema)
whose `type` is the event's name and whose `data` is the event's payload schema. Payload
`$ref`s are expanded in place, so every exported schema stands alone: no file of the config
directory is needed to read it (a reference back into itself is not expanded twice; it is
left as an open schema carrying a `$comment`).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from referencing.jsonschema import DRAFT202012

from ..runtime.contract import registry_of
from ..model import Config, EventSpec

if TYPE_CHECKING:
    from referencing._core import Resolver

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
CONTENT_TYPE = "application/cloudevents+json"
# The payload format an AsyncAPI tool assumes by default is a superset of JSON Schema draft-07;
# a payload using any of these later keywords is declared as draft 2020-12 instead.
_LATER_KEYWORDS = frozenset({"prefixItems", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
                             "unevaluatedItems", "minContains", "maxContains", "$anchor", "$dynamicRef",
                             "$dynamicAnchor", "$vocabulary"})
_SCHEMA_2020_12 = "application/schema+json;version=2020-12"
_LITERAL = frozenset({"enum", "const", "examples", "default", "required", "dependentRequired"})
_NAME_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_DROPPED = frozenset({"$id", "$schema", "$defs", "definitions"})
ANNOTATIONS = frozenset({"description", "title", "examples", "default", "$comment", "deprecated", "readOnly",
                          "writeOnly"})


def _envelope() -> dict[str, Any]:
    text = resources.files("engine.runtime").joinpath("schemas/envelope.schema.json").read_text("utf-8")
    envelope: dict[str, Any] = json.loads(text)
    return envelope


def standalone_payload(config: Config, event: str) -> dict[str, Any]:
    """The payload schema of `event` with every `$ref` expanded in place."""
    payload = config.events[event].payload
    base = config.root.resolve().as_uri() + "/events.yaml"
    registry = registry_of(config.schema_resources).with_resource(base, DRAFT202012.create_resource(payload))
    standalone: dict[str, Any] = _inline(payload, registry.resolver(base_uri=base), ())
    return standalone


def _inline(node: Any, resolver: Resolver, stack: tuple[int, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, resolver, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$id"), str):
        resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key == "$ref":
            continue
        if key in _LITERAL:
            out[key] = value
        elif key in _NAME_MAPS and isinstance(value, dict):
            out[key] = {name: _inline(sub, resolver, stack) for name, sub in value.items()}
        else:
            out[key] = _inline(value, resolver, stack)
    if not isinstance(node.get("$ref"), str):
        return out
    target = _expand(node["$ref"], resolver, stack)
    if set(out) <= ANNOTATIONS and isinstance(target, dict):
        return {**target, **out}  # annotations beside a $ref only describe it: merged, same meaning
    out["allOf"] = [*out.get("allOf", []), target]
    return out


def _expand(ref: str, resolver: Resolver, stack: tuple[int, ...]) -> Any:
    resolved = resolver.lookup(ref)
    if id(resolved.contents) in stack:
        return {"$comment": f"recursive reference {ref} is not expanded again"}
    return _inline(resolved.contents, resolved.resolver, (*stack, id(resolved.contents)))


def _emitters_of(config: Config, event: str) -> dict[str, str]:
    return {name: em.events[event] for name, em in config.emitters.items() if event in em.events}


def _extensions(config: Config, spec: EventSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"x-status": spec.status, "x-identity": list(spec.identity)}
    if spec.repeatable_when:
        out["x-repeatable-when"] = {k: list(v) for k, v in spec.repeatable_when.items()}
    out["x-emitters"] = _emitters_of(config, spec.name)
    return out


def _envelope_for(config: Config, spec: EventSpec) -> dict[str, Any]:
    """A CloudEvents envelope schema for one event type (no `$schema`, `$id` or title)."""
    envelope = _envelope()
    properties = dict(envelope["properties"])
    properties["type"] = {"const": spec.name, "description": "The event type."}
    properties["source"] = {**properties["source"],
                            "description": "The emitter's name: one that lists this event (see x-emitters)."}
    properties["data"] = {"description": "The event payload.", **standalone_payload(config, spec.name)}
    return {"type": "object", "required": envelope["required"], "properties": properties,
            "propertyNames": envelope["propertyNames"], "additionalProperties": envelope["additionalProperties"]}


def event_schemas(config: Config, base_uri: str = "") -> dict[str, dict[str, Any]]:
    """One JSON Schema (draft 2020-12) per event: the CloudEvents envelope carrying that event.

    `$id` is `base_uri` + `<event>.schema.json`; with no base it is a relative reference,
    resolved against wherever the file is published.
    """
    return {
        name: {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{base_uri}{name}.schema.json", "title": name,
               "description": spec.description, **_extensions(config, spec), **_envelope_for(config, spec)}
        for name, spec in config.events.items()
    }


def _uses_later_keywords(node: Any) -> bool:
    if isinstance(node, dict):
        return any(k in _LATER_KEYWORDS or (k not in _LITERAL and _uses_later_keywords(
            list(v.values()) if k in _NAME_MAPS and isinstance(v, dict) else v)) for k, v in node.items())
    if isinstance(node, list):
        return any(_uses_later_keywords(item) for item in node)
    return False


def _message_payload(config: Config, spec: EventSpec) -> dict[str, Any]:
    schema = _envelope_for(config, spec)
    if _uses_later_keywords(schema):
        return {"schemaFormat": _SCHEMA_2020_12, "schema": schema}
    return schema


def _status_tag(status: str) -> dict[str, str]:
    return {"name": f"status:{status}", "description": f"The contract marks this {status}."}


def _message(config: Config, spec: EventSpec) -> dict[str, Any]:
    return {"name": spec.name, "title": spec.name, "summary": spec.description, "contentType": CONTENT_TYPE,
            "payload": _message_payload(config, spec), "tags": [_status_tag(spec.status)],
            **_extensions(config, spec)}


def _operation(config: Config, emitter: str, event: str) -> dict[str, Any]:
    em = config.emitters[emitter]
    side = "internal" if em.internal else "external"
    status = em.events[event]
    who = "an internal service of the engine" if em.internal else "an external emitter"
    return {
        "action": "send",
        "channel": {"$ref": f"#/channels/{event}"},
        "messages": [{"$ref": f"#/channels/{event}/messages/{event}"}],
        "title": f"{emitter} sends {event}",
        "summary": f"{emitter} ({who}, kind {em.kind}) sends {event}; this permission is {status}.",
        "tags": [{"name": f"emitter:{emitter}"}, {"name": side}, _status_tag(status)],
        "x-emitter": emitter, "x-emitter-kind": em.kind, "x-internal": em.internal, "x-status": status,
    }


def asyncapi(config: Config, title: str = "Event contract", version: str | None = None) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the contract: a channel and a message per event (addressed by
    the event type), and a `send` operation per emitter and event it may emit."""
    events = config.events
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version or config.hash[:12],
                 "description": "Events are CloudEvents 1.0 in the structured JSON format; each channel carries "
                                "one event type. Operations are the emitters allowed to send each event; "
                                "x-internal marks the engine's own services, whose events are refused from outside."},
        "defaultContentType": CONTENT_TYPE,
        "channels": {name: {"address": name, "title": name, "description": spec.description,
                            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
                            "x-status": spec.status}
                     for name, spec in events.items()},
        "operations": {f"{emitter}.{event}": _operation(config, emitter, event)
                       for emitter, em in config.emitters.items() for event in em.events if event in events},
        "components": {"messages": {name: _message(config, spec) for name, spec in events.items()}},
        "x-emitters": {name: {"kind": em.kind, "description": em.description, "internal": em.internal,
                              "events": dict(em.events)} for name, em in config.emitters.items()},
        "x-config-hash": config.hash,
    }
