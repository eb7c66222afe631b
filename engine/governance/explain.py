"""A route key's story: what came in for it, which rules fired or did not and why, how its route moved.

Everything is read from the database; the rules are judged with the engine's current
config. The story walks the key's inputs (accepted, duplicates and rejections whose
envelope names the key) and its evaluations in the order of `history.timeline`, keeping
the facts known at each point, so `rules.why_not` answers with the facts of that moment.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..jsonvalue import canonical_json
from ..model import RuleSpec
from ..runtime.rules import Fact, build_data, why_not
from .history import INPUT, Row, timeline

if TYPE_CHECKING:
    from ..runtime.pipeline import Pipeline as Engine
    from ..store.base import KeyStory


def explain(engine: Engine, **key: Any) -> dict[str, Any] | None:
    """The story of the route key `key` (all its fields), or None when nothing concerns it.

    Returns `{key, config_hash, story: [step, ...], classification, route, if_evaluated_now}`;
    each step is an input (status, reason, errors, event; when accepted: fact, data, rules,
    route_change, actions) or an evaluation (evaluated_at, rules), numbered from 1. A rule
    verdict is `{rule, on, fired, why_not, emitted}`.
    """
    route_key = _route_key(engine, key)
    # Raw bytes spell a value as their producer wrote it: literally, or with JSON escapes (any
    # character may be written \uXXXX), or in another encoding json.loads still reads. So the
    # store offers as candidates the lines that hold every value literally, or hold a backslash
    # or a NUL byte; envelopes are canonical JSON, where a value is spelled one way.
    strings = [v for v in key.values() if isinstance(v, str)]
    stored = engine.store.key_story(route_key, body_texts=[canonical_json(v) for v in strings],  # type: ignore[attr-defined]
                                    raw_texts=[v.encode("utf-8") for v in strings])
    facts = {r["seq"]: r for r in stored.facts}
    inputs = _inputs(stored, key)
    evaluations = stored.evaluations
    found = engine.route(**key)
    if not (facts or inputs or evaluations or found):
        return None
    story = _Story(engine, key, facts, _by_fact(stored))
    for kind, row in timeline(inputs, evaluations):
        story.input(row) if kind == INPUT else story.evaluation(row)
    er = engine.config.evaluation_result
    return {
        "key": dict(key), "config_hash": engine.config.hash, "story": story.steps,
        "classification": None if er is None else {"event": er.event, "field": er.field,
                                                   "value": story.latest(er.event, er.field)},
        "route": None if found is None else {k: v for k, v in found.items() if k != "history"},
        "if_evaluated_now": story.judge_now(),
    }


def _route_key(engine: Engine, key: dict[str, Any]) -> str:
    fields = engine.config.route.key
    if set(key) != set(fields) or any(v is None for v in key.values()):
        raise UsageError(f"a story is told for one route key: give all of {list(fields)}")
    return canonical_json([key[f] for f in fields])


def _names(payload: Any, key: dict[str, Any]) -> bool:
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, dict) and all(f in data and data[f] == v for f, v in key.items())


def _inputs(stored: KeyStory, key: dict[str, Any]) -> list[Row]:
    """The input-log rows that concern the key, by seq, each with its `event` (the parsed envelope or None)."""
    found = []
    for r in stored.inputs:
        r = dict(r)
        if r["status"] == "accepted":
            found.append({**r, "event": json.loads(r.pop("body"))})
            continue
        event = json.loads(r.pop("body")) if r["status"] == "duplicate" else _parsed(r.pop("raw"))
        if _names(event, key):
            found.append({**r, "event": event})
    return sorted(found, key=lambda r: r["seq"])


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _by_fact(stored: KeyStory) -> dict[int, dict[str, list[Row]]]:
    """Route changes and actions of the key, grouped by the fact that caused them."""
    grouped: dict[int, dict[str, list[Row]]] = defaultdict(lambda: {"history": [], "actions": []})
    for r in stored.history:
        grouped[r["fact_seq"]]["history"].append(r)
    for r in stored.actions:
        grouped[r["fact_seq"]]["actions"].append(json.loads(r["body"]))
    return grouped


class _Story:
    """Walks the timeline, keeping the facts known at each point."""

    def __init__(self, engine: Engine, key: dict[str, Any], facts: dict[int, Row],
                 by_fact: dict[int, dict[str, list[Row]]]):
        self.engine, self.key, self.facts, self.by_fact = engine, key, facts, by_fact
        self.known: list[Fact] = []
        self.steps: list[dict[str, Any]] = []
        self.by_cause: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for row in facts.values():
            if row["derived"]:
                cause = ("evaluation", row["evaluation_seq"]) if row["evaluation_seq"] is not None else \
                        ("fact", row["cause_seq"])
                self.by_cause[cause].append(row)

    def _step(self, entry: dict[str, Any]) -> None:
        self.steps.append({"step": len(self.steps) + 1, **entry})

    def input(self, row: Row) -> None:
        event = row["event"] if isinstance(row["event"], dict) else {}
        entry: dict[str, Any] = {
            "kind": "input", "at": row["recorded_at"], "input": row["seq"], "origin": row["origin"],
            "line": row["line"], "status": row["status"], "reason": row["reason"],
            "event": {"source": row["source"] or _text(event.get("source")), "id": row["id"], "type": row["type"]},
        }
        if row["status"] == "rejected":
            entry["errors"] = json.loads(row["errors"]) if row["now_reason"] == row["reason"] else []
            entry["resolved"] = ({"at": row["resolved_at"], "by_input": row["resolved_by_input"]}
                                 if row["resolved_at"] else None)
        if row["status"] == "accepted":
            entry.update(self._accepted(row["fact_seq"], event))
        self._step(entry)

    def _accepted(self, fact_seq: int, event: dict[str, Any]) -> dict[str, Any]:
        fact = self.facts[fact_seq]
        data = json.loads(fact["data"])
        self.known.append((fact["type"], data))
        rules = self.engine.rules.on_event.get(fact["type"], [])
        verdicts = self._cascade(rules, data, self.by_cause.get(("fact", fact_seq), []))
        caused = self.by_fact.get(fact_seq, {"history": [], "actions": []})
        change = caused["history"][0] if caused["history"] else None
        return {"fact": fact_seq, "data": data, "config_hash": fact["config_hash"], "rules": verdicts,
                "route_change": None if change is None else {"from": change["from_state"], "to": change["to_state"],
                                                             "at": change["at"]},
                "actions": caused["actions"]}

    def evaluation(self, row: Row) -> None:
        trigger = {**self.key, "evaluated_at": row["evaluated_at"]}
        verdicts = self._cascade(self.engine.rules.on_evaluation, trigger,
                                 self.by_cause.get(("evaluation", row["seq"]), []))
        self._step({"kind": "evaluation", "at": row["recorded_at"], "evaluation": row["seq"],
                    "evaluated_at": row["evaluated_at"], "config_hash": row["config_hash"], "rules": verdicts})

    def _cascade(self, rules: list[RuleSpec], trigger: dict[str, Any], outputs: list[Row]) -> list[dict[str, Any]]:
        """Judge `rules` on `trigger` and, breadth first, the rules each recorded output triggers
        (as the engine derives); the recorded outputs say which fired."""
        unused = list(outputs)
        verdicts = []
        queue = [(rule, trigger) for rule in rules]
        while queue:
            rule, data = queue.pop(0)
            output = next((o for o in unused if o["rule_id"] == rule.id), None)
            if output is None:
                verdicts.append({"rule": rule.id, "on": rule.on_event or "evaluation", "fired": False,
                                 "why_not": self._why_not(rule, data)})
                continue
            unused.remove(output)
            emitted = json.loads(output["data"])
            self.known.append((output["type"], emitted))
            verdicts.append({"rule": rule.id, "on": rule.on_event or "evaluation", "fired": True, "why_not": None,
                             "emitted": {"fact": output["seq"], "type": output["type"], "id": output["id"],
                                         "data": emitted}})
            queue += [(r, emitted) for r in self.engine.rules.on_event.get(output["type"], [])]
        for output in unused:  # derived by a rule the current config no longer has
            emitted = json.loads(output["data"])
            self.known.append((output["type"], emitted))
            verdicts.append({"rule": output["rule_id"], "on": None, "fired": True, "why_not": None,
                             "emitted": {"fact": output["seq"], "type": output["type"], "id": output["id"],
                                         "data": emitted},
                             "note": "this rule is not in the current config"})
        return verdicts

    def _why_not(self, rule: RuleSpec, trigger: dict[str, Any], *, now: bool = False) -> str:
        reason = why_not(rule, trigger, self.known)
        if reason is not None:
            return reason
        spec = self.engine.config.events[rule.emit_event]
        identity = self.engine.contract.identity(spec, build_data(rule, trigger))
        if identity is not None and any(t == rule.emit_event and self.engine.contract.identity(spec, d) == identity
                                        for t, d in self.known):
            return f"an equal {rule.emit_event} fact already exists"
        if now:
            return ""
        return "its conditions hold under the current config, but the config in force then did not derive it"

    def judge_now(self) -> list[dict[str, Any]]:
        """The evaluation rules against every fact known now: would an evaluation emit anything?"""
        trigger = {**self.key, "evaluated_at": self.engine.clock()}
        out = []
        for rule in self.engine.rules.on_evaluation:
            reason = self._why_not(rule, trigger, now=True)
            out.append({"rule": rule.id, "would_fire": not reason, "why_not": reason or None})
        return out

    def latest(self, event_type: str, field: str) -> Any:
        """The last stored value of `field` on a fact of `event_type`, or None."""
        values = [d[field] for d in (json.loads(r["data"]) for r in self.facts.values() if r["type"] == event_type)
                  if field in d]
        return values[-1] if values else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
