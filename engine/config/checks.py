"""Pass 2 of the config check: references between files, and the spec's boundaries.

Every finding is located in the file that holds the offending name. A refusal names the
boundary it protects, so an architect learns why, not only what.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from ..errors import Problem
from ..jsonvalue import mentions
from ..model import ACTION_KINDS, PAYLOAD_FORMATS, ROUTE_CONSUMER, Config, RuleSpec
from .patterns import unsafe_pattern
from .refs import LocalFiles, check_refs, formats_of, patterns_of, unknown_format
from .yamlfile import YamlDoc

FORBIDDEN_WORDS = frozenset({"partner", "partners", "sale", "sales", "sell", "selling", "qualification",
                             "qualifications", "qualify", "qualified", "crm", "deal", "deals"})
# Inside a longer word too (notifypartner, hubspotcrm, qualifying, presale, dealflow, upsell); `deal`
# and `sell` only where a word starts (`sell`: or ends) with them, so ideal and counsellor pass.
FORBIDDEN_INSIDE = ("partner", "crm", "qualif", "sale")
FORBIDDEN_START, FORBIDDEN_END = ("deal", "sell"), ("sell",)
EVALUATION_FIELDS = ("evaluated_at",)
_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)


class _Reporter:
    def __init__(self, docs: dict[str, YamlDoc]):
        self.by_kind: dict[str, list[YamlDoc]] = {}
        for doc in docs.values():
            self.by_kind.setdefault(doc.kind, []).append(doc)

    def doc(self, kind: str) -> YamlDoc:
        return self.by_kind[kind][0]

    def error(self, doc: YamlDoc, path: tuple, code: str, message: str) -> None:
        doc.problem(path, code, message)

    def warning(self, doc: YamlDoc, path: tuple, code: str, message: str) -> None:
        doc.problem(path, code, message, severity="warning")


def run(config: Config, docs: dict[str, YamlDoc], files: LocalFiles | None = None) -> list[Problem]:
    """Run every pass-2 check; problems land on the docs, which the caller collects.

    `files` collects the schema files that payload `$ref`s reach."""
    report = _Reporter(docs)
    _check_events(config, report, files or LocalFiles(config.root))
    _check_emitters(config, report)
    _check_rules(config, report)
    _check_route(config, report)
    _check_usage(config, report)
    _check_consumers(config, report)
    return []


def words(name: str) -> set[str]:
    """The words of a name in any case style: notify_partner, CRMSyncScreen, sales2 -> words."""
    return {w.lower() for w in re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+", name)}


def forbidden_words(name: str) -> set[str]:
    """The words of a name that belong to the vocabulary the spec keeps out of the scenario layer."""
    return {w for w in words(name) if w in FORBIDDEN_WORDS or any(stem in w for stem in FORBIDDEN_INSIDE)
            or w.startswith(FORBIDDEN_START) or w.endswith(FORBIDDEN_END)}


def _vocabulary(report: _Reporter, doc: YamlDoc, path: tuple, what: str, name: str) -> None:
    bad = forbidden_words(name)
    if bad:
        report.error(doc, path, "forbidden_vocabulary",
                     f"{what} '{name}' names {', '.join(sorted(bad))} logic: the spec forbids partner, sales, "
                     "qualification, CRM and deal logic in the client scenario layer")


def _properties(config: Config, event: str) -> dict[str, Any] | None:
    spec = config.events.get(event)
    if spec is None:
        return None
    return spec.fields


def _check_events(config: Config, report: _Reporter, files: LocalFiles) -> None:
    doc = report.doc("events")
    for name, spec in config.events.items():
        base = ("events", name)
        _vocabulary(report, doc, base, "event", name)
        if schema_too_large(spec.payload):
            report.error(doc, base + ("payload",), "schema_too_large",
                         f"payload of {name} has more than {MAX_SCHEMA_NODES} nodes (aliases expanded)")
            continue
        for err in _META.iter_errors(spec.payload):
            report.error(doc, base + ("payload",) + tuple(err.absolute_path), "invalid_payload_schema",
                         f"payload of {name} is not a valid JSON Schema: {err.message}")
        props = _properties(config, name) or {}
        required = spec.payload.get("required")
        if spec.payload.get("additionalProperties") is False and isinstance(required, list):
            for i, fieldname in enumerate(required):
                if isinstance(fieldname, str) and fieldname not in props:
                    report.error(doc, base + ("payload", "required", i), "unknown_field",
                                 f"required field '{fieldname}' is not a payload field of {name}, and no other "
                                 "field is allowed: no event of this type could be valid")
        for i, fieldname in enumerate(spec.identity):
            if fieldname not in props:
                report.error(doc, base + ("identity", i), "unknown_field",
                             f"identity field '{fieldname}' is not a payload field of {name}")
        for fieldname in spec.repeatable_when:
            if fieldname not in props:
                report.error(doc, base + ("repeatable_when", fieldname), "unknown_field",
                             f"repeatable_when field '{fieldname}' is not a payload field of {name}")
            else:
                _check_repeatable(report, name, fieldname, list(spec.repeatable_when[fieldname]), props[fieldname],
                                  doc, base + ("repeatable_when", fieldname))
        kinds = spec.payload.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if isinstance(kinds, list) and "object" not in kinds:
            report.warning(doc, base + ("payload", "type"), "payload_never_valid",
                           f"the payload of {name} must be of type {' or '.join(map(str, kinds))}, but an event's "
                           "data is always an object: every event of this type would be rejected invalid_payload")
        for path, code, message in check_refs(files, spec.payload, base + ("payload",)):
            report.error(doc, path, code, message)
        for path, fmt in formats_of(spec.payload, base + ("payload",)):
            if fmt not in PAYLOAD_FORMATS:
                report.error(doc, path, "unknown_format", unknown_format(fmt))
        for path, pattern in patterns_of(spec.payload, base + ("payload",)):
            why = unsafe_pattern(pattern)
            if why:
                report.error(doc, path, "unsafe_pattern", f"pattern {pattern!r} is refused: {why}")


MAX_SCHEMA_NODES = 10_000


def schema_too_large(schema: Any) -> bool:
    """Whether a schema holds more than MAX_SCHEMA_NODES nodes, aliases expanded; checked before
    the meta-schema pass, whose cost grows with every node."""
    count, todo = 0, [schema]
    while todo:
        node = todo.pop()
        count += 1
        if count > MAX_SCHEMA_NODES:
            return True
        if isinstance(node, dict):
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return False


def _check_emitters(config: Config, report: _Reporter) -> None:
    doc = report.doc("emitters")
    external: dict[str, str] = {}
    for name, spec in config.emitters.items():
        _vocabulary(report, doc, ("emitters", name), "emitter", name)
        for event in spec.events:
            if event not in config.events:
                report.error(doc, ("emitters", name, "events", event), "unknown_event",
                             f"emitter '{name}' lists unknown event '{event}'")
            elif not spec.internal:
                external.setdefault(event, name)
    for name, spec in config.emitters.items():
        for event in spec.events:
            if spec.internal and event in external:
                report.error(doc, ("emitters", name, "events", event), "internal_event_external_emitter",
                             f"'{event}' is listed by internal emitter '{name}' and by external emitter "
                             f"'{external[event]}': an internal service's output must not be sendable from outside")


def _rule_locations(report: _Reporter) -> list[tuple[YamlDoc, tuple]]:
    found = []
    for doc in report.by_kind.get("rules", []):
        for i, _ in enumerate((doc.data or {}).get("rules", [])):
            found.append((doc, ("rules", i)))
    return found


def trigger_fields(config: Config, rule: RuleSpec) -> dict[str, Any] | None:
    """The payload fields a rule's trigger offers, or None when the trigger event is unknown."""
    if rule.on_event is None:
        return {name: {} for name in config.route.key + EVALUATION_FIELDS}
    return _properties(config, rule.on_event)


