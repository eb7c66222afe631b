"""The config as the runtime sees it: frozen dataclasses, built once by `config.load_config`.

Nothing past config loading reads YAML or raw dicts; every module downstream sees these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Problem
from .jsonvalue import flat_json


@dataclass(frozen=True)
class EventSpec:
    name: str
    status: str
    description: str
    payload: dict[str, Any]
    identity: tuple[str, ...]
    repeatable_when: dict[str, tuple[Any, ...]]
    datetime_fields: frozenset[str]  # identity fields compared as instants
    # the payload's fields, name -> schema, through its references and allOf/anyOf/oneOf branches
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmitterSpec:
    name: str
    kind: str
    description: str
    internal: bool
    events: dict[str, str]  # event name -> implemented | planned


@dataclass(frozen=True)
class FactRef:
    """A `has`/`lacks` entry: facts of one type whose payload matches `where`."""

    event: str
    where: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class DataCondition:
    field: str
    kind: str  # equals | in | exists
    value: Any


@dataclass(frozen=True)
class FieldMap:
    field: str
    kind: str  # from | value | cases
    source: str | None = None
    value: Any = None
    cases: tuple[tuple[Any, Any], ...] = ()
    has_default: bool = False
    default: Any = None


@dataclass(frozen=True)
class RuleSpec:
    id: str
    description: str
    on_event: str | None  # None: the rule runs on an evaluation
    has: tuple[FactRef, ...]
    lacks: tuple[FactRef, ...]
    data: tuple[DataCondition, ...]
    emit_event: str
    emit_source: str
    copy_data: bool
    fields: tuple[FieldMap, ...]
    file: str = ""


@dataclass(frozen=True)
class StateSpec:
    name: str
    screen: str | None = None
    reminders: tuple[str, ...] = ()
    description: str = ""
    final: bool = False


@dataclass(frozen=True)
class TransitionSpec:
    trigger: str
    sources: tuple[str, ...]
    dest: str
    description: str = ""


@dataclass(frozen=True)
class RouteSpec:
    key: tuple[str, ...]
    initial: str
    states: dict[str, StateSpec]
    transitions: tuple[TransitionSpec, ...]

    @property
    def route_key(self) -> RouteKey:
        return RouteKey(self.key)


@dataclass(frozen=True)
class RouteKey:
    """A route key: the values of the config's key fields, as one canonical JSON array.

    Storage keeps that text; this is the one place that writes and reads it.
    """

    fields: tuple[str, ...]

    def encode(self, values: Mapping[str, Any]) -> str | None:
        """The key of a payload (or of named values); None when a key field is missing."""
        if type(values) is dict:  # a payload, on every event: one lookup per field, a missing one raises
            try:
                key = [values[f] for f in self.fields]
            except KeyError:
                return None
            return flat_json(key)
        if any(f not in values for f in self.fields):
            return None
        return flat_json([values[f] for f in self.fields])

    def decode(self, text: str) -> dict[str, Any]:
        return dict(zip(self.fields, json.loads(text), strict=True))


# The kinds of action the scenario produces (runtime/scenario.py), in the order it reports them:
# what the outbox carries as `action.<kind>` and what consumers.yaml may subscribe to.
ACTION_KINDS: tuple[str, ...] = ("route", "screen", "reminder")
# The `format` values a payload schema may name: those the engine checks, on its fast path and in
# its explanations alike. Any other (a typo such as `date-tim`, or `uri`, which nothing here checks)
# would let every value through unchecked, so `validate` refuses it.
PAYLOAD_FORMATS: tuple[str, ...] = ("date-time", "date", "time", "email", "idn-email", "ipv4", "ipv6", "uuid",
                                    "regex")
# The consumer the engine has built in: it applies route and screen actions inside the engine,
# so consumers.yaml does not declare it.
ROUTE_CONSUMER = "route-consumer"


@dataclass(frozen=True)
class ConsumerSpec:
    """A reader of the outbox (consumers.yaml): the action kinds and derived events it receives."""

    name: str
    description: str
    actions: tuple[str, ...]  # a subset of ACTION_KINDS, in the order written
    events: tuple[str, ...]  # derived events (those a rule emits), in the order written

    @property
    def types(self) -> frozenset[str]:
        """The outbox item types it receives: its events, and `action.<kind>` per action kind."""
        return frozenset(self.events) | {f"action.{kind}" for kind in self.actions}

    def receives(self, item_type: str) -> bool:
        """Whether an outbox item of this CloudEvents `type` (`action.<kind>` or an event) is for it."""
        if item_type.startswith("action."):
            return item_type[len("action."):] in self.actions
        return item_type in self.events


@dataclass(frozen=True)
class EvaluationResult:
    event: str
    field: str


@dataclass(frozen=True)
class Config:
    root: Path
    hash: str
    events: dict[str, EventSpec]
    emitters: dict[str, EmitterSpec]
    rules: tuple[RuleSpec, ...]
    route: RouteSpec
    evaluation_result: EvaluationResult | None
    problems: tuple[Problem, ...] = field(default=())
    files: tuple[Path, ...] = field(default=())
    # (URI, content) of every local file a payload `$ref` reaches; read and hashed by loading
    schema_resources: tuple[tuple[str, Any], ...] = field(default=())
    # consumers.yaml, optional: name -> what it receives from the outbox (empty without the file)
    consumers: dict[str, ConsumerSpec] = field(default_factory=dict)

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def internal_events(self) -> set[str]:
        return {e for em in self.emitters.values() if em.internal for e in em.events}

    def emitted_by_rules(self) -> set[str]:
        return {r.emit_event for r in self.rules}

    def outbox_types(self) -> list[str]:
        """The item types of the outbox: the derived events (those a rule emits, in events.yaml's
        order), then `action.<kind>` for each of ACTION_KINDS."""
        derived = self.emitted_by_rules()
        return [name for name in self.events if name in derived] + [f"action.{kind}" for kind in ACTION_KINDS]

    def key_value(self, name: str, text: str) -> Any:
        """`key_value(self, name, text)`: a route key field's value given as text, typed."""
        return key_value(self, name, text)

    def input_events(self) -> set[str]:
        """Events no internal emitter lists and no rule emits: what may come from outside."""
        return set(self.events) - self.internal_events() - self.emitted_by_rules()


def key_value(config: Any, name: str, text: str) -> Any:
    """A route key field's value given as text (a command-line option, a URL segment) as the
    JSON type the route's triggers declare for it: a field that is an integer in the payloads
    is matched as an integer. ValueError, with a message naming the field, when it is not one."""
    types: set[str] = set()
    for transition in config.route.transitions:
        spec = config.events.get(transition.trigger)
        declared = spec.payload.get("properties", {}).get(name, {}).get("type") if spec else None
        types.update(declared if isinstance(declared, list) else [declared] if declared else [])
    if "string" in types or not types & {"integer", "number"}:
        return text
    for kind in (int, float) if "number" in types else (int,):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(f"{name} is {'a number' if 'number' in types else 'an integer'} in the config's events, "
                     f"and {text!r} is not")
