"""The hot path's shortcuts give the same answers as the libraries they stand in for.

Each shortcut exists for speed only (docs/PERFORMANCE.md): the compiled payload validators
(fastjsonschema) against jsonschema, the hand-written envelope check against the envelope
schema, the date-time check against jsonschema's format checker, the derived-id function
against uuid.uuid5.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from engine.config import load_config
from engine.model import PAYLOAD_FORMATS, DataCondition, EventSpec, FactRef, FieldMap, RuleSpec
from engine.runtime.contract import Contract, _compiled
from engine.config.locate import bundled_config
from engine.runtime.envelope import _ENVELOPE, _envelope_ok, canonical_json, is_date_time
from engine.runtime.rules import NAMESPACE, _name, applies, build_data, compile_applies, compile_build, derived_id
import calendar
from pathlib import Path
from collections import Counter
from datetime import datetime

import fastjsonschema
import pytest
import yaml
from conftest import form_submitted

from engine import Engine

CONFIG = load_config(bundled_config())
CONTRACT = Contract(CONFIG)
FORMATS = Draft202012Validator.FORMAT_CHECKER


def _stamp(year: int, month: int, day: int, hour: int, minute: int, second: int, fraction: str, t: str,
           offset: str) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}{t}{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"


def _edit(text: str, at: int, how: str, char: str) -> str:
    i = at % (len(text) + 1)
    return {"replace": text[:i] + char + text[i + 1:], "delete": text[:i] + text[i + 1:],
            "insert": text[:i] + char + text[i:]}[how]


fractions = st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,9}", fullmatch=True))
offsets = st.one_of(st.sampled_from(["Z", "z"]),
                    st.builds("{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)))
# Any moment, and often one of the last three days of its month (the shortcut leaves days
# past the 28th to the calendar).
moments = st.one_of(st.datetimes(), st.builds(lambda d, back: d.replace(day=calendar.monthrange(d.year, d.month)[1] - back),
                                              st.datetimes(), st.integers(0, 2)))
# RFC 3339 date-times, valid by construction: a calendar moment, any offset, any precision.
valid_instants = st.builds(lambda d, fraction, t, offset: _stamp(d.year, d.month, d.day, d.hour, d.minute, d.second,
                                                                  fraction, t, offset),
                           moments, fractions, st.sampled_from("Tt"), offsets)
# One field of a valid date-time pushed just past its range: year 0000, month 0 or 13, day 0,
# 29-31 (past the end of some months) or 32, hour 24, minute 60, second 60 (a leap second) or 61.
PAST_RANGE = {"year": [0], "month": [0, 13], "day": [0, 29, 30, 31, 32], "hour": [24], "minute": [60],
              "second": [60, 61]}


def _one_past(d: datetime, field: str, pick: int, fraction: str, t: str, offset: str) -> str:
    parts = {"year": d.year, "month": d.month, "day": d.day, "hour": d.hour, "minute": d.minute, "second": d.second}
    parts[field] = PAST_RANGE[field][pick % len(PAST_RANGE[field])]
    return _stamp(**parts, fraction=fraction, t=t, offset=offset)


instants = st.one_of(
    valid_instants,
    st.builds(_one_past, moments, st.sampled_from(sorted(PAST_RANGE)), st.integers(0, 4), fractions,
              st.sampled_from("Tt"), offsets),
    # Another separator or an offset out of range or out of form.
    st.builds(lambda d, fraction, t, offset: _stamp(d.year, d.month, d.day, d.hour, d.minute, d.second, fraction, t,
                                                    offset),
              moments, fractions, st.sampled_from(["T", " ", "_"]),
              st.one_of(offsets, st.sampled_from(["", "+24:00", "-00:60", "+0100", "+01", "Z\n"]))),
    # A valid one with one character replaced, removed or added.
    st.builds(_edit, valid_instants, st.integers(0, 40), st.sampled_from(["replace", "delete", "insert"]),
              st.sampled_from(list("0123456789:-+.TtZz \n"))),
    st.text(max_size=30),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), instants)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=6)


def test_date_time_check_equals_jsonschema_format_checker() -> None:
    drawn: Counter[str] = Counter()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(instants)
    @example("2026-02-29T00:00:00Z")
    @example("2024-02-29T00:00:00Z")
    @example("0000-01-01T00:00:00Z")
    @example("2026-04-31T10:00:00+01:00")
    @example("2026-04-30t10:00:00z")
    @example("2026-01-01T00:00:00Z\n")
    @example("2026-01-01T24:00:00Z")
    @example("2026-06-30T23:59:60Z")
    def agree(text: str) -> None:
        valid = FORMATS.conforms(text, "date-time")
        assert is_date_time(text) == valid
        drawn["valid"] += valid
        drawn["valid, day 29 to 31"] += valid and text[8:10] in ("29", "30", "31")
        drawn["invalid"] += not valid

    agree()
    # Both answers, and the days the shortcut leaves to the calendar, are drawn often enough.
    assert drawn["valid"] >= 20 and drawn["invalid"] >= 40 and drawn["valid, day 29 to 31"] >= 5, dict(drawn)


def _valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the field's schema accepts."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("format") == "date-time":
        return valid_instants
    return {"string": st.text(min_size=1, max_size=8), "boolean": st.booleans(),
            "object": st.dictionaries(st.text(max_size=8), values, max_size=3)}.get(schema.get("type"), values)


def _near(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the field's schema may refuse: most often a near miss."""
    options = [values, st.sampled_from(["", None, 0, 1.5, True, [], {}])]
    if schema.get("format") == "date-time":
        options.insert(0, instants)
    if "enum" in schema:
        options.insert(0, st.sampled_from([*(str(v).upper() for v in schema["enum"]), "Live", " live"]))
    return st.one_of(options)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A payload near the contract: a valid one, or one with up to two fields dropped or
    changed, or a field added (None in `changed`)."""
    name = draw(st.sampled_from(sorted(CONFIG.events)))
    payload = CONFIG.events[name].payload
    required = payload.get("required", [])
    changed = draw(st.lists(st.sampled_from([*payload.get("properties", {}), None]), min_size=1, max_size=2,
                            unique=True)) if draw(st.booleans()) else []
    data: dict[str, Any] = {}
    for field, schema in payload.get("properties", {}).items():
        if field in changed:
            if draw(st.booleans()):
                data[field] = draw(_near(schema))
        elif field in required or draw(st.booleans()):
            data[field] = draw(_valid(schema))
    if None in changed:
        data[draw(st.text(max_size=6))] = draw(values)
    return name, data


def test_compiled_payload_validators_agree_with_jsonschema() -> None:
    drawn: Counter[tuple[str, bool]] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payloads())
    def agree(case: tuple[str, dict[str, Any]]) -> None:
        name, data = case
        fast = CONTRACT._fast[name]
        assert fast is not None, f"{name} should have a compiled validator"
        try:
            fast(data)
            fast_ok = True
        except (fastjsonschema.JsonSchemaValueException, fastjsonschema.JsonSchemaValuesException):
            fast_ok = False  # a refusal; any other exception is a crash, and fails the test
        valid = CONTRACT._validators[name].is_valid(data)
        assert fast_ok == valid
        drawn[name, valid] += 1

    agree()
    # Both sides of the comparison are tried often, and every event type is drawn valid.
    valid = sum(n for (_, ok), n in drawn.items() if ok)
    invalid = sum(n for (_, ok), n in drawn.items() if not ok)
    never = sorted(name for name in CONFIG.events if not drawn[name, True])
    assert valid >= 60 and invalid >= 60 and not never, (valid, invalid, never)


_FIELDS = ["lead_id", "webinar_id", "timestamp", "session_id"]


@st.composite
def identity_cases(draw: st.DrawFn) -> tuple[EventSpec, dict[str, Any]]:
    """A type of the default contract or one drawn here (date-time fields, repeatable values),
    and a payload holding some of its identity fields."""
    spec = draw(st.one_of(st.sampled_from(list(CONFIG.events.values())), st.builds(
        lambda identity, instants, repeatable: EventSpec("drawn", "implemented", "", {}, tuple(identity),
                                                         repeatable, frozenset(instants)),
        st.lists(st.sampled_from(_FIELDS), max_size=3), st.sets(st.sampled_from(_FIELDS), max_size=2),
        st.one_of(st.just({}), st.dictionaries(st.sampled_from(_FIELDS), st.tuples(scalars), max_size=1)))))
    data = draw(st.dictionaries(st.sampled_from(_FIELDS + ["other"]), values, max_size=5))
    return spec, data


@settings(max_examples=400, deadline=None)
@given(identity_cases())
def test_identity_functions_built_per_type_agree_with_the_general_identity(case: tuple[EventSpec, dict[str, Any]]) -> None:
    spec, data = case
    try:
        expected: Any = CONTRACT.identity(spec, data)
    except (TypeError, ValueError) as exc:  # not JSON (a lone surrogate): the same refusal
        expected = type(exc)
    try:
        got: Any = CONTRACT._identity_function(spec)(data)
    except (TypeError, ValueError) as exc:
        got = type(exc)
    assert got == expected
    if spec.name in CONFIG.events:
        assert spec is CONFIG.events[spec.name]
        try:
            assert CONTRACT.identity_of(spec.name, data) == expected
        except (TypeError, ValueError) as exc:
            assert type(exc) is expected


def test_every_event_of_the_default_contract_has_a_compiled_validator() -> None:
    assert all(CONTRACT._fast[name] is not None for name in CONFIG.events)


ATTRIBUTE_VALUES = {
    "specversion": st.sampled_from(["1.0", "0.3", 1, None]),
    "id": st.one_of(st.text(max_size=4), st.integers(), st.none()),
    "source": st.one_of(st.text(max_size=4), st.booleans()),
    "type": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=2), max_size=1)),
    "data": st.one_of(st.dictionaries(st.text(max_size=3), scalars, max_size=2), st.lists(scalars, max_size=1),
                      scalars),
    "time": st.one_of(instants, st.integers()),
    "subject": st.one_of(st.text(max_size=3), st.integers()),
    "dataschema": st.one_of(st.text(max_size=3), st.none()),
    "datacontenttype": st.sampled_from(["application/json", "text/json", "application/cloudevents+json",
                                        "application/json; charset=utf-8", "text/plain", "", 5]),
    "traceparent": st.one_of(scalars, st.lists(scalars, max_size=1)),
    "Bad-Name": st.text(max_size=2), "x" * 65: st.text(max_size=2), "x" * 64: scalars, "": scalars,
}


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid envelope with up to three attributes added, changed or removed."""
    event: dict[str, Any] = {"specversion": "1.0", "id": "e1", "source": "s", "type": "t", "data": {}}
    for name in draw(st.lists(st.sampled_from(sorted(ATTRIBUTE_VALUES)), max_size=3, unique=True)):
        if name in event and draw(st.booleans()):
            del event[name]
        else:
            event[name] = draw(ATTRIBUTE_VALUES[name])
    return event


