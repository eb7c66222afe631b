"""The contract as a document: one Markdown page rendered from a loaded `Config`.

The page holds the events and their payload fields, the emitter x event matrix, the rules
in plain sentences, the route (table and diagram), the outbox's consumers (when the config has
a consumers.yaml) and the spec boundaries the config is held to. It is a pure function of the config: no clock, no paths, only the config's hash, so a
repository can keep the rendered page in sync and check it in CI.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import checks, load as config_module
from .diagram import render_diagram
from ..model import ACTION_KINDS, PAYLOAD_FORMATS, Config, DataCondition, EventSpec, FactRef, FieldMap, RuleSpec

NONE = "—"
_FIELD_KEYWORDS = frozenset({"type", "format", "description", "title", "enum", "const", "pattern", "minLength",
                             "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                             "examples", "default", "properties", "required", "additionalProperties", "items"})
_PAYLOAD_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "description", "title",
                               "$schema"})
_BOUNDS = (("minLength", "length ≥"), ("maxLength", "length ≤"), ("minimum", "≥"), ("maximum", "≤"),
           ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<"))


def render_markdown(config: Config) -> str:
    """The whole contract of `config` as one deterministic Markdown document."""
    sections = [_header(config), _events(config), _emitters(config), _rules(config), _route(config),
                _consumers(config), _boundaries(config), _warnings(config)]
    return "\n\n".join(s for s in sections if s).rstrip("\n") + "\n"


# ---------------------------------------------------------------- small helpers

def _code(value: Any) -> str:
    """A name or a JSON value as inline code; names stay bare, other values are JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _json(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _names(names: Any, empty: str = NONE) -> str:
    items = [_code(n) for n in names]
    return ", ".join(items) if items else empty


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or NONE


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _relative(config: Config, file: str) -> str:
    """A config file's name as shown in problems, made relative to the config directory."""
    for path in config.files:
        name = path.relative_to(config.root).as_posix()
        if file == name or file.endswith("/" + name):
            return name
    return file


def _sentence(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ---------------------------------------------------------------- header

def _header(config: Config) -> str:
    counts = (f"{len(config.events)} events, {len(config.emitters)} emitters, {len(config.rules)} rules, "
              f"{len(config.route.states)} states, {len(config.route.transitions)} transitions")
    if config.consumers:
        counts += f", {len(config.consumers)} consumer{'s' if len(config.consumers) > 1 else ''}"
    toc = ["[Events](#events)", "[Emitters](#emitters)", "[Rules](#rules)", "[Route](#route)"]
    toc += ["[Consumers](#consumers)"] if config.consumers else []
    toc += ["[Spec boundaries](#spec-boundaries)"] + (["[Warnings](#warnings)"] if config.warnings else [])
    return "\n".join([
        "# Contract",
        "",
        "<!-- Generated from the config by the `docs` command. Do not edit by hand: change the YAML,",
        "     then regenerate this file with `docs --output FILE`. -->",
        "",
        f"Rendered from the config with hash `{config.hash}`: {counts}.",
        "",
        " · ".join(toc),
    ])


# ---------------------------------------------------------------- events

def _origin(config: Config, name: str) -> str:
    """Who may bring an event in: outside emitters, or the engine's own rules and services."""
    outside = [f"{_code(e.name)} ({e.events[name]})" for e in config.emitters.values()
               if name in e.events and not e.internal]
    inside = [f"internal {_code(e.name)} ({e.events[name]})" for e in config.emitters.values()
              if name in e.events and e.internal]
    rules = [_code(r.id) for r in config.rules if r.emit_event == name]
    if name in config.input_events():
        return "input from " + ", ".join(outside) if outside else \
            "input, but no emitter lists it yet: rejected until one is added to emitters.yaml"
    parts = ([f"rule{'s' if len(rules) > 1 else ''} {', '.join(rules)}"] if rules else []) + inside + (
        [f"also listed by {', '.join(outside)}"] if outside else [])
    return "derived: " + "; ".join(parts)


def _events(config: Config) -> str:
    rows = [[_code(e.name), e.status, _origin(config, e.name), _names(e.identity)] for e in config.events.values()]
    intro = ("Each event is one CloudEvents 1.0 envelope whose `type` is the event name and whose `data` is "
             "checked against the event's payload schema (JSON Schema draft 2020-12, `format` enforced). "
             "*Input* events come from outside, from an emitter that lists them; *derived* events come "
             "from the rules and the engine's internal services only. An event whose identity fields equal "
             "those of an accepted fact of the same type is a duplicate.")
    parts = ["## Events", intro, _table(["event", "status", "comes from", "identity"], rows)]
    parts += [_event(config, e) for e in config.events.values()]
    return "\n\n".join(parts)


def _event(config: Config, event: EventSpec) -> str:
    facts = [f"- **Status:** {event.status}", f"- **Comes from:** {_origin(config, event.name)}",
             f"- **Identity:** {_names(event.identity, 'none (only the envelope `source` + `id` dedupes it)')}"]
    for field, values in event.repeatable_when.items():
        facts.append(f"- **May repeat** when `{field}` is one of {', '.join(_json(v) for v in values)}")
    if event.payload.get("additionalProperties") is False:
        facts.append("- **Payload:** closed: a field not listed here is refused")
    parts = [f"### `{event.name}`", event.description or "", "\n".join(facts), _fields_table(event.payload)]
    others = [f"- `{k}`: {_json(v)}" for k, v in event.payload.items() if k not in _PAYLOAD_KEYWORDS]
    if others:
        parts.append("Further payload constraints (JSON Schema):\n\n" + "\n".join(others))
    return "\n\n".join(p for p in parts if p)


def _fields_table(schema: dict[str, Any]) -> str:
    rows = list(_field_rows(schema, ""))
    if not rows:
        return "No payload fields are declared."
    return _table(["field", "type", "required", "allowed values", "description"], rows)


def _field_rows(schema: dict[str, Any], prefix: str) -> Any:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required", []) if isinstance(schema.get("required"), list) else []
    for name, sub in props.items():
        sub = sub if isinstance(sub, dict) else {}
        yield [f"`{prefix}{name}`", _type(sub), "yes" if name in required else "no", _allowed(sub),
               sub.get("description", "")]
        if isinstance(sub.get("properties"), dict):
            yield from _field_rows(sub, f"{prefix}{name}.")


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array",
            type(None): "null"}[type(value)]


def _type(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if declared:
        text = " or ".join(declared) if isinstance(declared, list) else str(declared)
    elif "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        text = " or ".join(dict.fromkeys(_json_type(v) for v in values)) if isinstance(values, list) else "any"
    elif "$ref" in schema:
        text = f"see `{schema['$ref']}`"
    else:
        text = "any"
    if "format" in schema:
        text += f" ({schema['format']})"
    if isinstance(schema.get("items"), dict):
        text += f" of {_type(schema['items'])}"
    return text


def _allowed(schema: dict[str, Any]) -> str:
    parts = []
    if isinstance(schema.get("enum"), list):
        parts.append(", ".join(_json(v) for v in schema["enum"]))
    if "const" in schema:
        parts.append(f"only {_json(schema['const'])}")
    parts += [f"{word} {schema[key]}" for key, word in _BOUNDS if key in schema]
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    if schema.get("additionalProperties") is False:
        parts.append("closed object")
    if "default" in schema:
        parts.append(f"default {_json(schema['default'])}")
    if isinstance(schema.get("examples"), list):
        parts.append("e.g. " + ", ".join(_json(v) for v in schema["examples"]))
    parts += [f"`{k}`: {_json(v)}" for k, v in schema.items() if k not in _FIELD_KEYWORDS]
    return "; ".join(parts)


# ---------------------------------------------------------------- emitters

def _emitters(config: Config) -> str:
    rows = [[_code(e.name), e.kind, "**yes**" if e.internal else "no", e.description]
            for e in config.emitters.values()]
    header = ["event"] + [f"`{e.name}`" + (" (internal)" if e.internal else "") for e in config.emitters.values()]
    matrix = [[_code(name)] + [e.events.get(name, NONE) for e in config.emitters.values()] for name in config.events]
    intro = ("An event is accepted only from an emitter that lists it, `planned` or `implemented`. "
             "**Internal** emitters are the engine's own services: an input event that names one as its "
             "`source` is rejected, and an event an internal emitter lists may not be listed by an "
             "external one.")
    return "\n\n".join(["## Emitters", intro, _table(["emitter", "kind", "internal", "description"], rows),
                        "### Emitter × event matrix", _table(header, matrix)])


# ---------------------------------------------------------------- rules

def _rules(config: Config) -> str:
    key = _names(config.route.key)
    intro = (f"Rules are data, not code. A rule fires on an accepted event or on an explicit evaluation; its "
             f"conditions look at the trigger's payload and at the facts (accepted and derived events) of the "
             f"same route key ({key}). What it emits is checked against the contract, becomes a fact, and may "
             f"trigger further rules. A field mapped from a trigger field that the trigger lacks is left out.")
    parts = ["## Rules", intro]
    er = config.evaluation_result
    if er is not None:
        parts.append(f"An explicit evaluation reports, per route key, `{er.field}` of the latest `{er.event}` "
                     "fact (null when there is none).")
    parts += [_rule(config, rule) for rule in config.rules]
    if not config.rules:
        parts.append("The config declares no rules.")
    return "\n\n".join(parts)


def _rule(config: Config, rule: RuleSpec) -> str:
    if rule.on_event is None:
        offered = _names(config.route.key + checks.EVALUATION_FIELDS)
        when = f"When an explicit evaluation runs (its trigger holds {offered})"
    else:
        when = f"When `{rule.on_event}` is accepted"
    conditions = ([_data_condition(c) for c in rule.data] + [_fact(ref, True) for ref in rule.has]
                  + [_fact(ref, False) for ref in rule.lacks])
    when += ", if " + _sentence(conditions) + "," if conditions else ","
    what = f"emit `{rule.emit_event}` as `{rule.emit_source}`"
    if rule.copy_data:
        what += " with a copy of the trigger's payload" + (", then these fields:" if rule.fields else ".")
    else:
        what += " with:" if rule.fields else " with no data."
    parts = [f"### `{rule.id}`", f"{rule.description} *({_relative(config, rule.file)})*".strip(), f"{when} {what}"]
    if rule.fields:
        parts.append(_table(["field", "value"], [[f"`{fm.field}`", _mapping(fm)] for fm in rule.fields]))
    return "\n\n".join(parts)


def _data_condition(cond: DataCondition) -> str:
    if cond.kind == "equals":
        return f"the trigger's `{cond.field}` is {_json(cond.value)}"
    if cond.kind == "in":
        return f"the trigger's `{cond.field}` is one of {', '.join(_json(v) for v in cond.value)}"
    return f"the trigger {'has' if cond.value else 'has no'} `{cond.field}`"


def _fact(ref: FactRef, present: bool) -> str:
    where = " with " + _sentence([f"`{f}` = {_json(v)}" for f, v in ref.where]) if ref.where else ""
    return f"{'a' if present else 'no'} `{ref.event}` fact{where} exists"


def _mapping(fm: FieldMap) -> str:
    if fm.kind == "value":
        return _json(fm.value)
    if fm.kind == "from":
        return f"the trigger's `{fm.source}`"
    cases = "; ".join(f"{_json(when)} → {_json(value)}" for when, value in fm.cases)
    otherwise = f"otherwise {_json(fm.default)}" if fm.has_default else "otherwise left out"
    return f"by the trigger's `{fm.source}`: {cases}; {otherwise}"


# ---------------------------------------------------------------- route

def _route(config: Config) -> str:
    route = config.route
    intro = (f"One route per route key ({_names(route.key)}), starting in `{route.initial}`. Only input events "
             "move it, along the transitions below; an accepted event with no transition from the current "
             "state is kept as a fact and the route stays put. A self-transition counts as a change. On "
             "entering a state, its screen is shown and its reminders are queued.")
    states = [[_code(s.name) + (" (initial)" if s.name == route.initial else "") + (" (final)" if s.final else ""),
               _code(s.screen) if s.screen else NONE, _names(s.reminders), s.description]
              for s in route.states.values()]
    moves = [[_code(t.trigger), "any state (`*`)" if t.sources == ("*",) else _names(t.sources), _code(t.dest),
              t.description] for t in route.transitions]
    diagram = "```mermaid\n" + render_diagram(config, "mermaid") + "```"
    return "\n\n".join(["## Route", intro, diagram, "### States",
                        _table(["state", "screen", "reminders on entering", "description"], states),
                        "### Transitions", _table(["trigger", "from", "to", "description"], moves)])


# ---------------------------------------------------------------- consumers

_ACTION_MEANING = {"route": "a route moved (`from`, `to`)", "screen": "the screen to show (`screen`)",
                   "reminder": "a reminder to send (`reminder`, `context`)"}


def _consumers(config: Config) -> str:
    """Who reads the outbox and what each receives; nothing when the config has no consumers.yaml."""
    if not config.consumers:
        return ""
    intro = ("What the engine decides is written to the outbox in the same transaction as the event: the "
             "derived events, as `process` reports them, and the route, screen and reminder actions, as "
             "CloudEvents of type `action.<kind>` from source `scenario`. Every item carries a stable `id`, "
             "the route key's values joined by `/` as `subject`, and its commit `time`. Each consumer "
             "receives the items of the types it lists, in commit order per route key. The built-in Route "
             "Consumer applies route and screen actions inside the engine and is not declared here.")
    rows = [[_code(c.name), _names(c.actions), _names(c.events), c.description] for c in config.consumers.values()]
    types = []
    for item in config.outbox_types():
        kind = item.removeprefix("action.")
        what = "action: " + _ACTION_MEANING[kind] if item.startswith("action.") else "derived event"
        readers = [_code(c.name) for c in config.consumers.values() if c.receives(item)]
        types.append([_code(item), what, ", ".join(readers) or NONE])
    return "\n\n".join(["## Consumers", intro,
                         _table(["consumer", "actions", "derived events", "description"], rows),
                         "### Outbox items and who receives them",
                         _table(["item type", "what", "received by"], types)])


# ---------------------------------------------------------------- boundaries

def _boundaries(config: Config) -> str:
    internal = sorted(config.internal_events() | config.emitted_by_rules())
    items = [
        ("no time logic", "time_logic",
         f"keys {_names(sorted(config_module.TIME_KEYS))} are refused wherever they stand in the config "
         "(in events.yaml outside payloads, whose keys are field names; timers, delays and schedules belong "
         "outside the scenario layer)"),
        ("no callbacks", "callback_refused",
         f"keys {_names(sorted(config_module.CALLBACK_KEYS))} are refused: no code runs from YAML; the allowed "
         "actions are routing, screens and reminders"),
        ("no forbidden vocabulary", "forbidden_vocabulary",
         f"an event, emitter, rule, state, screen or reminder name containing any of the words "
         f"{_names(sorted(checks.FORBIDDEN_WORDS))} is refused, in any case style, also inside a longer word "
         "(notifypartner, crmsync, qualifying, presale; a word starting with deal or sell, or ending with sell)"),
        ("triggers are input events", "trigger_not_input",
         f"a transition trigger must be an input event; today: {_names(sorted(config.input_events()))}"),
        ("internal events are not sendable from outside", "internal_event_external_emitter",
         f"an event an internal emitter lists may not be listed by an external emitter; rules emit only as "
         f"internal emitters (`external_rule_source`); today's internal and derived events: {_names(internal)}"),
        ("rules form no cycle", "rule_cycle", "a derived event may not, through rules, trigger itself"),
        ("every state is reachable", "unreachable_state", "each state needs a path from the initial state"),
        ("local `$ref` only", "remote_ref",
         "a payload `$ref` may point only to a file inside the config directory (`ref_outside_config`): the "
         "engine never fetches a schema over the network"),
        ("safe patterns", "unsafe_pattern", "a payload `pattern` prone to catastrophic backtracking is refused"),
        ("checked formats only", "unknown_format",
         f"a payload `format` must be one the engine checks ({_names(PAYLOAD_FORMATS)}): any other would let "
         "every value through unchecked"),
        ("strict YAML, closed schemas", "unknown_key",
         "YAML 1.2 core only (duplicate keys and non-core tags refused); each file has a closed JSON Schema"),
    ]
    if config.consumers:  # consumers.yaml's boundaries, shown only for a config that has one
        items += [
            ("the Route Consumer is built in", "route_consumer_clash",
             "it applies route and screen actions inside the engine; a consumer named `route-consumer` (any case, "
             "`-` or `_`) is refused"),
            ("consumers receive what the outbox holds", "not_in_outbox",
             f"derived events only (an input event is not in the outbox; `unknown_event` for one the contract "
             f"lacks) and the action kinds {_names(ACTION_KINDS)} (`unknown_action`)"),
        ]
    lines = [f"- **{title}** (`{code}`): {text}." for title, code, text in items]
    intro = ("What `validate` refuses, with the problem code it reports. A config that breaks "
             "one of these is not loaded at all.")
    return "\n\n".join(["## Spec boundaries", intro, "\n".join(lines)])


def _warnings(config: Config) -> str:
    if not config.warnings:
        return ""
    lines = [f"- `{_relative(config, p.file)}:{p.line}` `{p.code}`: {p.message}" for p in config.warnings]
    intro = "What `validate` warns about in this config (warnings do not fail validation):"
    return "\n\n".join(["## Warnings", intro, "\n".join(lines)])
