"""The rule language at run time: conditions over facts, field mapping, derived events.

Rules are data: each condition and mapping kind is a small function in a table, and no
expression from YAML is ever evaluated. A derived event gets a deterministic id (a UUIDv5
of the rule and its cause), so a replay yields the same ids.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..jsonvalue import PLAIN_TYPES, canonical_json, same
from .contract import Contract
from ..model import Config, FactRef, FieldMap, RuleSpec
from ..reasons import Rejected, error

try:  # CPython's own SHA-1: the same digest without the setup OpenSSL does for every new hash
    from _sha1 import sha1 as _sha1
except ImportError:  # an interpreter built without its own hashes
    def _sha1(data: bytes) -> Any:  # type: ignore[misc]
        return hashlib.sha1(data, usedforsecurity=False)

NAMESPACE = uuid.UUID("6f1c2e0a-4b5d-5e6f-8a9b-0c1d2e3f4a5b")
_NAMESPACE_BYTES = NAMESPACE.bytes
MAX_CASCADE = 64

Fact = tuple[str, dict[str, Any]]  # (event type, data)

CONDITIONS: dict[str, Callable[[dict[str, Any], str, Any], bool]] = {
    "equals": lambda data, f, v: f in data and same(data[f], v),
    "in": lambda data, f, vs: f in data and any(same(data[f], v) for v in vs),
    "exists": lambda data, f, v: (f in data) is v,
}


def _cases(fm: FieldMap, trigger: dict[str, Any]) -> tuple[bool, Any]:
    if fm.source in trigger:
        for when, value in fm.cases:
            if same(trigger[fm.source], when):
                return True, value
    return fm.has_default, fm.default


MAPPINGS: dict[str, Callable[[FieldMap, dict[str, Any]], tuple[bool, Any]]] = {
    "from": lambda fm, t: (fm.source in t, t.get(fm.source)),  # type: ignore[arg-type]
    "value": lambda fm, t: (True, fm.value),
    "cases": _cases,
}


@dataclass
class Derived:
    """A rule's output, before it is stored."""

    rule: RuleSpec
    event: dict[str, Any]  # the CloudEvent
    identity: str | None
    cause: tuple[str, str]  # (source, id) of what triggered it
    route_key: str | None = None
    floats: bool | None = None  # False: the data holds no float (its canonical JSON needs no rewrite)


def _matches(ref: FactRef, fact: Fact) -> bool:
    return fact[0] == ref.event and all(f in fact[1] and same(fact[1][f], v) for f, v in ref.where)


def applies(rule: RuleSpec, trigger: dict[str, Any], facts: list[Fact]) -> bool:
    """Whether `rule` fires: every data condition holds, every `has` is found, no `lacks` is
    (the general reading `compile_applies` is held to; `why_not` says which part fails)."""
    return why_not(rule, trigger, facts) is None


def why_not(rule: RuleSpec, trigger: dict[str, Any], facts: list[Fact]) -> str | None:
    """The first reason a rule does not fire, for people reading a lead's story."""
    for c in rule.data:
        if not CONDITIONS[c.kind](trigger, c.field, c.value):
            return f"data condition on '{c.field}' ({c.kind}) does not hold"
    for ref in rule.has:
        if not any(_matches(ref, f) for f in facts):
            return f"no {ref.event} fact{_where(ref)}"
    for ref in rule.lacks:
        if any(_matches(ref, f) for f in facts):
            return f"a {ref.event} fact{_where(ref)} exists"
    return None


def _where(ref: FactRef) -> str:
    return " with " + ", ".join(f"{k}={v!r}" for k, v in ref.where) if ref.where else ""


def build_data(rule: RuleSpec, trigger: dict[str, Any]) -> dict[str, Any]:
    data = dict(trigger) if rule.copy_data else {}
    for fm in rule.fields:
        present, value = MAPPINGS[fm.kind](fm, trigger)
        if present:
            data[fm.field] = value
        else:
            data.pop(fm.field, None)
    return data


# The hex digit of a UUID's variant nibble (bits 10xx) for each hex digit the hash put there.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def compile_applies(rule: RuleSpec) -> Callable[[dict[str, Any], list[Fact]], bool]:
    """`applies` for one rule as a closure built once per config: conditions looked up in the
    table once, parts a rule leaves empty skipped, `_matches` inlined (tests hold the two equal)."""
    checks = tuple((CONDITIONS[c.kind], c.field, c.value) for c in rule.data)
    has = tuple((ref.event, ref.where) for ref in rule.has)
    lacks = tuple((ref.event, ref.where) for ref in rule.lacks)

    def found(event: str, where: tuple[tuple[str, Any], ...], facts: list[Fact]) -> bool:
        for fact_type, data in facts:
            if fact_type == event and all(f in data and same(data[f], v) for f, v in where):
                return True
        return False

    def fires(trigger: dict[str, Any], facts: list[Fact]) -> bool:
        for condition, name, value in checks:
            if not condition(trigger, name, value):
                return False
        for event, where in has:
            if not found(event, where, facts):
                return False
        for event, where in lacks:
            if found(event, where, facts):
                return False
        return True

    return fires