@settings(max_examples=500)
@given(envelopes())
def test_hand_written_envelope_check_agrees_with_the_envelope_schema(event: dict[str, Any]) -> None:
    assert _envelope_ok(event) == _ENVELOPE.is_valid(event)


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=40))
def test_derived_id_equals_uuid5(rule_id: str, source: str, event_id: str) -> None:
    try:
        name = canonical_json([rule_id, source, event_id])
    except ValueError:  # a lone surrogate: not JSON, never an id
        return
    assert derived_id(rule_id, (source, event_id)) == str(uuid.uuid5(NAMESPACE, name))


_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates included


@given(_ANY_TEXT, _ANY_TEXT, _ANY_TEXT)
@example("r", "s\ud800", "id")
@example("#action/0", "crm", "e-1")
def test_derived_id_name_writes_what_canonical_json_writes(rule_id: str, source: str, event_id: str) -> None:
    """The name is written by orjson directly for three strings; canonical_json is the general path."""
    try:
        expected = canonical_json([rule_id, source, event_id]).encode("utf-8")
    except ValueError:
        try:
            _name(rule_id, (source, event_id))
        except ValueError:
            return
        raise AssertionError("a name canonical_json refuses was written")
    assert _name(rule_id, (source, event_id)) == expected


_NAMES = ["a", "b", "c"]
_SMALL = st.one_of(st.none(), st.booleans(), st.integers(0, 2), st.sampled_from([0.0, 1.0, 2.5]),
                   st.sampled_from(["x", "y"]), st.lists(st.integers(0, 1), max_size=2))
