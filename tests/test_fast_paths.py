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
from engine.runtime.contract import Contract
from engine.config.locate import bundled_config
from engine.runtime.envelope import _ENVELOPE, _envelope_ok, canonical_json, is_date_time
from engine.runtime.rules import NAMESPACE, derived_id

CONFIG = load_config(bundled_config())
CONTRACT = Contract(CONFIG)
FORMATS = Draft202012Validator.FORMAT_CHECKER

instants = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\n?\Z"),
    st.text(max_size=30),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), instants)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=6)


@given(instants)
@example("2026-02-29T00:00:00Z")
@example("2024-02-29T00:00:00Z")
@example("0000-01-01T00:00:00Z")
@example("2026-04-31T10:00:00+01:00")
@example("2026-04-30t10:00:00z")
@example("2026-01-01T00:00:00Z\n")
def test_date_time_check_equals_jsonschema_format_checker(text: str) -> None:
    assert is_date_time(text) == FORMATS.conforms(text, "date-time")


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A payload near the contract: a valid-looking one with fields dropped, changed or added."""
    name = draw(st.sampled_from(sorted(CONFIG.events)))
    spec = CONFIG.events[name]
    props = spec.payload.get("properties", {})
    data: dict[str, Any] = {}
    for field, schema in props.items():
        if draw(st.integers(0, 9)) == 0:
            continue
        kind = schema.get("type")
        if "enum" in schema and draw(st.booleans()):
            data[field] = draw(st.sampled_from(schema["enum"]))
        elif schema.get("format") == "date-time" or "timestamp" in field or field.endswith("_at"):
            data[field] = draw(instants)
        elif kind == "string":
            data[field] = draw(st.text(max_size=8))
        elif kind == "boolean":
            data[field] = draw(st.booleans())
        else:
            data[field] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        data[draw(st.text(max_size=6))] = draw(values)
    return name, data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
def test_compiled_payload_validators_agree_with_jsonschema(drawn: tuple[str, dict[str, Any]]) -> None:
    name, data = drawn
    fast = CONTRACT._fast[name]
    assert fast is not None, f"{name} should have a compiled validator"
    try:
        fast(data)
        fast_ok = True
    except Exception:  # noqa: BLE001 - any refusal counts as a refusal
        fast_ok = False
    assert fast_ok == CONTRACT._validators[name].is_valid(data)


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


def _outcome(parse: Any, raw: bytes) -> Any:
    """What a parser makes of `raw`: (value, canonical, floats seen) or the rejection's errors."""
    from engine.runtime import envelope as intake
    from engine.reasons import Rejected

    try:
        value, canonical = parse(raw)
    except Rejected as rejected:
        return ("rejected", rejected.errors)
    return ("parsed", repr(value), canonical, intake._FLOATS[0] > 0)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


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