def _check_rules(config: Config, report: _Reporter) -> None:
    seen: dict[str, str] = {}  # rule id -> where it was first declared
    for rule, (doc, path) in zip(config.rules, _rule_locations(report), strict=True):
        _vocabulary(report, doc, path + ("id",), "rule", rule.id)
        if rule.id in seen:
            report.error(doc, path + ("id",), "duplicate_rule_id",
                         f"rule id '{rule.id}' is used twice (first at {seen[rule.id]})")
        else:
            line, column = doc.where(path + ("id",))
            seen[rule.id] = f"{doc.file}:{line}:{column}"
        if rule.on_event is not None and rule.on_event not in config.events:
            report.error(doc, path + ("on", "event"), "unknown_event", f"rule '{rule.id}' triggers on unknown event '{rule.on_event}'")
        for kind, refs in (("has", rule.has), ("lacks", rule.lacks)):
            for i, ref in enumerate(refs):
                props = _properties(config, ref.event)
                if props is None:
                    report.error(doc, path + ("when", kind, i), "unknown_event", f"rule '{rule.id}' {kind} unknown event '{ref.event}'")
                    continue
                for fieldname, value in ref.where:
                    if fieldname not in props:
                        report.error(doc, path + ("when", kind, i, "where", fieldname), "unknown_field",
                                     f"'{fieldname}' is not a payload field of {ref.event}")
                    else:
                        _check_comparison(report, rule, fieldname, [value], props[fieldname], doc,
                                          path + ("when", kind, i, "where", fieldname))
        offered = trigger_fields(config, rule)
        if offered is not None:
            for cond in rule.data:
                if cond.field not in offered:
                    report.error(doc, path + ("when", "data", cond.field), "unknown_field",
                                 f"'{cond.field}' is not a field of the trigger of rule '{rule.id}'")
                elif cond.kind in ("equals", "in"):
                    values = [cond.value] if cond.kind == "equals" else list(cond.value or ())
                    _check_comparison(report, rule, cond.field, values, offered[cond.field], doc,
                                      path + ("when", "data", cond.field))
            for fm in rule.fields:
                if fm.source is not None and fm.source not in offered:
                    report.error(doc, path + ("emit", "data", fm.field), "unknown_field",
                                 f"'{fm.source}' is not a field of the trigger of rule '{rule.id}'")
        _check_emit(config, report, rule, doc, path)
    _check_cycles(config, report)
    if config.evaluation_result is not None:
        er = config.evaluation_result
        doc = next(d for d in report.by_kind["rules"] if "evaluation_result" in (d.data or {}))
        props = _properties(config, er.event)
        if props is None:
            report.error(doc, ("evaluation_result", "event"), "unknown_event", f"evaluation_result names unknown event '{er.event}'")
        elif er.field not in props:
            report.error(doc, ("evaluation_result", "field"), "unknown_field", f"'{er.field}' is not a payload field of {er.event}")