_refs = st.builds(FactRef, st.sampled_from(["E1", "E2"]),
                  st.lists(st.tuples(st.sampled_from(_NAMES), _SMALL), max_size=2).map(tuple))
_conditions = st.one_of(
    st.builds(DataCondition, st.sampled_from(_NAMES), st.just("equals"), _SMALL),
    st.builds(DataCondition, st.sampled_from(_NAMES), st.just("in"), st.lists(_SMALL, max_size=3)),
    st.builds(DataCondition, st.sampled_from(_NAMES), st.just("exists"), st.booleans()))
_field_maps = st.one_of(
    st.builds(FieldMap, st.sampled_from(_NAMES + ["d"]), st.just("from"), source=st.sampled_from(_NAMES)),
    st.builds(FieldMap, st.sampled_from(_NAMES + ["d"]), st.just("value"), value=_SMALL),
    st.builds(FieldMap, st.sampled_from(_NAMES + ["d"]), st.just("cases"), source=st.sampled_from(_NAMES),
              cases=st.lists(st.tuples(_SMALL, _SMALL), max_size=3).map(tuple), has_default=st.booleans(),
              default=_SMALL))
_rules = st.builds(RuleSpec, st.just("r"), st.just(""), st.just("E1"), st.lists(_refs, max_size=2).map(tuple),
                   st.lists(_refs, max_size=2).map(tuple), st.lists(_conditions, max_size=3).map(tuple),
                   st.just("E2"), st.just("s"), st.booleans(), st.lists(_field_maps, max_size=4).map(tuple))