def compile_build(rule: RuleSpec) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`build_data` for one rule as a closure built once per config: each field's mapping looked
    up in the table once, a `from` or `value` field done inline (tests hold the two equal)."""
    copy = rule.copy_data
    steps = tuple((fm.field, fm.kind, fm.source, fm.value, fm, MAPPINGS[fm.kind]) for fm in rule.fields)

    def build(trigger: dict[str, Any]) -> dict[str, Any]:
        data = dict(trigger) if copy else {}
        for name, kind, source, value, fm, mapping in steps:
            if kind == "value":
                data[name] = value
                continue
            if kind == "from":
                present = source in trigger
                value = trigger.get(source)  # type: ignore[arg-type]
            else:
                present, value = mapping(fm, trigger)
            if present:
                data[name] = value
            else:
                data.pop(name, None)
        return data

    return build


def derived_id(rule_id: str, cause: tuple[str, str]) -> str:
    """uuid.uuid5(NAMESPACE, ...) as text, without building a UUID object (tests hold them equal).

    It runs for every derived event and every action, so the name of three strings goes
    straight to orjson: for strings canonical_json's walks change nothing and orjson writes
    what it would. The version and variant are written into the hex text, not into bytes.
    """
    name = _name(rule_id, cause)
    h = _sha1(_NAMESPACE_BYTES + name).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _name(rule_id: str, cause: tuple[str, str]) -> bytes:
    """canonical_json([rule_id, *cause]) as UTF-8; it raises ValueError for a lone surrogate."""
    if type(rule_id) is str and type(cause[0]) is str and type(cause[1]) is str:
        try:
            return orjson.dumps((rule_id, cause[0], cause[1]))
        except orjson.JSONEncodeError:
            pass  # not JSON: the general path says why, as it always did
    return canonical_json([rule_id, cause[0], cause[1]]).encode("utf-8")


class RuleBook:
    """The config's rules, indexed by what triggers them."""

    def __init__(self, config: Config, contract: Contract):
        self.contract = contract
        # rule id -> (rule, applies, build_data), the last two as closures built once here
        self._compiled = {rule.id: (rule, compile_applies(rule), compile_build(rule)) for rule in config.rules}
        self.on_event: dict[str, list[RuleSpec]] = {}
        self.on_evaluation: list[RuleSpec] = [r for r in config.rules if r.on_event is None]
        for rule in config.rules:
            if rule.on_event is not None:
                self.on_event.setdefault(rule.on_event, []).append(rule)

    def triggered_by(self, event_type: str) -> bool:
        return event_type in self.on_event

    def derive(self, rules: list[RuleSpec], trigger: dict[str, Any], cause: tuple[str, str],
               facts: list[Fact], known: Callable[[str, str, str | None], bool]) -> list[Derived]:
        """Fire `rules` on `trigger`, then every rule their outputs trigger, breadth first.

        `facts` grows with each output, so later rules see earlier outputs; `known(type,
        identity, route_key)` tells whether a fact with that identity is already stored, in
        which case the output is already a fact and is not derived again.
        """
        out: list[Derived] = []
        queue = [(rule, trigger, cause) for rule in rules]
        while queue:
            if len(out) > MAX_CASCADE:
                raise Rejected("rule_failed", [error("", "cascade_too_long", f"more than {MAX_CASCADE} derived events")])
            rule, data, why = queue.pop(0)
            fires, build = self._closures(rule)
            if not fires(data, facts):
                continue
            derived = self._emit(rule, build(data), why)
            if derived.identity is not None and (known(rule.emit_event, derived.identity, derived.route_key)
                                                 or any(d.identity == derived.identity and d.event["type"] == rule.emit_event
                                                        for d in out)):
                continue
            out.append(derived)
            facts.append((rule.emit_event, derived.event["data"]))
            next_cause = (derived.event["source"], derived.event["id"])
            queue += [(r, derived.event["data"], next_cause) for r in self.on_event.get(rule.emit_event, [])]
        return out

    def _closures(self, rule: RuleSpec) -> tuple[Callable[[dict[str, Any], list[Fact]], bool],
                                                  Callable[[dict[str, Any]], dict[str, Any]]]:
        """The rule's closures; a rule not of this config (a caller's own) gets them built now."""
        compiled = self._compiled.get(rule.id)
        if compiled is not None and compiled[0] is rule:
            return compiled[1], compiled[2]
        return compile_applies(rule), compile_build(rule)

    def _emit(self, rule: RuleSpec, data: dict[str, Any], cause: tuple[str, str]) -> Derived:
        errors = self.contract.payload_errors(rule.emit_event, data)
        if errors:
            raise Rejected("rule_failed", [
                {**e, "message": f"rule '{rule.id}' produced an invalid {rule.emit_event}: {e['message']}"}
                for e in errors
            ])
        event = {"specversion": "1.0", "id": derived_id(rule.id, cause), "source": rule.emit_source,
                 "type": rule.emit_event, "datacontenttype": "application/json", "data": data}
        floats = False if PLAIN_TYPES.issuperset(map(type, data.values())) else None
        return Derived(rule, event, self.contract.identity_of(rule.emit_event, data), cause,
                       self.contract.route_key(data), floats)