def _refused(values: list[Any], schema: Any) -> list[Any]:
    """The values a field's schema refuses (none when the schema is a reference, resolved only at
    run time): a value no valid event can hold."""
    if not values or not _checkable(schema):
        return []
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    try:
        return [v for v in values if not validator.is_valid(v)]
    except Exception:  # noqa: BLE001 - a pattern that does not compile: unsafe_pattern says so
        return []


def _checkable(schema: Any) -> bool:
    """Whether values can be held to a field's schema here: not a reference (resolved at run time)
    and a valid schema (an invalid one, `type: nosuchtype`, is invalid_payload_schema already, and
    checking a value against it would raise)."""
    if not isinstance(schema, dict) or mentions(schema, ("$ref", "$dynamicRef")):
        return False
    return _META.is_valid(schema)


def _check_comparison(report: _Reporter, rule: RuleSpec, fieldname: str, values: list[Any], schema: Any,
                      doc: YamlDoc, path: tuple) -> None:
    """A condition comparing a field with values its schema refuses (`where: {attended: 'yes'}` on a
    boolean, `in: [lve]` on an enum) can never hold for a valid fact: the rule then never fires (or,
    under `lacks`, always does). A warning: the config is consistent, only surely not what was meant."""
    refused = _refused(values, schema)
    if refused:
        report.warning(doc, path, "condition_never_matches",
                       f"rule '{rule.id}' compares '{fieldname}' with {', '.join(json.dumps(v) for v in refused)}, "
                       "which its schema refuses: no valid event holds such a value, so this comparison never holds")


def _check_repeatable(report: _Reporter, event: str, fieldname: str, values: list[Any], schema: Any, doc: YamlDoc,
                      path: tuple) -> None:
    """A repeatable_when value the field's schema refuses never occurs in a valid event: the facts
    it was meant to let repeat are deduplicated after all."""
    refused = _refused(values, schema)
    if refused:
        report.warning(doc, path, "condition_never_matches",
                       f"repeatable_when of {event} lists {', '.join(json.dumps(v) for v in refused)} for "
                       f"'{fieldname}', which its schema refuses: no valid event holds such a value")