_payloads = st.dictionaries(st.sampled_from(_NAMES + ["d"]), _SMALL, max_size=4)


@settings(max_examples=500, deadline=None)
@given(_rules, _payloads, st.lists(st.tuples(st.sampled_from(["E1", "E2", "E3"]), _payloads), max_size=4))
def test_rules_compiled_into_closures_fire_and_build_as_the_general_functions(
        rule: RuleSpec, trigger: dict[str, Any], facts: list[tuple[str, dict[str, Any]]]) -> None:
    assert compile_applies(rule)(trigger, facts) == applies(rule, trigger, facts)
    # repr tells true from 1 and 1.0 from 1, and shows the order of the keys (bodies keep it)
    assert repr(compile_build(rule)(trigger)) == repr(build_data(rule, trigger))


def _outcome(parse: Any, raw: bytes) -> Any:
    """What a parser makes of `raw`: (value, canonical, floats seen) or the rejection's errors."""
    from engine.reasons import Rejected

    try:
        value, canonical, floats = parse(raw)
    except Rejected as rejected:
        return ("rejected", rejected.errors)
    return ("parsed", repr(value), canonical, floats)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=500)
@given(_ANY_TEXT, _ANY_TEXT, _ANY_TEXT, st.booleans())
@example("e\ud800", "t", "s", True)
def test_an_envelope_reads_its_attributes_once_and_they_need_no_utf8_check(event_id: str, event_type: str,
                                                                           source: str, ascii_only: bool) -> None:
    """The pipeline takes an envelope's id and type for its result without text_or_none."""
    import json as std

    from engine.reasons import Rejected
    from engine.runtime.envelope import read_envelope
    from engine.runtime.pipeline import text_or_none

    event = {"specversion": "1.0", "id": event_id, "type": event_type, "source": source, "data": {"k": event_id}}
    raw = std.dumps(event, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        env = read_envelope(raw, 1 << 20)
    except Rejected:
        return
    assert (env.source, env.id, env.type, env.data) == (env.event["source"], env.event["id"], env.event["type"],
                                                         env.event["data"])
    assert text_or_none(env.id) == env.id and text_or_none(env.type) == env.type


@given(st.lists(st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(), st.floats(allow_nan=False)),
                max_size=3))
