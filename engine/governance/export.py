"""Exporting the contract for other tools: a JSON Schema per event, an AsyncAPI 3.0 document.

Each event's schema describes a whole CloudEvents envelope (the engine's own envelope schema)
whose `type` is the event's name and whose `data` is the event's payload schema. Payload
`$ref`s are expanded in place, so every exported schema stands alone: no file of the config
directory is needed to read it (a reference back into itself is not expanded twice; it is
left as an open schema carrying a `$comment`).

A config with a consumers.yaml adds the outbox: one channel (the feed, addressed by consumer)
carrying a message per derived event and per `action.<kind>`, and a `receive` operation per
consumer listing the messages it receives. Without consumers the document is the contract alone.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from referencing.jsonschema import DRAFT202012

from ..runtime.contract import registry_of
from ..model import Config, ConsumerSpec, EventSpec

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


# ---------------------------------------------------------------- the outbox (consumers.yaml)

OUTBOX_CHANNEL = "outbox"
OUTBOX_ADDRESS = "/v1/feed/{consumer}"
ACTION_SOURCE = "scenario"
_SUBJECT = {"type": "string", "minLength": 1,
            "description": "The route key's values joined by `/`, in the order of the config's key."}
_TIME = {"type": "string", "format": "date-time", "description": "When the item was committed."}
_ITEM_ID = {"type": "string", "minLength": 1,
            "description": "The item's stable id: the same on every delivery, so a consumer dedupes by it."}


def _free(base: str, taken: Any) -> str:
    """`base`, or `base` with underscores appended until it is not among `taken`."""
    while base in taken:
        base += "_"
    return base


def _one_of(values: list[str], what: str) -> dict[str, Any]:
    values = list(dict.fromkeys(values))
    return {"type": "string", "enum": values, "description": what} if values else {"type": "string", "description": what}


def _action_data(config: Config, kind: str) -> dict[str, Any]:
    """The schema of an action exactly as `process` reports it in `actions`."""
    route = config.route
    states = list(route.states)
    if kind == "route":
        props = {"from": {"type": "string", "description": "The state the route left."},
                 "to": _one_of(states, "The state the route entered.")}
    elif kind == "screen":
        props = {"screen": _one_of([s.screen for s in route.states.values() if s.screen], "The screen to show.")}
    else:
        event = {"type": "object", "required": ["type", "id", "data"],
                 "properties": {"type": {"type": "string"}, "id": {"type": "string"}, "data": {"type": "object"}},
                 "description": "The input event that moved the route."}
        context = {"type": "object", "required": [*route.key, "state", "event"],
                   "properties": {**{f: {"description": "A route key field."} for f in route.key},
                                  "state": _one_of(states, "The state entered."), "event": event}}
        props = {"reminder": _one_of([r for s in route.states.values() for r in s.reminders], "The reminder to send."),
                 "context": context}
    return {"type": "object", "required": ["type", *props], "additionalProperties": False,
            "properties": {"type": {"const": kind}, **props}}


def _action_payload(config: Config, kind: str) -> dict[str, Any]:
    return {"type": "object", "required": ["specversion", "id", "source", "type", "subject", "time", "data"],
            "additionalProperties": False,
            "properties": {"specversion": {"const": "1.0"}, "id": _ITEM_ID,
                           "source": {"const": ACTION_SOURCE, "description": "Actions come from the scenario."},
                           "type": {"const": f"action.{kind}", "description": "The item type."},
                           "subject": _SUBJECT, "time": _TIME, "datacontenttype": {"const": "application/json"},
                           "data": {"description": "The action exactly as `process` reports it in `actions`.",
                                    **_action_data(config, kind)}}}


def _outbox_event_payload(config: Config, spec: EventSpec) -> dict[str, Any]:
    schema = _envelope_for(config, spec)
    schema["required"] = [*schema["required"], "subject", "time"]
    schema["properties"] = {**schema["properties"], "id": _ITEM_ID, "subject": _SUBJECT, "time": _TIME}
    if _uses_later_keywords(schema):
        return {"schemaFormat": _SCHEMA_2020_12, "schema": schema}
    return schema


def _readers(config: Config, item: str) -> list[str]:
    return [c.name for c in config.consumers.values() if c.receives(item)]


def _outbox_message(config: Config, item: str) -> dict[str, Any]:
    if item.startswith("action."):
        kind = item.removeprefix("action.")
        summary = f"A {kind} action the scenario decided, as a CloudEvent from source `{ACTION_SOURCE}`."
        payload = _action_payload(config, kind)
    else:
        spec = config.events[item]
        summary = f"The derived event {item} as `process` reports it in `emitted`, with subject and time added."
        payload = _outbox_event_payload(config, spec)
    return {"name": item, "title": item, "summary": summary, "contentType": CONTENT_TYPE, "payload": payload,
            "tags": [{"name": "outbox"}], "x-consumers": _readers(config, item)}


def _receive(config: Config, consumer: ConsumerSpec, channel: str, ids: dict[str, str]) -> dict[str, Any]:
    received = [item for item in config.outbox_types() if consumer.receives(item)]
    what = ", ".join(received) or "nothing"
    return {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{ids[item]}"} for item in received],
        "title": f"{consumer.name} receives from the outbox",
        "summary": f"{consumer.name} receives {what}.",
        **({"description": consumer.description} if consumer.description else {}),
        "tags": [{"name": f"consumer:{consumer.name}"}, {"name": "outbox"}],
        "x-consumer": consumer.name,
        "x-receives": {"actions": list(consumer.actions), "events": list(consumer.events)},
    }


def _with_outbox(config: Config, document: dict[str, Any]) -> dict[str, Any]:
    """The outbox channel, its messages and each consumer's `receive` operation, added to `document`."""
    channel = _free(OUTBOX_CHANNEL, document["channels"])
    messages = document["components"]["messages"]
    ids = {item: _free(f"outbox.{item}", messages) for item in config.outbox_types()}
    names = list(config.consumers)
    document["channels"][channel] = {
        "address": OUTBOX_ADDRESS, "title": "The outbox",
        "description": "What the scenario decides, one CloudEvent per item: the derived events and the route, "
                       "screen and reminder actions. Each consumer reads its own feed, which holds the item types "
                       "it receives, in commit order per route key; every item keeps its id on every delivery.",
        "parameters": {"consumer": {"enum": names, "description": "A consumer declared in consumers.yaml."}},
        "messages": {ids[item]: {"$ref": f"#/components/messages/{ids[item]}"} for item in ids},
    }
    for item, message_id in ids.items():
        messages[message_id] = _outbox_message(config, item)
    for consumer in config.consumers.values():
        key = _free(f"{consumer.name}.receive", document["operations"])
        document["operations"][key] = _receive(config, consumer, channel, ids)
    document["info"]["description"] += (" The outbox channel carries what the scenario decides; each consumer's "
                                        "receive operation lists the item types it receives.")
    document["x-consumers"] = {c.name: {"description": c.description, "actions": list(c.actions),
                                        "events": list(c.events)} for c in config.consumers.values()}
    return document


def asyncapi(config: Config, title: str = "Event contract", version: str | None = None) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the contract: a channel and a message per event (addressed by
    the event type), and a `send` operation per emitter and event it may emit; with consumers, the
    outbox channel and a `receive` operation per consumer."""
    document = _contract(config, title, version)
    return _with_outbox(config, document) if config.consumers else document


def _contract(config: Config, title: str, version: str | None) -> dict[str, Any]:
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