def _check_constants(report: _Reporter, rule: RuleSpec, fm: Any, schema: Any, doc: YamlDoc, path: tuple) -> None:
    """A value a rule writes as written in YAML (`value: yes` is the string "yes") that the field's
    schema refuses: every event the rule fires on is then rejected `rule_failed`. A warning, not an
    error: such a config still loads, and the run-time guard is what decides."""
    if not _checkable(schema):
        return  # a $ref is resolved at run time, where rule_failed still guards it
    constants = [fm.value] if fm.kind == "value" else [v for _, v in fm.cases] + ([fm.default] if fm.has_default else [])
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for value in constants:
        try:
            refusal = best_match(validator.iter_errors(value))
        except Exception:  # noqa: BLE001 - a pattern that does not compile: unsafe_pattern says so
            return
        if refusal is not None:
            report.warning(doc, path, "invalid_rule_value",
                           f"rule '{rule.id}' writes {json.dumps(value)} into '{fm.field}', which its schema "
                           f"refuses: {refusal.message} (every event the rule fires on will be rejected rule_failed)")
            return


def _check_emit(config: Config, report: _Reporter, rule: RuleSpec, doc: YamlDoc, path: tuple) -> None:
    props = _properties(config, rule.emit_event)
    if props is None:
        report.error(doc, path + ("emit", "event"), "unknown_event", f"rule '{rule.id}' emits unknown event '{rule.emit_event}'")
        return
    for fm in rule.fields:
        if fm.field not in props:
            report.error(doc, path + ("emit", "data", fm.field), "unknown_field",
                         f"'{fm.field}' is not a payload field of {rule.emit_event}")
        else:
            _check_constants(report, rule, fm, props[fm.field], doc, path + ("emit", "data", fm.field))
    _check_output_shape(config, report, rule, doc, path)
    emitter = config.emitters.get(rule.emit_source)
    if emitter is None:
        report.error(doc, path + ("emit", "source"), "unknown_emitter", f"rule '{rule.id}' emits as unknown emitter '{rule.emit_source}'")
    elif rule.emit_event not in emitter.events:
        report.error(doc, path + ("emit", "source"), "unauthorized_emitter",
                     f"emitter '{rule.emit_source}' does not list '{rule.emit_event}' in emitters.yaml")
    elif not emitter.internal:
        report.error(doc, path + ("emit", "source"), "external_rule_source",
                     f"rule '{rule.id}' emits as '{rule.emit_source}', which is not an internal emitter: "
                     "derived events come from the engine's own services")


def _check_output_shape(config: Config, report: _Reporter, rule: RuleSpec, doc: YamlDoc, path: tuple) -> None:
    """What a rule writes against what its event requires and allows, where the answer holds for
    every event the rule fires on: a required field no mapping sets and the trigger does not hold,
    or `copy_data` copying a field the trigger always has into a closed event that lacks it. Each
    means every such event is rejected `rule_failed`: a warning, as configs built to reach
    `rule_failed` must still load (the run-time guard decides)."""
    target = config.events[rule.emit_event].payload
    offered = trigger_fields(config, rule) or {}
    trigger = config.events.get(rule.on_event) if rule.on_event is not None else None
    if trigger is None:
        always = set(offered)  # an evaluation's trigger always holds the key and its time
    else:
        given = trigger.payload.get("required")  # a malformed one is invalid_payload_schema already
        always = {f for f in given if isinstance(f, str)} & set(offered) if isinstance(given, list) else set()
    mapped = {fm.field for fm in rule.fields}
    may_hold = mapped | (set(offered) if rule.copy_data else set())
    required = target.get("required")
    if isinstance(required, list):
        for fieldname in required:
            if isinstance(fieldname, str) and fieldname not in may_hold:
                report.warning(doc, path + ("id",), "rule_output_invalid",
                               f"rule '{rule.id}' never sets '{fieldname}', which {rule.emit_event} requires: "
                               "every event the rule fires on would be rejected rule_failed")
    if rule.copy_data and target.get("additionalProperties") is False:
        allowed = config.events[rule.emit_event].fields
        extra = sorted(always - set(allowed) - mapped)
        if extra:
            report.warning(doc, path + ("emit", "copy_data"), "rule_output_invalid",
                           f"rule '{rule.id}' copies {', '.join(repr(f) for f in extra)} from its trigger into "
                           f"{rule.emit_event}, which allows no such field: every event the rule fires on would be "
                           "rejected rule_failed")