def test_an_outbox_subject_of_strings_is_joined_as_the_general_path_joins_it(values: list[Any]) -> None:
    import orjson

    from engine.runtime.outbox import subject

    assert subject(values) == "/".join(v if isinstance(v, str) else orjson.dumps(v).decode() for v in values)


@given(st.dictionaries(st.sampled_from(["lead_id", "webinar_id", "other"]), values, max_size=3))
def test_a_route_key_read_from_a_payload_is_the_general_one(data: dict[str, Any]) -> None:
    from collections import defaultdict

    fields = CONFIG.route.key
    try:
        expected: Any = None if any(f not in data for f in fields) else canonical_json([data[f] for f in fields])
    except (TypeError, ValueError) as exc:
        expected = type(exc)
    try:
        got: Any = CONFIG.route.route_key.encode(data)
    except (TypeError, ValueError) as exc:
        got = type(exc)
    assert got == expected
    if not isinstance(expected, type):  # a Mapping that makes missing keys up is asked with `in`
        assert CONFIG.route.route_key.encode(defaultdict(int, data)) == expected


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    """JSON as producers write it, and the ways it goes wrong: repeated keys, spaces around
    colons, escapes, big numbers, deep nesting, cut-off text."""
    import json as std

    value = draw(json_values)
    text = std.dumps(value, ensure_ascii=draw(st.booleans()),
                     separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " :"), (",", "\t:")])))
    edits = draw(st.lists(st.sampled_from(["dup", "deep", "cut", "escape", "bigint", "colon_value"]), max_size=2))
    if "dup" in edits and text.startswith("{") and text != "{}":
        first = text[1:text.index(":", 1)]
        text = "{" + first + ":1," + text[1:]
    if "deep" in edits:
        depth = draw(st.integers(60, 70))
        text = "[" * depth + text + "]" * depth
    if "escape" in edits:
        text = text.replace("a", "\\u0061", 1) if '"' in text else text
    if "bigint" in edits:
        text = f'{{"n":{draw(st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]))},"v":{text}}}'
    if "colon_value" in edits:
        text = f'{{"k":":)","v":{text}}}'
    raw = text.encode("utf-8", "surrogatepass")
    if "cut" in edits and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    return raw


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(json_texts())
@example(b'{"a":1,"a":2}')
@example(b'{"a" :1,"b":2,"b":3}')
@example(b'{"a":"x","a":"y"}')
@example(b'{"a":{"b":1},"a":{"b":1}}')
@example(b'["a",{"a":1,"a":"1"}]')
@example(b'{"a":1,"b":{"a":2}}')
@example(b'{"k":":","a":1,"a":2}')
@example(b'18446744073709551616')
@example(b'{"n":9223372036854775808}')
@example(b'[1.0]')
@example(b'null')
def test_the_orjson_shortcut_parses_exactly_as_the_strict_decoder(raw: bytes) -> None:
    from engine.runtime import envelope as intake

    assert _outcome(intake.parse_json, raw) == _outcome(intake._parse_strict, raw)


def test_the_orjson_shortcut_is_taken_for_ordinary_events() -> None:
    from engine.runtime import envelope as intake

    line = b'{"specversion":"1.0","id":"e1","source":"s","type":"t","data":{"lead_id":"l1","n":3,"ok":true}}'
    assert intake._parse_fast(line) == {"specversion": "1.0", "id": "e1", "source": "s", "type": "t",
                                       "data": {"lead_id": "l1", "n": 3, "ok": True}}
    assert intake._parse_fast(b'{"a":1,"a":2}') is None
    assert intake._parse_fast(b'{"a" :1,"b":2,"b":3}') is None


