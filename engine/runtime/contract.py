"""The event contract at run time: known types, payload schemas, fact identity, route key.

Validators are built once per config. `$ref`s resolve only to files inside the config
directory, through a registry that refuses everything else, so no schema is ever fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from ..model import PAYLOAD_FORMATS, Config, EventSpec
from ..timefmt import utc_instant
from ..reasons import Rejected, error
from ..jsonvalue import flat_json, same
from .envelope import is_date_time, schema_errors


def registry_of(resources: tuple[tuple[str, Any], ...]) -> Registry:
    """A registry holding exactly the schema files loading read, which retrieves nothing else."""
    return Registry().with_resources(
        (uri, Resource.from_contents(data, default_specification=DRAFT202012)) for uri, data in resources)


# The keywords on which fastjsonschema's "valid" is jsonschema's under draft 2020-12. It knows the
# drafts up to 7 and lets through what it does not know (unevaluatedProperties, dependentRequired,
# prefixItems, minContains, ...) where jsonschema refuses; its multipleOf takes 0.3 as a multiple
# of 0.1, and references are resolved only by jsonschema's local registry. A schema using anything
# else is left to jsonschema. Values (enum, const, required, ...) are not walked; subschemas are.
_ALIKE_VALUES = frozenset((
    "type", "enum", "const", "required", "minProperties", "maxProperties", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "$schema", "title", "description", "examples", "$comment", "default", "deprecated", "readOnly", "writeOnly"))
_ALIKE_SUBSCHEMA = frozenset(("additionalProperties", "propertyNames", "items", "contains", "not", "if", "then",
                              "else"))
_ALIKE_SUBSCHEMA_MAPS = frozenset(("properties", "patternProperties"))
_ALIKE_SUBSCHEMA_LISTS = frozenset(("allOf", "anyOf", "oneOf"))


def _compiles_alike(schema: Any) -> bool:
    """Whether every keyword of the schema and of its subschemas is one of the above."""
    todo = [schema]
    while todo:
        node = todo.pop()
        if type(node) is bool:
            continue
        if type(node) is not dict:
            return False  # `items` as a list (the drafts' tuple form), or no schema at all
        for key, value in node.items():
            if key in _ALIKE_VALUES:
                continue
            if key in _ALIKE_SUBSCHEMA:
                todo.append(value)
            elif key in _ALIKE_SUBSCHEMA_MAPS and type(value) is dict:
                todo.extend(value.values())
            elif key in _ALIKE_SUBSCHEMA_LISTS and type(value) is list:
                todo.extend(value)
            else:
                return False
    return True


def _checked_as_jsonschema_does(name: str) -> Callable[[str], bool]:
    return lambda value: Draft202012Validator.FORMAT_CHECKER.conforms(value, name)


# The compiled validator checks each format as jsonschema does (its own differ: it took a `time`
# without an offset, refused an `email` jsonschema takes), so the two never disagree on a verdict.
_FORMATS = {name: is_date_time if name == "date-time" else _checked_as_jsonschema_does(name)
            for name in PAYLOAD_FORMATS}


def _compiled(payload: dict[str, Any]) -> Any:
    """A compiled validator for the hot path, or None where only jsonschema will do.

    fastjsonschema is about twenty times faster; it gets the formats jsonschema checks, and
    only schemas whose every keyword it reads as draft 2020-12 does (`_compiles_alike`): others,
    and those with references, stay with jsonschema. Tests hold the two to the same verdicts.
    """
    if not _compiles_alike(payload):
        return None
    try:
        return fastjsonschema.compile({**payload, "$schema": "https://json-schema.org/draft/2020-12/schema"},
                                      formats=_FORMATS)
    except Exception:  # noqa: BLE001 - anything it cannot compile is left to jsonschema
        return None


_NOTES = frozenset(("description", "title", "examples", "$comment"))  # annotations: they validate nothing
_PLAIN_OBJECT = frozenset(("type", "additionalProperties", "required", "properties")) | _NOTES
_PLAIN_FIELD = frozenset(("type", "minLength", "enum", "format")) | _NOTES
_TYPES = {"string": str, "boolean": bool, "object": dict}


def _plain_check(payload: dict[str, Any]) -> Callable[[dict[str, Any]], bool] | None:
    """A check that says True only of a payload the schema accepts, for schemas of the plainest
    kind (an object of named fields, none other allowed, each a string, a string of a minimum
    length, one of some strings, a date-time, a boolean or an object); None for any other schema.

    False means "not sure": the compiled validator and jsonschema decide, and say what is wrong.
    It reads each field once with no call but the date-time check, where the compiled validator
    runs some twenty lines per field. tests/test_fast_paths.py holds its True to jsonschema's.
    """
    if (not _PLAIN_OBJECT.issuperset(payload) or payload.get("type") != "object"
            or payload.get("additionalProperties") is not False):
        return None
    fields: dict[str, tuple[type, int, frozenset[str] | None, bool]] = {}
    for name, schema in payload.get("properties", {}).items():
        if type(schema) is not dict or not _PLAIN_FIELD.issuperset(schema):
            return None
        kind = _TYPES.get(schema.get("type", "string" if "enum" in schema else None))  # type: ignore[arg-type]
        enum = schema.get("enum")
        if (kind is None or (kind is not str and len(schema.keys() - _NOTES) > 1)
                or schema.get("format", "date-time") != "date-time"
                or (enum is not None and (type(enum) is not list or not all(type(v) is str for v in enum)))
                or type(schema.get("minLength", 0)) is not int):
            return None
        fields[name] = (kind, schema.get("minLength", 0), None if enum is None else frozenset(enum),
                        "format" in schema)
    required = tuple(payload.get("required", ()))
    if not set(required) <= fields.keys():
        return None

    def plain(data: dict[str, Any]) -> bool:
        for name in required:
            if name not in data:
                return False
        for name, value in data.items():
            field = fields.get(name)
            if field is None:
                return False
            kind, shortest, enum, date_time = field
            if type(value) is not kind:
                return False
            if kind is str and ((shortest and len(value) < shortest) or (enum is not None and value not in enum)
                                or (date_time and not is_date_time(value))):
                return False
        return True

    return plain




class Contract:
    """What events exist and what their payloads must hold."""

    def __init__(self, config: Config):
        self.config = config
        self.key = config.route.key
        self._route_key = config.route.route_key
        registry = registry_of(config.schema_resources)
        base = config.root.resolve().as_uri() + "/events.yaml"
        self._validators = {
            name: Draft202012Validator({**spec.payload, "$id": base}, registry=registry,
                                       format_checker=Draft202012Validator.FORMAT_CHECKER)
            for name, spec in config.events.items()
        }
        self._fast = {name: _compiled(spec.payload) for name, spec in config.events.items()}
        self._plain = {name: _plain_check(spec.payload) for name, spec in config.events.items()}
        self._identities = {name: self._identity_function(spec) for name, spec in config.events.items()}

    def spec(self, event_type: str) -> EventSpec:
        spec = self.config.events.get(event_type)
        if spec is None:
            raise Rejected("unknown_event", [error("/type", "unknown_event",
                                                   f"'{event_type}' is not an event of the contract")])
        return spec

    def payload_errors(self, event_type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        plain = self._plain[event_type]
        if plain is not None and plain(data):
            return []
        fast = self._fast[event_type]
        if fast is not None:
            try:
                fast(data)
                return []
            except fastjsonschema.JsonSchemaException:
                pass  # jsonschema says exactly what is wrong (and has the last word)
        validator = self._validators[event_type]
        try:
            if validator.is_valid(data):
                return []
            errors = [e for err in validator.iter_errors(data) for e in schema_errors(err, "/data")]
            return sorted(errors, key=lambda e: e["path"])
        except Unresolvable as exc:  # validate refuses such configs; never let it escape process()
            return [error("/data", "unresolvable_schema", f"the payload schema of {event_type} cannot be resolved: {exc}")]

    def check_payload(self, event_type: str, data: dict[str, Any]) -> None:
        errors = self.payload_errors(event_type, data)
        if errors:
            raise Rejected("invalid_payload", errors)

    def identity(self, spec: EventSpec, data: dict[str, Any]) -> str | None:
        """The fact identity as canonical JSON, or None when only the envelope dedupes."""
        if not spec.identity or any(f not in data for f in spec.identity):
            return None
        for fieldname, values in spec.repeatable_when.items():
            if fieldname in data and any(same(data[fieldname], v) for v in values):
                return None
        return flat_json([utc_instant(data[f]) if f in spec.datetime_fields and isinstance(data[f], str) else data[f]
                          for f in spec.identity])

    def identity_of(self, event_type: str, data: dict[str, Any]) -> str | None:
        """`identity` of a payload of a known type, through a function built once per type: it
        runs for every fact (tests hold the two equal)."""
        return self._identities[event_type](data)

    def _identity_function(self, spec: EventSpec) -> Callable[[dict[str, Any]], str | None]:
        """`identity` for one type, with what the spec decides settled once: no identity, no
        repeatable values, which positions hold date-times; the general path otherwise."""
        fields = spec.identity
        if not fields:
            return lambda data: None
        if spec.repeatable_when:
            return lambda data: self.identity(spec, data)
        instants = tuple(i for i, f in enumerate(fields) if f in spec.datetime_fields)

        def identity(data: dict[str, Any]) -> str | None:
            try:
                values = [data[f] for f in fields]
            except KeyError:
                return None
            for i in instants:
                if isinstance(values[i], str):
                    values[i] = utc_instant(values[i])
            return flat_json(values)

        return identity

    def route_key(self, data: dict[str, Any]) -> str | None:
        return self._route_key.encode(data)