def _check_cycles(config: Config, report: _Reporter) -> None:
    edges: dict[str, set[str]] = {}
    for rule in config.rules:
        if rule.on_event is not None:
            edges.setdefault(rule.on_event, set()).add(rule.emit_event)
    locations = _rule_locations(report)
    state: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        """Depth first; each edge back into the stack closes one cycle, and every one is kept."""
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                loops.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start)
    for loop in loops:
        rule_i = next(i for i, r in enumerate(config.rules) if r.on_event == loop[-2] and r.emit_event == loop[-1])
        doc, path = locations[rule_i]
        report.error(doc, path + ("emit", "event"), "rule_cycle",
                     f"rules form a cycle: {' -> '.join(loop)} (a derived event would trigger itself forever)")


def _check_route(config: Config, report: _Reporter) -> None:
    doc = report.doc("states")
    route = config.route
    index = {}
    for i, item in enumerate(doc.data["states"]):
        name = item if isinstance(item, str) else item["name"]
        if name in index:
            report.error(doc, ("states", i), "duplicate_state", f"state '{name}' is declared twice")
        index.setdefault(name, i)
    for name, state in route.states.items():
        path = ("states", index[name])
        _vocabulary(report, doc, path, "state", name)
        if state.screen:
            _vocabulary(report, doc, path + ("screen",), "screen", state.screen)
        for j, reminder in enumerate(state.reminders):
            _vocabulary(report, doc, path + ("reminders", j), "reminder", reminder)
    if route.initial not in route.states:
        report.error(doc, ("initial",), "unknown_state", f"initial state '{route.initial}' is not declared")
    inputs = config.input_events()
    triggers = {t.trigger for t in route.transitions if t.trigger in config.events and t.trigger in inputs}
    # a key field no trigger carries is a typo in the key: said once, at the key, not at every transition
    nowhere = [f for f in route.key if triggers and not any(f in (_properties(config, t) or {}) for t in triggers)]
    for fieldname in nowhere:
        report.error(doc, ("key", route.key.index(fieldname)), "unknown_field",
                     f"route key field '{fieldname}' is a payload field of no trigger "
                     f"({', '.join(sorted(triggers))})")
    for i, t in enumerate(route.transitions):
        path = ("transitions", i)
        for s in t.sources:
            if s != "*" and s not in route.states:
                report.error(doc, path + ("source",), "unknown_state", f"transition source '{s}' is not a declared state")
        if t.dest not in route.states:
            report.error(doc, path + ("dest",), "unknown_state", f"transition dest '{t.dest}' is not a declared state")
        if t.trigger not in config.events:
            report.error(doc, path + ("trigger",), "unknown_event", f"trigger '{t.trigger}' is not an event of the contract")
        elif t.trigger not in inputs:
            report.error(doc, path + ("trigger",), "trigger_not_input",
                         f"trigger '{t.trigger}' is not an input event (an internal service emits it or a rule derives it): "
                         "the scenario layer takes only the canonical client events as inputs")
        else:
            props = _properties(config, t.trigger) or {}
            for fieldname in route.key:
                if fieldname not in props and fieldname not in nowhere:
                    report.error(doc, path + ("trigger",), "unknown_field",
                                 f"route key field '{fieldname}' is not a payload field of trigger '{t.trigger}'")
    if route.initial in route.states:
        reachable = _reachable(config, lambda t: True)
        for name in route.states:
            if name not in reachable:
                report.error(doc, ("states", index[name]), "unreachable_state",
                             f"state '{name}' has no path from the initial state '{route.initial}'")


def _reachable(config: Config, usable: Any) -> set[str]:
    route = config.route
    seen, todo = {route.initial}, [route.initial]
    while todo:
        here = todo.pop()
        for t in route.transitions:
            if usable(t) and ("*" in t.sources or here in t.sources) and t.dest not in seen and t.dest in route.states:
                seen.add(t.dest)
                todo.append(t.dest)
    return seen