_STORED_COLUMNS = ("a", "b", "c", "d", "e")
_sql_values = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=4), st.binary(max_size=3),
                        st.floats(allow_nan=False))


@given(st.lists(st.tuples(*[_sql_values] * len(_STORED_COLUMNS)), max_size=12),
       st.sampled_from(["INSERT", "INSERT OR IGNORE"]))
def test_an_insert_with_its_nulls_in_the_sql_stores_what_binding_none_stores(rows: list[tuple[Any, ...]],
                                                                           verb: str) -> None:
    import sqlite3

    from engine.store.sqlite import _NullsInline

    insert = _NullsInline(verb, "t", _STORED_COLUMNS, (0, 2, 3))
    plain = f"{verb} INTO t (a, b, c, d, e) VALUES (?, ?, ?, ?, ?)"
    stored = []
    for fast in (False, True):
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a, b TEXT, c INTEGER, d, e, UNIQUE (a, b))")
        seqs = []
        for row in rows:
            try:
                cur = conn.execute(*insert(row) if fast else (plain, row))
                seqs.append((cur.lastrowid, cur.rowcount))
            except sqlite3.IntegrityError as exc:  # a repeated (a, b): refused alike
                seqs.append(str(exc))
        stored.append((seqs, conn.execute("SELECT seq, a, typeof(a), b, typeof(b), c, typeof(c), d, typeof(d), e,"
                                          " typeof(e) FROM t ORDER BY seq").fetchall()))
        conn.close()
    assert stored[0] == stored[1]


def test_the_plain_payload_check_agrees_with_jsonschema() -> None:
    drawn: Counter[tuple[str, bool]] = Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payloads())
    def agree(case: tuple[str, dict[str, Any]]) -> None:
        name, data = case
        plain = CONTRACT._plain[name]
        if plain is None:
            return
        valid = CONTRACT._validators[name].is_valid(data)
        assert plain(data) == valid  # exact for JSON values; only its True is relied on
        drawn[name, valid] += 1

    agree()
    checked = {name for name, ok in drawn}
    assert checked == {name for name, plain in CONTRACT._plain.items() if plain is not None}, checked
    assert sum(n for (_, ok), n in drawn.items() if ok) >= 60 and sum(n for (_, ok), n in drawn.items() if not ok) >= 60


_field_schemas = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "boolean", "object", "integer", "number"])},
                          optional={"description": st.just("d")}),
    st.fixed_dictionaries({"type": st.just("string")}, optional={
        "minLength": st.integers(0, 3), "enum": st.lists(st.sampled_from(["a", "b", "", "ab"]), min_size=1, max_size=3),
        "format": st.sampled_from(["date-time", "email"]), "maxLength": st.just(2)}),
    st.fixed_dictionaries({"enum": st.lists(st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 1), st.booleans()),
                                            min_size=1, max_size=3)}, optional={"minLength": st.just(1)}),
)


