"""Comparing two configs: every change, classified as breaking or safe for emitters and consumers.

The modes are Confluent Schema Registry's compatibility types, read for a whole contract:

- **backward**: NEW can take everything OLD took. Every event an emitter may send under OLD is
  still accepted under NEW, and what OLD stored (facts, routes) still means the same. A change
  that breaks this breaks **emitters** (producers not yet moved to NEW, and data at rest).
- **forward**: OLD readers can take everything NEW produces. Every event NEW accepts or derives
  is still valid under OLD. A change that breaks this breaks **consumers** still on OLD.
- **full**: both.

Payload schemas are compared keyword by keyword, with every `$ref` expanded first. A keyword
this module does not analyse is reported as `schema_changed`, breaking for both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..model import (
    Config,
    EvaluationResult,
    EventSpec,
    FactRef,
    FieldMap,
    RuleSpec,
    StateSpec,
)
from .export import ANNOTATIONS, standalone_payload

EMITTERS = "emitters"
CONSUMERS = "consumers"
BOTH = (EMITTERS, CONSUMERS)
MODES = {"backward": frozenset({EMITTERS}), "forward": frozenset({CONSUMERS}), "full": frozenset(BOTH)}

_LOWER = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_UPPER = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
_RESTRICTIONS = ("format", "pattern", "multipleOf")
_ANALYSED = frozenset({"type", "enum", "const", "uniqueItems", "properties", "required", "additionalProperties",
                       "items", *_LOWER, *_UPPER, *_RESTRICTIONS})


@dataclass(frozen=True)
class Change:
    """One difference between two configs and whom it breaks (empty: safe for everyone)."""

    kind: str
    where: str
    detail: str
    breaking_for: tuple[str, ...] = ()

    def breaking_in(self, mode: str) -> bool:
        return bool(MODES[_mode(mode)] & set(self.breaking_for))

    def as_dict(self, mode: str) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "detail": self.detail,
                "breaking_for": list(self.breaking_for), "breaking_in_mode": self.breaking_in(mode)}


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"unknown compatibility mode {mode!r} (one of: {', '.join(MODES)})")
    return mode


def violates(changes: Iterable[Change], mode: str) -> bool:
    """Whether any change breaks what `mode` promises."""
    return any(c.breaking_in(mode) for c in changes)


def diff(old: Config, new: Config, db: str | Path | None = None) -> list[Change]:
    """Every change from `old` to `new`, in config order: events, emitters, route, rules, consumers.

    With `db`, a removed route state is checked against the routes stored there; without
    one, routes are assumed to sit in it.
    """
    counts = route_counts(db) if db is not None else None
    return [*_events(old, new), *_emitters(old, new), *_route(old, new, counts), *_rules(old, new),
            *_consumers(old, new)]


def route_counts(db: str | Path) -> dict[str, int]:
    """How many stored routes sit in each state, read from a database without changing it."""
    from ..store import open_reader

    reader = open_reader(db)
    try:
        return reader.route_counts()
    finally:
        reader.close()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------- events


def _renames(old: Config, new: Config, removed: list[str], added: list[str]) -> dict[str, str]:
    """Removed event -> added event, when exactly one of each carries the same payload."""
    payload = {name: _json(standalone_payload(old, name)) for name in removed}
    payload |= {name: _json(standalone_payload(new, name)) for name in added}
    pairs = {}
    for gone in removed:
        matches = [n for n in added if payload[n] == payload[gone]]
        if len(matches) == 1 and [r for r in removed if payload[r] == payload[matches[0]]] == [gone]:
            pairs[gone] = matches[0]
    return pairs


def _events(old: Config, new: Config) -> Iterator[Change]:
    removed = [n for n in old.events if n not in new.events]
    added = [n for n in new.events if n not in old.events]
    renamed = _renames(old, new, removed, added)
    for name in removed:
        if name in renamed:
            yield Change("event_renamed", f"event {name}",
                         f"renamed to {renamed[name]} (same payload): emitters still sending {name} are "
                         f"refused, and readers of {name} no longer receive it", BOTH)
        else:
            yield Change("event_removed", f"event {name}",
                         "NEW refuses this type (unknown_event): emitters still sending it are rejected", (EMITTERS,))
    for name in added:
        if name not in renamed.values():
            yield Change("event_added", f"event {name}", "a new type: readers on OLD do not know it", (CONSUMERS,))
    for name in old.events:
        if name in new.events:
            yield from _event(old, new, old.events[name], new.events[name])


def _event(old: Config, new: Config, o: EventSpec, n: EventSpec) -> Iterator[Change]:
    at = f"event {o.name}"
    if o.status != n.status:
        yield Change("status_changed", at, f"{o.status} -> {n.status} (informational)")
    if o.description != n.description:
        yield Change("description_changed", at, "the description changed (informational)")
    if o.identity != n.identity:
        yield Change("identity_changed", at,
                     f"{_show(list(o.identity))} -> {_show(list(n.identity))}: facts stored under OLD were told "
                     "apart by other fields, so a repeat may now be accepted twice or a new fact refused as a "
                     "duplicate",
                     BOTH)
    yield from _repeatable(at, o.repeatable_when, n.repeatable_when)
    yield from _compare(at, standalone_payload(old, o.name), standalone_payload(new, n.name))


def _repeatable(at: str, o: dict[str, tuple[Any, ...]], n: dict[str, tuple[Any, ...]]) -> Iterator[Change]:
    for field in dict.fromkeys([*o, *n]):
        before, after = o.get(field, ()), n.get(field, ())
        gained = [v for v in after if _json(v) not in {_json(b) for b in before}]
        lost = [v for v in before if _json(v) not in {_json(a) for a in after}]
        if gained:
            yield Change("repeatable_when_changed", f"{at}.{field}",
                         f"may now repeat with {_show(gained)}: readers see repeats OLD deduplicated", (CONSUMERS,))
        if lost:
            yield Change("repeatable_when_changed", f"{at}.{field}",
                         f"may no longer repeat with {_show(lost)}: such repeats are now duplicates", (EMITTERS,))


# ---------------------------------------------------------------- payload schemas


def _as_schema(node: Any) -> dict[str, Any]:
    if node is True or node is None:
        return {}
    if node is False:
        return {"not": {}}
    return node if isinstance(node, dict) else {}


def _compare(at: str, o: Any, n: Any) -> Iterator[Change]:
    """What changed between two subschemas, each change located by its field path."""
    o, n = _as_schema(o), _as_schema(n)
    if o == n:
        return
    yield from _object(at, o, n)
    yield from _types(at, o, n)
    yield from _values(at, o, n)
    yield from _bounds(at, o, n)
    yield from _restrictions(at, o, n)
    if "items" in o or "items" in n:
        yield from _compare(f"{at}[]", o.get("items"), n.get("items"))
    yield from _unanalysed(at, o, n)


def _closed(s: dict[str, Any]) -> bool:
    return s.get("additionalProperties") is False or s.get("unevaluatedProperties") is False


def _object(at: str, o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    props_o, props_n = o.get("properties", {}), n.get("properties", {})
    req_o, req_n = set(o.get("required", [])), set(n.get("required", []))
    for field in dict.fromkeys([*props_o, *props_n, *sorted(req_o | req_n)]):
        where = f"{at}.{field}"
        if field in props_n and field not in props_o:
            yield _field_added(where, field in req_n, _closed(o))
        elif field in props_o and field not in props_n:
            yield _field_removed(where, field in req_o, _closed(n), props_o[field])
        else:
            if field in req_n and field not in req_o:
                yield Change("field_made_required", where, "events valid under OLD may lack it", (EMITTERS,))
            elif field in req_o and field not in req_n:
                yield Change("field_made_optional", where, "readers on OLD expect it; NEW events may lack it",
                             (CONSUMERS,))
            if field in props_o:
                yield from _compare(where, props_o[field], props_n[field])
    if _closed(o) and not _closed(n):
        yield Change("type_widened", at, "no longer closed: fields unknown to OLD readers are accepted", (CONSUMERS,))
    elif _closed(n) and not _closed(o):
        yield Change("type_narrowed", at, "now closed: fields not declared are refused", (EMITTERS,))
    extra_o, extra_n = o.get("additionalProperties"), n.get("additionalProperties")
    if extra_o is not False and extra_n is not False and extra_o != extra_n:
        yield from _compare(f"{at}.*", extra_o, extra_n)


def _field_added(where: str, required: bool, old_closed: bool) -> Change:
    reasons = ["events valid under OLD lack it"] if required else []
    if old_closed:
        reasons.append("OLD readers refuse the unknown field (OLD is closed)")
    return Change("required_field_added" if required else "optional_field_added", where,
                  "; ".join(reasons) or "OLD readers accept it as an undeclared field",
                  tuple(p for p, hit in ((EMITTERS, required), (CONSUMERS, old_closed)) if hit))


def _field_removed(where: str, was_required: bool, new_closed: bool, schema: Any) -> Change:
    reasons = ["NEW refuses events that still carry it (NEW is closed)"] if new_closed else []
    loosened = not new_closed and _as_schema(schema) != {}
    if was_required or loosened:
        reasons.append("readers on OLD expect it" if was_required else "any value is now accepted")
    return Change("field_removed", where, "; ".join(reasons) or "it was optional and unconstrained",
                  tuple(p for p, hit in ((EMITTERS, new_closed), (CONSUMERS, was_required or loosened)) if hit))


_NUMERIC = {"integer": "number"}


def _type_set(s: dict[str, Any]) -> set[str] | None:
    t = s.get("type")
    if t is None:
        return None
    return {t} if isinstance(t, str) else set(t)


def _covers(wide: set[str] | None, narrow: set[str] | None) -> bool:
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(t in wide or _NUMERIC.get(t) in wide for t in narrow)


def _direction(at: str, what: str, narrower: bool, wider: bool) -> Change:
    if narrower and not wider:
        return Change("type_narrowed", at, f"{what}: some values valid under OLD are refused", (EMITTERS,))
    if wider and not narrower:
        return Change("type_widened", at, f"{what}: values OLD readers refuse are accepted", (CONSUMERS,))
    return Change("type_changed", at, f"{what}: neither contains the other", BOTH)


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def _types(at: str, o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    types_o, types_n = _type_set(o), _type_set(n)
    if types_o != types_n:
        what = f"type {_show(o.get('type'))} -> {_show(n.get('type'))}"
        yield _direction(at, what, _covers(types_o, types_n), _covers(types_n, types_o))


def _allowed(s: dict[str, Any]) -> list[Any] | None:
    if "const" in s:
        return [s["const"]]
    return list(s["enum"]) if isinstance(s.get("enum"), list) else None


def _values(at: str, o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    values_o, values_n = _allowed(o), _allowed(n)
    if values_o is None and values_n is not None:
        yield _direction(at, f"restricted to {_show(values_n)}", True, False)
    elif values_o is not None and values_n is None:
        yield _direction(at, f"no longer restricted to {_show(values_o)}", False, True)
    elif values_o is not None and values_n is not None:
        known_o, known_n = {_json(v) for v in values_o}, {_json(v) for v in values_n}
        for value in values_o:
            if _json(value) not in known_n:
                yield Change("enum_value_removed", at, f"{_show(value)} is no longer allowed", (EMITTERS,))
        for value in values_n:
            if _json(value) not in known_o:
                yield Change("enum_value_added", at, f"{_show(value)} is now allowed; OLD readers refuse it",
                             (CONSUMERS,))


def _bounds(at: str, o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    for keyword in (*_LOWER, *_UPPER):
        before, after = o.get(keyword), n.get(keyword)
        if before == after:
            continue
        what = f"{keyword} {_show(before)} -> {_show(after)}"
        if before is None or after is None:
            yield _direction(at, what, before is None, after is None)
        elif not all(isinstance(v, (int, float)) for v in (before, after)):
            yield _direction(at, what, True, True)
        else:
            narrower = after > before if keyword in _LOWER else after < before
            yield _direction(at, what, narrower, not narrower)


def _restrictions(at: str, o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    for keyword in _RESTRICTIONS:
        before, after = o.get(keyword), n.get(keyword)
        if before != after:
            yield _direction(at, f"{keyword} {_show(before)} -> {_show(after)}", before is None, after is None)
    unique_o, unique_n = o.get("uniqueItems") is True, n.get("uniqueItems") is True
    if unique_o != unique_n:
        yield _direction(at, f"uniqueItems {_show(unique_o)} -> {_show(unique_n)}", unique_n, unique_o)


def _unanalysed(at: str, o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    notes = []
    for keyword in dict.fromkeys([*o, *n]):
        if keyword in _ANALYSED or o.get(keyword) == n.get(keyword):
            continue
        if keyword in ANNOTATIONS or keyword.startswith("x-"):
            notes.append(keyword)
        elif keyword == "unevaluatedProperties" and {type(o.get(keyword)), type(n.get(keyword))} <= {bool, type(None)}:
            continue
        else:
            yield Change("schema_changed", at, f"'{keyword}' changed; not analysed, so assumed breaking", BOTH)
    if notes:
        yield Change("annotation_changed", at, f"{', '.join(notes)} changed (informational)")


# ---------------------------------------------------------------- emitters


def _emitters(old: Config, new: Config) -> Iterator[Change]:
    for name, em in old.emitters.items():
        if name not in new.emitters:
            events = ", ".join(em.events) or "none"
            yield Change("emitter_removed", f"emitter {name}", f"its events are refused from this source ({events})",
                         (EMITTERS,))
    for name in new.emitters:
        if name not in old.emitters:
            events = ", ".join(new.emitters[name].events) or "nothing"
            yield Change("emitter_added", f"emitter {name}", f"may emit {events}")
    for name, o in old.emitters.items():
        n = new.emitters.get(name)
        if n is None:
            continue
        at = f"emitter {name}"
        if o.internal != n.internal:
            yield (Change("emitter_internal_changed", at, "now internal: events it sends from outside are refused",
                          (EMITTERS,)) if n.internal else
                   Change("emitter_internal_changed", at, "no longer internal: events only the engine derived may "
                          "now come from outside under this source", (CONSUMERS,)))
        if o.kind != n.kind:
            yield Change("emitter_kind_changed", at, f"{o.kind} -> {n.kind} (informational)")
        if o.description != n.description:
            yield Change("description_changed", at, "the description changed (informational)")
        yield from _permissions(at, o.events, n.events)


def _permissions(at: str, o: dict[str, str], n: dict[str, str]) -> Iterator[Change]:
    for event, status in o.items():
        if event not in n:
            yield Change("emitter_permission_removed", f"{at} -> {event}",
                         "may no longer emit it: such events are refused (unauthorized_emitter)", (EMITTERS,))
        elif n[event] != status:
            yield Change("status_changed", f"{at} -> {event}", f"{status} -> {n[event]} (informational)")
    for event, status in n.items():
        if event not in o:
            yield Change("emitter_permission_added", f"{at} -> {event}", f"may now emit it ({status})")


# ---------------------------------------------------------------- route


def _route(old: Config, new: Config, counts: dict[str, int] | None) -> Iterator[Change]:
    o, n = old.route, new.route
    if o.key != n.key:
        yield Change("route_key_changed", "route key", f"{_show(list(o.key))} -> {_show(list(n.key))}: routes "
                     "stored under OLD are keyed by other fields, so NEW no longer finds them", BOTH)
    if o.initial != n.initial:
        yield Change("initial_state_changed", "route initial", f"{o.initial} -> {n.initial}: new routes start "
                     "elsewhere", (CONSUMERS,))
    for name in o.states:
        if name not in n.states:
            yield _state_removed(name, counts)
    for name in n.states:
        if name not in o.states:
            yield Change("state_added", f"state {name}", "readers on OLD do not know this state", (CONSUMERS,))
    for name, state in o.states.items():
        if name in n.states:
            yield from _state(f"state {name}", state, n.states[name])
    yield from _transitions(old, new)


def _state_removed(name: str, counts: dict[str, int] | None) -> Change:
    stranded = ("NEW does not declare it, so such routes stay there, reported as unknown_state, and no event "
                "moves them")
    if counts is None:
        return Change("state_removed", f"state {name}", f"routes may sit in it (no database given): {stranded}", BOTH)
    if counts.get(name, 0):
        return Change("state_removed", f"state {name}",
                      f"{counts[name]} route(s) in the database sit in it: {stranded}", BOTH)
    return Change("state_removed", f"state {name}", "no route in the database sits in it")


def _state(at: str, o: StateSpec, n: StateSpec) -> Iterator[Change]:
    if o.screen != n.screen:
        yield Change("screen_changed", at, f"screen {_show(o.screen)} -> {_show(n.screen)}: what readers show "
                     "changes", (CONSUMERS,))
    for reminder in n.reminders:
        if reminder not in o.reminders:
            yield Change("reminder_added", at, f"reminder {reminder} on entering: readers on OLD do not know it",
                         (CONSUMERS,))
    for reminder in o.reminders:
        if reminder not in n.reminders:
            yield Change("reminder_removed", at, f"reminder {reminder} is no longer sent on entering")
    if o.final != n.final:
        yield Change("state_final_changed", at, f"final {_show(o.final)} -> {_show(n.final)} (informational)")
    if o.description != n.description:
        yield Change("description_changed", at, "the description changed (informational)")


def _edges(config: Config) -> dict[tuple[str, str, str], None]:
    return {(t.trigger, s, t.dest): None for t in config.route.transitions for s in t.sources}


def _transitions(old: Config, new: Config) -> Iterator[Change]:
    edges_o, edges_n = _edges(old), _edges(new)
    for trigger, source, dest in edges_o:
        if (trigger, source, dest) not in edges_n:
            yield Change("transition_removed", f"transition {trigger}: {source} -> {dest}",
                         f"{trigger} no longer moves a route from {source} to {dest}: routes waiting in {source} "
                         "for it stay there", (EMITTERS,))
    for trigger, source, dest in edges_n:
        if (trigger, source, dest) not in edges_o:
            yield Change("transition_added", f"transition {trigger}: {source} -> {dest}",
                         f"{trigger} now moves a route from {source} to {dest}")


# ---------------------------------------------------------------- rules


def _rules(old: Config, new: Config) -> Iterator[Change]:
    rules_o, rules_n = {r.id: r for r in old.rules}, {r.id: r for r in new.rules}
    for rid, rule in rules_o.items():
        if rid not in rules_n:
            yield Change("rule_removed", f"rule {rid}", f"{rule.emit_event} is no longer derived this way",
                         (CONSUMERS,))
    for rid, rule in rules_n.items():
        if rid not in rules_o:
            yield Change("rule_added", f"rule {rid}", f"derives {rule.emit_event} from {_trigger(rule)}: readers on "
                         "OLD receive events OLD never derived", (CONSUMERS,))
    for rid, rule in rules_o.items():
        if rid in rules_n:
            yield from _rule(rule, rules_n[rid])
    ev_o, ev_n = old.evaluation_result, new.evaluation_result
    if ev_o != ev_n:
        yield Change("evaluation_result_changed", "evaluation_result", f"{_result(ev_o)} -> {_result(ev_n)}: the "
                     "evaluation result readers get changes", (CONSUMERS,))


def _result(result: EvaluationResult | None) -> str:
    return f"{result.event}.{result.field}" if result else "none"


def _trigger(rule: RuleSpec) -> str:
    return rule.on_event if rule.on_event is not None else "an evaluation"


def _mapping(m: FieldMap | None) -> str:
    if m is None:
        return "none"
    if m.kind == "value":
        return f"value {_show(m.value)}"
    if m.kind == "from":
        return f"from {m.source}"
    cases = ", ".join(f"{_show(e)}: {_show(v)}" for e, v in m.cases)
    default = f", default {_show(m.default)}" if m.has_default else ""
    return f"from {m.source} cases {{{cases}}}{default}"


def _rule(o: RuleSpec, n: RuleSpec) -> Iterator[Change]:
    at = f"rule {o.id}"
    when = (("on", _trigger), ("when.has", lambda r: _listed(_ref(f) for f in r.has)),
            ("when.lacks", lambda r: _listed(_ref(f) for f in r.lacks)),
            ("when.data", lambda r: _listed(f"{c.field} {c.kind} {_show(c.value)}" for c in r.data)))
    for label, get in when:
        if get(o) != get(n):
            yield Change("rule_conditions_changed", at, f"{label} {get(o)} -> {get(n)}: it fires on other facts",
                         (CONSUMERS,))
    emit = (("emit.event", lambda r: r.emit_event), ("emit.source", lambda r: r.emit_source),
            ("emit.copy_data", lambda r: r.copy_data))
    for label, get in emit:
        if get(o) != get(n):
            yield Change("rule_output_changed", at, f"{label} {_show(get(o))} -> {_show(get(n))}", (CONSUMERS,))
    fields_o, fields_n = {f.field: f for f in o.fields}, {f.field: f for f in n.fields}
    for field in dict.fromkeys([*fields_o, *fields_n]):
        if fields_o.get(field) != fields_n.get(field):
            yield Change("rule_output_changed", at, f"emit.data.{field}: {_mapping(fields_o.get(field))} -> "
                         f"{_mapping(fields_n.get(field))}", (CONSUMERS,))
    if o.description != n.description:
        yield Change("description_changed", at, "the description changed (informational)")


def _listed(items: Iterable[str]) -> str:
    return f"[{', '.join(items)}]"


def _ref(ref: FactRef) -> str:
    return ref.event + (f" where {_show(dict(ref.where))}" if ref.where else "")


# ---------------------------------------------------------------- consumers (consumers.yaml)


def _received(actions: tuple[str, ...], events: tuple[str, ...]) -> list[str]:
    return [f"action.{kind}" for kind in actions] + list(events)


def _consumers(old: Config, new: Config) -> Iterator[Change]:
    """A consumer removed, or receiving less, breaks it; one added, or receiving more, is safe."""
    for name, c in old.consumers.items():
        if name not in new.consumers:
            what = ", ".join(_received(c.actions, c.events)) or "nothing"
            yield Change("consumer_removed", f"consumer {name}",
                         f"{name} is no longer declared: its feed is refused and it no longer receives {what}",
                         (CONSUMERS,))
    for name, c in new.consumers.items():
        if name not in old.consumers:
            what = ", ".join(_received(c.actions, c.events)) or "nothing"
            yield Change("consumer_added", f"consumer {name}", f"{name} receives {what}")
    for name, o in old.consumers.items():
        n = new.consumers.get(name)
        if n is None:
            continue
        at = f"consumer {name}"
        lost = [t for t in _received(o.actions, o.events) if t not in _received(n.actions, n.events)]
        gained = [t for t in _received(n.actions, n.events) if t not in _received(o.actions, o.events)]
        if lost:
            yield Change("consumer_narrowed", at, f"{name} no longer receives {', '.join(lost)}", (CONSUMERS,))
        if gained:
            yield Change("consumer_widened", at, f"{name} now receives {', '.join(gained)} as well")
        if o.description != n.description:
            yield Change("description_changed", at, "the description changed (informational)")