def sent_events(config: Config) -> set[str]:
    """Events some external emitter lists (planned or implemented)."""
    return {e for em in config.emitters.values() if not em.internal for e in em.events}


def _check_usage(config: Config, report: _Reporter) -> None:
    doc = report.doc("states")
    route = config.route
    sent = sent_events(config)
    index = {(s if isinstance(s, str) else s["name"]): i for i, s in reversed(list(enumerate(doc.data["states"])))}
    full = _reachable(config, lambda t: True)
    by_emitters = _reachable(config, lambda t: t.trigger in sent)
    for name in route.states:
        if name in full and name not in by_emitters:
            report.warning(doc, ("states", index[name]), "state_unsent",
                           f"state '{name}' is reachable only through triggers no approved emitter sends")
    warned = set()
    for i, t in enumerate(route.transitions):
        if t.trigger in config.events and t.trigger not in sent and t.trigger not in warned:
            warned.add(t.trigger)
            report.warning(doc, ("transitions", i, "trigger"), "trigger_unsent",
                           f"trigger '{t.trigger}' is sent by no emitter yet (add one in emitters.yaml)")
    for name, state in route.states.items():
        if name != route.initial and not state.screen:
            report.warning(doc, ("states", index[name]), "no_screen", f"state '{name}' has no screen")
        outgoing = any(("*" in t.sources or name in t.sources) for t in route.transitions)
        if not outgoing and not state.final:
            report.warning(doc, ("states", index[name]), "trap_state",
                           f"state '{name}' has no outgoing transition and is not marked final")
    used = {t.trigger for t in route.transitions}
    for rule in config.rules:
        used |= {rule.emit_event, *(r.event for r in rule.has + rule.lacks)}
        if rule.on_event:
            used.add(rule.on_event)
    if config.evaluation_result:
        used.add(config.evaluation_result.event)
    events_doc = report.doc("events")
    for name in config.events:
        if name not in used:
            report.warning(events_doc, ("events", name), "unused_event",
                           f"event '{name}' is used by no transition and no rule")


def _route_consumer_name(name: str) -> bool:
    """Whether `name` is the built-in Route Consumer's: case-insensitive, `-` and `_` alike."""
    return name.lower().replace("_", "-") == ROUTE_CONSUMER


def _check_consumers(config: Config, report: _Reporter) -> None:
    """consumers.yaml, when present: each consumer receives derived events and action kinds that
    exist, and none stands in for the built-in Route Consumer."""
    if not report.by_kind.get("consumers"):
        return
    doc = report.doc("consumers")
    derived = config.emitted_by_rules()
    inputs = config.input_events()
    for name, spec in config.consumers.items():
        path = ("consumers", name)
        _vocabulary(report, doc, path, "consumer", name)
        if _route_consumer_name(name):
            report.error(doc, path, "route_consumer_clash",
                         f"consumer '{name}' clashes with the built-in Route Consumer, which applies route and "
                         "screen actions inside the engine and is not declared here: choose another name")
        for i, kind in enumerate(spec.actions):
            if kind not in ACTION_KINDS:  # pass 1 refuses it too; kept for a model built by hand
                report.error(doc, path + ("receives", "actions", i), "unknown_action",
                             f"consumer '{name}' receives unknown action kind '{kind}' "
                             f"(the scenario produces {', '.join(ACTION_KINDS)})")
        for i, event in enumerate(spec.events):
            at = path + ("receives", "events", i)
            if event not in config.events:
                report.error(doc, at, "unknown_event", f"consumer '{name}' receives unknown event '{event}'")
            elif event not in derived:
                why = ("it is an input event, and an input event is not in the outbox" if event in inputs else
                       "an internal emitter lists it, but the outbox holds only what the rules derive")
                rules = ", ".join(sorted(derived)) or "none"
                report.error(doc, at, "not_in_outbox",
                             f"consumer '{name}' receives '{event}', which no rule emits: {why} "
                             f"(events in the outbox: {rules})")
        if not spec.actions and not spec.events:
            report.warning(doc, path + ("receives",), "receives_nothing",
                           f"consumer '{name}' receives nothing: list action kinds or derived events under receives")