@st.composite
def plain_schemas(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A payload schema of named fields (some beyond the plain kind), and data near it."""
    properties = draw(st.dictionaries(st.sampled_from(["f", "g", "h"]), _field_schemas, max_size=3))
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": draw(st.lists(st.sampled_from(sorted(properties) or ["f"]), unique=True))}
    schema["additionalProperties"] = draw(st.sampled_from([False, False, True]))
    values = st.one_of(st.sampled_from(["a", "b", "", "ab", "2026-01-31T18:00:00Z", "2026-02-30T18:00:00Z"]),
                       st.integers(0, 1), st.booleans(), st.none(), st.just({}), st.just([]), st.just(1.0))
    data = draw(st.dictionaries(st.sampled_from(["f", "g", "h", "x"]), values, max_size=4))
    return schema, data


@settings(max_examples=600, deadline=None)
@given(plain_schemas())
def test_the_plain_payload_check_of_a_drawn_schema_agrees_with_jsonschema(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from engine.runtime.contract import _plain_check

    schema, data = case
    plain = _plain_check(schema)
    if plain is not None:
        assert plain(data) == Draft202012Validator(schema, format_checker=FORMATS).is_valid(data)


_FORMAT_SAMPLES = ["a@b.c", "a b@c", "not", "2026-01-01", "2026-13-01", "12:00:00Z", "12:00:00", "12:00:00+01:00",
                   "1.2.3.4", "1.2.3.256", "::1", "x::y", "550e8400-e29b-41d4-a716-446655440000", "550e8400",
                   "^a(b", "^ab$", "", "2026-01-01T00:00:00Z", "2026-01-01 00:00:00Z", "ü@ü.de"]


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(PAYLOAD_FORMATS), value=st.one_of(st.sampled_from(_FORMAT_SAMPLES), st.text(max_size=12)))
@example(fmt="time", value="12:00:00")  # the compiled validator's own `time` took it; jsonschema refuses it
@example(fmt="email", value="a b@c")  # and its own `email` refused this one, which jsonschema takes
def test_the_compiled_validator_checks_each_allowed_format_as_jsonschema_does(fmt: str, value: str) -> None:
    schema = {"type": "object", "properties": {"f": {"type": "string", "format": fmt}}}
    fast = _compiled(schema)
    assert fast is not None
    try:
        fast({"f": value})
        fast_ok = True
    except fastjsonschema.JsonSchemaException:
        fast_ok = False
    assert fast_ok == Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).is_valid(
        {"f": value}), (fmt, value)


# Draft 2020-12 keywords fastjsonschema does not read as jsonschema does: a form's answers that
# each refuses and fastjsonschema would let through.
DRAFT_2020_ONLY = {
    "unevaluatedProperties": ({"properties": {"q1": {}}, "unevaluatedProperties": False}, {"q1": "a", "other": 1}),
    "dependentRequired": ({"dependentRequired": {"q1": ["q2"]}}, {"q1": "a"}),
    "dependentSchemas": ({"dependentSchemas": {"q1": {"required": ["q2"]}}}, {"q1": "a"}),
    "prefixItems": ({"properties": {"q1": {"prefixItems": [{"type": "string"}]}}}, {"q1": [1]}),
    "minContains": ({"properties": {"q1": {"contains": {"type": "string"}, "minContains": 2}}}, {"q1": ["a"]}),
    "maxContains": ({"properties": {"q1": {"contains": {"type": "string"}, "maxContains": 1}}}, {"q1": ["a", "b"]}),
    "multipleOf": ({"properties": {"q1": {"multipleOf": 0.1}}}, {"q1": 0.3}),
    "unevaluatedItems": ({"properties": {"q1": {"prefixItems": [{}], "unevaluatedItems": False}}}, {"q1": [1, 2]}),
}


@pytest.mark.parametrize("keyword", sorted(DRAFT_2020_ONLY))
def test_a_payload_keyword_fastjsonschema_reads_otherwise_is_judged_by_jsonschema(
        keyword: str, config_copy: Path, tmp_path: Path) -> None:
    answers_schema, answers = DRAFT_2020_ONLY[keyword]
    schema = {"type": "object", **answers_schema}
    events = yaml.safe_load((config_copy / "events.yaml").read_text())
    events["events"]["client_webinar_form_submitted"]["payload"]["properties"]["form_payload"] = schema
    (config_copy / "events.yaml").write_text(yaml.safe_dump(events, sort_keys=False))
    assert _compiled(events["events"]["client_webinar_form_submitted"]["payload"]) is None
    with Engine.open(config=config_copy, db=tmp_path / "x.db") as eng:
        result = eng.process(form_submitted(answers=answers))
    assert (result["status"], result["reason"]) == ("rejected", "invalid_payload"), result
    assert all(e["path"].startswith("/data/form_payload") for e in result["errors"])
