"""What happens to an event, through the embedding API (`from engine import Engine`).

docs/pipeline.md ("The envelope", "The eight steps") and docs/api.md: every
rejection reason with its exact errors, duplicates, what is stored (byte-exact rejections,
the input log, the config hash on every row), batching equal to one-by-one processing,
routes whose state the config no longer declares, opening configs and databases.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACKER, completed, entered, envelope, form_submitted, left, registered

from engine import ConfigError, Engine, EngineError, StoreError, load_config
from engine.config.locate import bundled_config

RESULT_KEYS = {"line", "id", "type", "status", "reason", "errors", "emitted", "actions", "route"}
CLASSIFIED = "client_webinar_attendance_classified"
POST_ROUTE = "post_webinar_route"


# -- helpers ----------------------------------------------------------------------------------

def rows(db: Path, sql: str, *params: Any) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def codes(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The (path, code) pairs of a result's errors, in the order given."""
    return [(e["path"], e["code"]) for e in result["errors"]]


def check_shape(result: dict[str, Any]) -> None:
    assert set(result) == RESULT_KEYS
    assert json.loads(json.dumps(result)) == result
    assert result["status"] in ("accepted", "duplicate", "rejected")
    for err in result["errors"]:
        assert set(err) == {"path", "message", "code"}
        assert err["path"] == "" or err["path"].startswith("/")
        assert isinstance(err["message"], str) and err["message"]


def raw_line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def add_broken_rule(config: Path) -> None:
    """A rule whose output violates the contract, but only for completions of session 'bad'."""
    with (config / "rules" / "attendance.yaml").open("a", encoding="utf-8") as f:
        f.write("""
  - id: broken_on_bad_session
    description: writes a session id where a date-time belongs
    on: {event: client_webinar_completed}
    when:
      data: {session_id: {equals: bad}}
    emit:
      event: client_webinar_attendance_classified
      source: attendance-classifier
      data:
        lead_id: {from: lead_id}
        webinar_id: {from: webinar_id}
        attended: {value: true}
        timestamp: {from: session_id}
""")


def add_emitter(config: Path, name: str, events: list[str]) -> None:
    listed = "\n".join(f"      {e}: implemented" for e in events)
    with (config / "emitters.yaml").open("a", encoding="utf-8") as f:
        f.write(f"  {name}:\n    kind: client_tracker\n    description: a second tracker\n    events:\n{listed}\n")


# -- the result --------------------------------------------------------------------------------

def test_results_have_exactly_the_documented_keys_and_serialise(engine):
    results = [
        engine.process(entered(id="r1")),
        engine.process(entered(id="r1")),
        engine.process(b"{oops"),
        engine.process(completed(id="r2")),
    ]
    for r in results:
        check_shape(r)
    assert [r["status"] for r in results] == ["accepted", "duplicate", "rejected", "accepted"]
    assert results[0] == {
        "line": None, "id": "r1", "type": "client_webinar_entered", "status": "accepted", "reason": None,
        "errors": [], "emitted": [],
        "actions": [{"type": "route", "from": "new", "to": "in_webinar"}, {"type": "screen", "screen": "webinar_room"}],
        "route": {"lead_id": "l1", "webinar_id": "w1", "state": "in_webinar", "screen": "webinar_room"},
    }
    assert results[1]["reason"] == "same_envelope" and results[1]["route"] is None
    assert [e["type"] for e in results[3]["emitted"]] == [CLASSIFIED, POST_ROUTE]


def test_same_input_as_dict_str_and_bytes_gives_the_same_outcome(open_engine, tmp_path):
    event = completed(id="forms")
    outcomes = []
    for i, form in enumerate((event, json.dumps(event), json.dumps(event).encode())):
        eng = open_engine(db=tmp_path / f"form{i}.db")
        outcomes.append(eng.process(form))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert outcomes[0]["status"] == "accepted"


# -- the eight rejection reasons, with exact errors -----------------------------------------------

def test_too_large_is_refused_at_the_limit_plus_one(open_engine):
    eng = open_engine(max_event_bytes=400)
    line = raw_line(entered(id="size"))
    exact = b" " * (400 - len(line)) + line  # leading whitespace is valid JSON
    assert len(exact) == 400
    assert eng.process(exact)["status"] == "accepted"
    over = b" " + exact
    assert len(over) == 401
    r = eng.process(over)
    assert (r["status"], r["reason"]) == ("rejected", "too_large")
    assert codes(r) == [("", "too_large")]
    assert "401" in r["errors"][0]["message"] and "400" in r["errors"][0]["message"]


def test_too_large_is_refused_without_parsing(engine):
    big = {**entered(id="huge"), "padding": "x" * (300 * 1024)}
    r = engine.process(json.dumps(big).encode())
    assert r["reason"] == "too_large"
    assert (r["id"], r["type"]) == (None, None)


def test_too_large_default_limit_is_256_kib(engine):
    body = b'{"x":"' + b"a" * (256 * 1024) + b'"}'
    r = engine.process(body)
    assert (r["reason"], codes(r)) == ("too_large", [("", "too_large")])


@pytest.mark.parametrize(("raw", "code"), [
    (b"{oops", "syntax"),
    (b"", "syntax"),
    (b'{"specversion":"1.0","id":"a","id":"b"}', "duplicate_key"),
    (b'{"a":{"b":1,"b":1}}', "duplicate_key"),
    (b'{"a":NaN}', "non_finite_number"),
    (b'{"a":Infinity}', "non_finite_number"),
    (b'{"a":-Infinity}', "non_finite_number"),
    (b'{"a":1e999}', "number_out_of_range"),
    (b'{"a":9223372036854775808}', "number_out_of_range"),
    (b'{"a":-9223372036854775809}', "number_out_of_range"),
    (b'{"a":123456789012345678901234567890}', "number_out_of_range"),
    (b"[" * 1000 + b"]" * 1000, "nesting_too_deep"),
    (b'{"a":' * 200 + b"1" + b"}" * 200, "nesting_too_deep"),
    (b"[" * 100_000, "nesting_too_deep"),
    (b'\xff\xfe{"a":1}', "invalid_utf8"),
    (b'{"a":"\xc3\x28"}', "invalid_utf8"),
    (b'{"a":"\xed\xa0\x80"}', "invalid_utf8"),  # a surrogate encoded as UTF-8 bytes is not UTF-8
    (b'\xef\xbb\xbf{"a":1}', "bom"),
])
def test_malformed_json_codes(engine, raw, code):
    r = engine.process(raw)
    check_shape(r)
    assert (r["status"], r["reason"]) == ("rejected", "malformed_json")
    assert codes(r) == [("", code)]


def test_lone_surrogate_in_an_otherwise_valid_event_is_malformed_json(engine):
    raw = raw_line(completed(id="sur")).replace(b'"lead_id": "l1"', b'"lead_id": "\\ud800"')
    assert b"\\ud800" in raw
    r = engine.process(raw)
    assert (r["status"], r["reason"], codes(r)) == ("rejected", "malformed_json", [("", "lone_surrogate")])
    assert r["id"] == "sur"


def test_a_lone_surrogate_is_a_parse_error_before_any_envelope_check(engine):
    r = engine.process(b'{"note":"\\ud800"}')
    assert (r["reason"], codes(r)) == ("malformed_json", [("", "lone_surrogate")])


def test_64_bit_integers_are_the_edge_of_the_number_range(engine):
    ok = engine.process({**completed(id="big", session="big"), "seq": 2**63 - 1})
    low = engine.process({**completed(id="low", session="low"), "seq": -(2**63)})
    assert (ok["status"], low["status"]) == ("accepted", "accepted")


@pytest.mark.parametrize(("event", "expected"), [
    ({}, [("/data", "required"), ("/id", "required"), ("/source", "required"), ("/specversion", "required"),
          ("/type", "required")]),
    ({**entered(id="x"), "specversion": "0.3"}, [("/specversion", "const")]),
    ({**entered(), "id": ""}, [("/id", "min_length")]),
    ({**entered(), "id": 7}, [("/id", "type")]),
    ({**entered(), "source": ""}, [("/source", "min_length")]),
    ({**entered(), "type": None}, [("/type", "type")]),
    ({**entered(), "data": []}, [("/data", "type")]),
    ({**entered(), "time": "yesterday"}, [("/time", "format")]),
    ({**entered(), "datacontenttype": "text/xml"}, [("/datacontenttype", "pattern")]),
    ({**entered(), "ext": {"nested": 1}}, [("/ext", "type")]),
])
def test_invalid_envelope_paths_and_codes(engine, event, expected):
    r = engine.process(event)
    check_shape(r)
    assert (r["status"], r["reason"]) == ("rejected", "invalid_envelope")
    assert codes(r) == expected


def test_an_invalid_extension_attribute_name_is_an_invalid_envelope(engine):
    r = engine.process({**entered(), "Bad_Name": "x"})
    assert (r["status"], r["reason"]) == ("rejected", "invalid_envelope")
    assert len(r["errors"]) == 1 and "Bad_Name" in r["errors"][0]["message"]


def test_an_invalid_extension_attribute_name_points_at_the_attribute(engine):
    r = engine.process({**entered(), "Bad_Name": "x"})
    assert codes(r) == [("/Bad_Name", "property_names")]


@pytest.mark.parametrize("value", [[], "a string", 42, True, None])
def test_an_event_that_is_not_an_object_is_an_invalid_envelope(engine, value):
    r = engine.process(json.dumps(value))
    assert (r["reason"], codes(r)) == ("invalid_envelope", [("", "type")])


def test_optional_envelope_attributes_are_accepted(engine):
    r = engine.process({**entered(id="opt"), "time": "2026-02-01T18:00:00Z", "subject": "lead l1",
                        "datacontenttype": "application/json", "traceparent": "00-abc", "attempt": 2, "replayed": False})
    assert r["status"] == "accepted", r["errors"]


def test_unknown_event(engine):
    r = engine.process(envelope("client_webinar_teleported", {"lead_id": "l1", "webinar_id": "w1"}, id="u1"))
    assert (r["status"], r["reason"], codes(r)) == ("rejected", "unknown_event", [("/type", "unknown_event")])
    assert (r["id"], r["type"]) == ("u1", "client_webinar_teleported")


@pytest.mark.parametrize(("event", "needle"), [
    # an internal service's event sent from outside, with the service's own name
    (envelope(CLASSIFIED, {"lead_id": "l1", "webinar_id": "w1", "attended": True, "timestamp": "2026-02-01T19:00:00Z"},
              source="attendance-classifier"), "internal"),
    (envelope(POST_ROUTE, {"lead_id": "l1", "webinar_id": "w1", "attended": True, "timestamp": "2026-02-01T19:00:00Z",
                           "status": "attended"}, source="post-webinar-routing-service"), "internal"),
    # an internal service's event sent by the tracker, which does not list it
    (envelope(CLASSIFIED, {"lead_id": "l1", "webinar_id": "w1", "attended": True, "timestamp": "2026-02-01T19:00:00Z"}),
     "may not emit"),
    # a known emitter, an event it does not list (registered and left have no emitter yet)
    (registered(), "may not emit"),
    (left(), "may not emit"),
    # an emitter nobody approved
    (completed(source="some-other-tracker"), "not an approved emitter"),
])
def test_unauthorized_emitter(engine, event, needle):
    r = engine.process(event)
    assert (r["status"], r["reason"], codes(r)) == ("rejected", "unauthorized_emitter", [("/source", "unauthorized_emitter")])
    assert needle in r["errors"][0]["message"]
    assert engine.route(lead_id="l1", webinar_id="w1") is None


def _completed_with(**changes: Any) -> dict[str, Any]:
    event = completed(id="p1")
    for k, v in changes.items():
        if v is KeyError:
            del event["data"][k]
        else:
            event["data"][k] = v
    return event


@pytest.mark.parametrize(("event", "expected"), [
    (_completed_with(webinar_type="zoom"), [("/data/webinar_type", "enum")]),
    (_completed_with(session_id=KeyError), [("/data/session_id", "required")]),
    (_completed_with(lead_id=KeyError), [("/data/lead_id", "required")]),
    (_completed_with(utm_source="mail"), [("/data/utm_source", "additional_properties")]),
    (_completed_with(completed_at="yesterday"), [("/data/completed_at", "format")]),
    (_completed_with(completed_at="2026-02-31T19:00:00Z"), [("/data/completed_at", "format")]),
    (_completed_with(lead_id=17), [("/data/lead_id", "type")]),
    (_completed_with(lead_id=""), [("/data/lead_id", "min_length")]),
    # every error is reported, sorted by path
    (_completed_with(webinar_type="zoom", completed_at="later", session_id=KeyError),
     [("/data/completed_at", "format"), ("/data/session_id", "required"), ("/data/webinar_type", "enum")]),
    (entered(ts="not a time"), [("/data/timestamp", "format")]),
    (form_submitted(answers=["not", "an", "object"]), [("/data/form_payload", "type")]),
])
def test_invalid_payload_paths_and_codes(engine, event, expected):
    r = engine.process(event)
    check_shape(r)
    assert (r["status"], r["reason"]) == ("rejected", "invalid_payload")
    assert codes(r) == expected
    assert engine.route(lead_id="l1", webinar_id="w1") is None


def test_each_extra_payload_field_is_its_own_error(engine):
    r = engine.process(_completed_with(utm_source="mail", utm_medium="x"))
    assert r["reason"] == "invalid_payload"
    assert codes(r) == [("/data/utm_medium", "additional_properties"), ("/data/utm_source", "additional_properties")]


def test_the_first_failing_step_decides_the_reason(engine):
    # unknown source AND invalid payload: step 5 comes before step 6
    r = engine.process(_completed_with(webinar_type="zoom") | {"source": "stranger"})
    assert r["reason"] == "unauthorized_emitter"
    # unknown type AND unknown source: step 4 first
    assert engine.process(envelope("nope", {}, source="stranger"))["reason"] == "unknown_event"
    # invalid envelope AND unknown type: step 3 first
    assert engine.process({**envelope("nope", {}), "specversion": "2.0"})["reason"] == "invalid_envelope"


# -- duplicates and id conflicts -------------------------------------------------------------------

def test_same_envelope_is_a_duplicate_whatever_the_spelling(engine):
    event = completed(id="dup")
    first = engine.process(event)
    assert first["status"] == "accepted"
    respelled = json.dumps(dict(reversed(list(event.items()))), indent=2).encode()
    for again in (event, json.dumps(event), respelled):
        r = engine.process(again)
        assert (r["status"], r["reason"], r["errors"], r["emitted"], r["actions"], r["route"]) == \
            ("duplicate", "same_envelope", [], [], [], None)
        assert (r["id"], r["type"]) == ("dup", "client_webinar_completed")


def test_same_fact_is_a_duplicate(engine):
    assert engine.process(completed(id="f1"))["status"] == "accepted"
    r = engine.process(completed(id="f2", at="2026-02-01T19:30:00Z"))  # same lead, webinar, session
    assert (r["status"], r["reason"], r["emitted"], r["route"]) == ("duplicate", "same_fact", [], None)
    # date-time identity fields compare as instants
    assert engine.process(entered(id="e1", ts="2026-02-01T18:00:00Z"))["status"] == "accepted"
    r = engine.process(entered(id="e2", ts="2026-02-01T20:00:00+02:00"))
    assert (r["status"], r["reason"]) == ("duplicate", "same_fact")
    assert engine.process(entered(id="e3", ts="2026-02-01T18:00:01Z"))["status"] == "accepted"


def test_id_conflict_keeps_the_original_fact(engine, tmp_path):
    original = completed(id="same-id", session="s1")
    assert engine.process(original)["status"] == "accepted"
    before = rows(tmp_path / "test.db", "SELECT seq, data FROM facts WHERE source = ? AND id = ?", TRACKER, "same-id")
    route_before = engine.route(lead_id="l1", webinar_id="w1")

    r = engine.process(completed(id="same-id", session="s2", at="2026-02-02T19:00:00Z"))
    check_shape(r)
    assert (r["status"], r["reason"], codes(r)) == ("rejected", "id_conflict", [("/id", "id_conflict")])
    assert (r["id"], r["type"], r["emitted"], r["route"]) == ("same-id", "client_webinar_completed", [], None)

    after = rows(tmp_path / "test.db", "SELECT seq, data FROM facts WHERE source = ? AND id = ?", TRACKER, "same-id")
    assert after == before and len(after) == 1
    assert json.loads(after[0][1])["session_id"] == "s1"
    assert engine.route(lead_id="l1", webinar_id="w1") == route_before
    stored = rows(tmp_path / "test.db", "SELECT reason, id, source FROM rejections")
    assert stored == [("id_conflict", "same-id", TRACKER)]
    # the original still dedupes as itself
    assert engine.process(original)["reason"] == "same_envelope"


def test_the_same_id_from_two_emitters_is_not_a_conflict(config_copy, open_engine):
    add_emitter(config_copy, "client-webinar-tracker-v3", ["client_webinar_completed"])
    eng = open_engine(config=config_copy)
    a = eng.process(completed(id="shared-id", session="s1"))
    b = eng.process(completed(id="shared-id", session="s2", source="client-webinar-tracker-v3"))
    assert (a["status"], b["status"]) == ("accepted", "accepted")
    # the same id and data from the other emitter: a different envelope, the same fact
    assert eng.process(completed(id="id-2", session="s3"))["status"] == "accepted"
    c = eng.process(completed(id="id-2", session="s3", source="client-webinar-tracker-v3"))
    assert (c["status"], c["reason"]) == ("duplicate", "same_fact")
    # ...while each emitter's own replays stay envelope duplicates
    d = eng.process(completed(id="shared-id", session="s2", source="client-webinar-tracker-v3"))
    assert (d["status"], d["reason"]) == ("duplicate", "same_envelope")


# -- rule_failed ---------------------------------------------------------------------------------------

def test_rule_failed_rolls_the_event_back(config_copy, open_engine, tmp_path):
    add_broken_rule(config_copy)
    eng = open_engine(config=config_copy)
    db = tmp_path / "test.db"
    assert eng.process(entered(id="in"))["route"]["state"] == "in_webinar"
    counts = {t: rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("facts", "routes", "route_history", "actions")}

    bad = completed(id="bad-one", session="bad")
    r = eng.process(bad)
    check_shape(r)
    assert (r["status"], r["reason"]) == ("rejected", "rule_failed")
    assert codes(r) == [("/data/timestamp", "format")]
    assert "broken_on_bad_session" in r["errors"][0]["message"]
    assert (r["emitted"], r["actions"], r["route"]) == ([], [], None)

    # nothing of the event is stored: no fact, no derived fact, no route change, no action
    assert {t: rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in counts} == counts
    assert rows(db, "SELECT count(*) FROM facts WHERE id = 'bad-one' OR type != 'client_webinar_entered'") == [(0,)]
    route = eng.route(lead_id="l1", webinar_id="w1")
    assert (route["state"], len(route["history"])) == ("in_webinar", 1)
    # ...but the input log and the rejections keep it, raw bytes included
    last = rows(db, "SELECT status, reason, id, fact_seq, rejection_seq IS NOT NULL FROM inputs ORDER BY seq DESC LIMIT 1")
    assert last == [("rejected", "rule_failed", "bad-one", None, 1)]
    stored = rows(db, "SELECT raw, reason, errors FROM rejections")
    assert len(stored) == 1 and stored[0][1] == "rule_failed"
    assert json.loads(stored[0][0]) == bad
    assert json.loads(stored[0][2]) == r["errors"]

    # the transaction is intact: the next good event goes through
    good = eng.process(completed(id="good-one", session="good"))
    assert (good["status"], good["route"]["state"]) == ("accepted", "completed")


def test_rule_failed_on_a_new_key_creates_no_route(config_copy, open_engine, tmp_path):
    add_broken_rule(config_copy)
    eng = open_engine(config=config_copy)
    r = eng.process(completed(lead="fresh", id="bad-first", session="bad"))
    assert r["reason"] == "rule_failed"
    assert eng.route(lead_id="fresh", webinar_id="w1") is None
    assert rows(tmp_path / "test.db", "SELECT count(*) FROM routes") == [(0,)]
    # the rolled back event is not a fact: the same envelope, once the rule is fixed, is new
    fixed = load_config(bundled_config())
    eng2 = open_engine(config=fixed)
    assert eng2.process(completed(lead="fresh", id="bad-first", session="bad"))["status"] == "accepted"


# -- what is stored ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'\xff\xfe\x00{"a":1}\x80',
    b'{"id":"\x00"}',
    b"\x00\x00\x00",
    b'{"specversion":"1.0","id":"x","id":"y"}  \t',
    b'  {"specversion": "1.0" , "id" : "n1", "source": "client-webinar-tracker-v2", "type": "nope", "data": {}}',
    "caf\u00e9 \u2603 not json".encode(),
    b'{"a":"\xed\xa0\x80"}',
])
def test_rejections_keep_the_raw_bytes_exactly(engine, tmp_path, raw):
    r = engine.process(raw)
    assert r["status"] == "rejected"
    stored = rows(tmp_path / "test.db", "SELECT raw, raw_size, raw_sha256, truncated, reason, errors, config_hash "
                                        "FROM rejections")
    assert len(stored) == 1
    kept, size, digest, truncated, reason, errors, config_hash = stored[0]
    assert isinstance(kept, bytes) and kept == raw
    assert (size, digest, truncated) == (len(raw), hashlib.sha256(raw).hexdigest(), 0)
    assert (reason, json.loads(errors), config_hash) == (r["reason"], r["errors"], engine.config.hash)


def test_a_too_large_rejection_keeps_size_hash_and_the_first_64_kib(engine, tmp_path):
    raw = b'{"x":"' + bytes(range(256)) * 1200 + b'"}'  # ~300 KiB, every byte value, NULs included
    r = engine.process(raw)
    assert r["reason"] == "too_large"
    stored = rows(tmp_path / "test.db", "SELECT raw, raw_size, raw_sha256, truncated, reason FROM rejections")
    assert stored == [(raw[:65536], len(raw), hashlib.sha256(raw).hexdigest(), 1, "too_large")]


def test_every_input_is_logged_once_with_its_outcome(engine, tmp_path):
    inputs = [entered(id="a"), entered(id="a"), b"{bad", completed(id="b"), completed(id="c"),
              completed(id="b", session="s2"), registered(id="r"), entered(lead=None, id="nolead"), b"{bad"]
    results = [engine.process(e) for e in inputs]
    logged = rows(tmp_path / "test.db", "SELECT status, reason, id, type, fact_seq IS NOT NULL,"
                                        " rejection_seq IS NOT NULL FROM inputs ORDER BY seq")
    assert len(logged) == len(inputs)
    assert [(s, r, i, t) for s, r, i, t, _, _ in logged] == [(r["status"], r["reason"], r["id"], r["type"]) for r in results]
    assert [r["status"] for r in results] == ["accepted", "duplicate", "rejected", "accepted", "duplicate", "rejected",
                                              "rejected", "accepted", "rejected"]
    for (status, _, _, _, has_fact, has_rejection) in logged:
        assert has_fact == (status == "accepted")
        assert has_rejection == (status == "rejected")
    # the same bad bytes twice: logged twice, kept once
    assert rows(tmp_path / "test.db", "SELECT count(*) FROM rejections WHERE reason = 'malformed_json'") == [(1,)]


def test_an_event_without_a_route_key_is_stored_but_routes_nothing(engine, tmp_path):
    r = engine.process(entered(lead=None, id="anon"))
    assert (r["status"], r["route"], r["emitted"], r["actions"]) == ("accepted", None, [], [])
    assert rows(tmp_path / "test.db", "SELECT id, route_key FROM facts") == [("anon", None)]
    assert rows(tmp_path / "test.db", "SELECT count(*) FROM routes") == [(0,)]


def test_every_row_records_the_config_hash(engine, tmp_path):
    for e in (entered(id="h1"), completed(id="h2"), form_submitted(id="h3"), form_submitted(id="h4", form="f2"),
              b"{bad", completed(id="h2", session="other")):
        engine.process(e)
    engine.evaluate(webinar_id="w1", at="2026-03-01T00:00:00Z")
    db = tmp_path / "test.db"
    for table in ("inputs", "facts", "rejections", "routes", "route_history", "actions", "evaluations"):
        hashes = rows(db, f"SELECT config_hash FROM {table}")
        assert hashes, f"{table} is empty"
        assert {h for (h,) in hashes} == {engine.config.hash}, table
    assert len(engine.config.hash) == 64


def test_rows_written_under_a_changed_config_carry_the_new_hash(config_copy, open_engine, tmp_path):
    old = open_engine()
    old.process(entered(id="old"))
    add_emitter(config_copy, "client-webinar-tracker-v3", ["client_webinar_completed"])
    new = open_engine(config=config_copy)
    assert new.config.hash != old.config.hash
    new.process(completed(id="new"))
    db = tmp_path / "test.db"
    assert rows(db, "SELECT id, config_hash FROM facts WHERE derived = 0 ORDER BY seq") == [
        ("old", old.config.hash), ("new", new.config.hash)]
    assert rows(db, "SELECT config_hash FROM route_history ORDER BY seq") == [(old.config.hash,), (new.config.hash,)]
    assert new.route(lead_id="l1", webinar_id="w1")["config_hash"] == new.config.hash


# -- process() never raises ------------------------------------------------------------------------------

class _Opaque:
    pass


_circular: dict[str, Any] = {}
_circular["self"] = _circular


@pytest.mark.parametrize("garbage", [
    b"", b"\n", b"\x00", b"\xff" * 10, bytearray(b"{}"), memoryview(b"[1,2]"),
    "", "   ", "null", "{", "\u2603",
    {}, {"a": _Opaque()}, {"data": b"bytes"}, {"data": {1, 2}}, {(1, 2): "tuple key"}, {1: "int key"},
    {"id": float("nan")}, {"id": float("inf")}, {"id": 10**40}, _circular,
    {**completed(), "data": None}, {**completed(), "data": "text"}, {**completed(), "type": ["list"]},
    {**completed(), "source": {"nested": True}}, {**completed(), "id": None},
    {**completed(), "data": {**completed()["data"], "lead_id": None}},
    {**completed(), "data": {**completed()["data"], "session_id": {"$ref": "x"}}},
])
def test_process_never_raises_on_garbage(engine, garbage):
    r = engine.process(garbage)
    check_shape(r)
    assert r["status"] == "rejected"
    assert r["reason"] in ("malformed_json", "invalid_envelope", "invalid_payload")


@pytest.mark.parametrize("garbage", [None, 0, 1.5, True, [completed()], ("tuple",)])
def test_process_never_raises_on_non_mapping_values(engine, garbage):
    r = engine.process(garbage)
    check_shape(r)
    assert r["status"] == "rejected"


def test_process_does_not_raise_on_a_deeply_nested_dict(engine):
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    r = engine.process(deep)
    check_shape(r)
    assert (r["status"], r["reason"]) == ("rejected", "malformed_json")


@pytest.mark.parametrize("raw", [
    b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"t","data":[]}',
    b'{"specversion":"1.0","id":"x","source":"client-webinar-tracker-v2","type":"t\\udfff","data":{}}',
    b'{"specversion":"1.0","id":"x","source":"s\\udc00","type":"client_webinar_completed","data":{}}',
])
def test_process_does_not_raise_on_a_lone_surrogate_in_the_envelope(engine, tmp_path, raw):
    r = engine.process(raw)
    check_shape(r)
    assert r["status"] == "rejected"
    assert rows(tmp_path / "test.db", "SELECT raw FROM rejections") == [(raw,)]


# -- process_many equals one-by-one ---------------------------------------------------------------------

def _mixed_stream() -> list[Any]:
    stream: list[Any] = []
    for n in range(4):
        lead = f"lead-{n}"
        e = entered(lead, id=f"e{n}")
        c = completed(lead, id=f"c{n}", session="bad" if n == 2 else "s1")
        f = form_submitted(lead, id=f"f{n}")
        stream += [e, e, b"{bad json " + str(n).encode(), c, completed(lead, id=f"c{n}-again"), f,
                   f, form_submitted(lead, id=f"f{n}-second", form="f2"),
                   completed(lead, id=f"c{n}", session="conflict"),
                   registered(lead, id=f"r{n}"), entered(None, id=f"anon{n}"),
                   b"x" * 3000,  # too large for the engines below
                   _completed_with(webinar_type="zoom") | {"id": f"bad-payload-{n}"}]
    stream += [completed("lead-2", id="c2-fixed", session="s9"), entered("lead-3", id="e3", ts="2026-02-01T18:00:00Z")]
    return stream


def _state(db: Path) -> dict[str, list[tuple]]:
    return {
        "routes": rows(db, "SELECT route_key, state, screen, version, config_hash FROM routes ORDER BY route_key"),
        "history": rows(db, "SELECT route_key, from_state, to_state, event_source, event_id, event_type, fact_seq,"
                            " config_hash FROM route_history ORDER BY seq"),
        "facts": rows(db, "SELECT seq, source, id, type, route_key, identity, data, derived, rule_id, cause_seq"
                          " FROM facts ORDER BY seq"),
        "actions": rows(db, "SELECT route_key, fact_seq, position, type, body, applied FROM actions ORDER BY seq"),
        "inputs": rows(db, "SELECT origin, line, status, reason, source, id, type, fact_seq, rejection_seq"
                           " FROM inputs ORDER BY seq"),
        "rejections": rows(db, "SELECT raw_sha256, raw, raw_size, truncated, reason, errors FROM rejections ORDER BY seq"),
    }


@pytest.mark.parametrize("batch_size", [1, 2, 7, 100])
def test_process_many_equals_one_by_one(config_copy, open_engine, tmp_path, batch_size):
    add_broken_rule(config_copy)
    config = load_config(config_copy)
    stream = _mixed_stream()

    serial = open_engine(config=config, db=tmp_path / "serial.db", max_event_bytes=2000)
    expected = [serial.process(e) for e in stream]
    statuses = {(r["status"], r["reason"]) for r in expected}
    assert {("accepted", None), ("duplicate", "same_envelope"), ("duplicate", "same_fact"),
            ("rejected", "malformed_json"), ("rejected", "rule_failed"), ("rejected", "id_conflict"),
            ("rejected", "unauthorized_emitter"), ("rejected", "too_large"), ("rejected", "invalid_payload")} <= statuses

    batched = open_engine(config=config, db=tmp_path / f"batch{batch_size}.db", max_event_bytes=2000)
    got = batched.process_many(iter(stream), batch_size=batch_size)
    assert got == expected
    assert _state(tmp_path / f"batch{batch_size}.db") == _state(tmp_path / "serial.db")


def test_process_many_numbers_lines_from_first_line(engine):
    results = engine.process_many([entered(id="n1"), b"{", completed(id="n2")], first_line=5, origin="in.jsonl")
    assert [r["line"] for r in results] == [5, 6, 7]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert engine.process_many([]) == []


# -- a route whose state the config no longer declares --------------------------------------------------

def test_route_in_a_state_the_config_no_longer_declares_is_reported_not_reset(config_copy, open_engine, tmp_path):
    old = open_engine()
    assert old.process(entered(id="e1"))["route"]["state"] == "in_webinar"
    old.close()

    states = config_copy / "states.yaml"
    states.write_text(states.read_text("utf-8").replace("in_webinar", "in_room"), "utf-8")
    eng = open_engine(config=config_copy)

    view = eng.route(lead_id="l1", webinar_id="w1")
    assert (view["state"], view["screen"]) == ("in_webinar", "webinar_room")
    assert view["problem"]["code"] == "unknown_state"
    assert "in_webinar" in view["problem"]["message"]
    assert set(view["problem"]) == {"code", "message"}

    r = eng.process(completed(id="c1"))
    assert r["status"] == "accepted"
    assert r["route"]["state"] == "in_webinar"
    assert r["route"]["problem"]["code"] == "unknown_state"
    assert r["actions"] == []
    view = eng.route(lead_id="l1", webinar_id="w1")
    assert view["state"] == "in_webinar" and len(view["history"]) == 1
    assert rows(tmp_path / "test.db", "SELECT state, screen FROM routes") == [("in_webinar", "webinar_room")]
    # a route the config does know carries no problem
    ok = eng.process(entered("l2", id="e2"))
    assert ok["route"]["state"] == "in_room" and "problem" not in ok["route"]


# -- opening --------------------------------------------------------------------------------------------

def test_open_without_a_config_uses_the_bundled_default(tmp_path):
    with Engine.open(config=None, db=tmp_path / "d.db") as eng:
        assert eng.config.root.resolve() == bundled_config().resolve()
        assert eng.config.hash == load_config(bundled_config()).hash
        assert eng.process(completed(id="x"))["status"] == "accepted"


def test_open_with_a_path_a_str_or_a_loaded_config(config_copy, tmp_path):
    loaded = load_config(config_copy)
    for i, cfg in enumerate((config_copy, str(config_copy), loaded)):
        with Engine.open(config=cfg, db=str(tmp_path / f"c{i}.db")) as eng:
            assert eng.config.hash == loaded.hash


def test_a_broken_config_raises_config_error_with_every_problem(config_copy, tmp_path):
    (config_copy / "states.yaml").write_text("initial: [\n", "utf-8")
    (config_copy / "emitters.yaml").write_text("emitters:\n  x: {kind: client_tracker, bogus_key: 1, events: {}}\n",
                                               "utf-8")
    with pytest.raises(ConfigError) as caught:
        Engine.open(config=config_copy, db=tmp_path / "never.db")
    err = caught.value
    assert isinstance(err, EngineError)
    files = {Path(p.file).name for p in err.errors}
    assert {"states.yaml", "emitters.yaml"} <= files
    for p in err.errors:
        assert p.severity == "error" and p.code and p.message and p.line >= 1 and p.column >= 1
    assert "states.yaml" in str(err)


def test_store_error_for_a_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "x.db"
    with pytest.raises(StoreError) as caught:
        Engine.open(db=path)
    assert isinstance(caught.value, EngineError)
    assert str(path) in str(caught.value)
    assert not path.parent.exists()


def test_store_error_for_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(StoreError) as caught:
        Engine.open(db=path)
    assert str(path) in str(caught.value)
    assert path.read_text() == "these are my notes, not a database\n" * 200


def test_store_error_for_a_newer_schema_version(tmp_path):
    path = tmp_path / "future.db"
    with Engine.open(db=path) as eng:
        eng.process(entered(id="keep"))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError) as caught:
        Engine.open(db=path)
    message = str(caught.value)
    assert str(path) in message and "99" in message
    assert rows(path, "PRAGMA user_version") == [(99,)]
    assert rows(path, "SELECT id FROM facts") == [("keep",)]


def test_store_error_for_an_empty_database_with_a_newer_version(tmp_path):
    path = tmp_path / "empty-future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="99"):
        Engine.open(db=path)


# -- route history across engine instances ---------------------------------------------------------------

def test_route_history_survives_reopening(tmp_path):
    db = tmp_path / "h.db"
    with Engine.open(db=db) as first:
        first.process(entered(id="h-e"))
    with Engine.open(db=db) as second:
        assert second.route(lead_id="l1", webinar_id="w1")["state"] == "in_webinar"
        second.process(completed(id="h-c"))
        second.process(entered(id="h-e"))  # a replay from the first run is still a duplicate
    with Engine.open(db=db) as third:
        third.process(form_submitted(id="h-f"))
        view = third.route(lead_id="l1", webinar_id="w1")
    assert set(view) == {"lead_id", "webinar_id", "state", "screen", "config_hash", "history"}
    assert (view["state"], view["screen"]) == ("form_submitted", "post_webinar_thanks")
    assert [(h["from"], h["to"], h["event"]) for h in view["history"]] == [
        ("new", "in_webinar", {"source": TRACKER, "id": "h-e", "type": "client_webinar_entered"}),
        ("in_webinar", "completed", {"source": TRACKER, "id": "h-c", "type": "client_webinar_completed"}),
        ("completed", "form_submitted", {"source": TRACKER, "id": "h-f", "type": "client_webinar_form_submitted"}),
    ]
    ats = [h["at"] for h in view["history"]]
    assert ats == sorted(ats) and all(a.endswith("Z") for a in ats)


# -- several processes opening one new database ---------------------------------------------------------

def test_opening_a_new_database_waits_for_another_process_setting_it_up(tmp_path):
    # Two processes starting on a new file at once fail this way about one time in ten (seen with two
    # `webinar-flows process` runs); the holder below pins the interleaving so the test is deterministic.
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process, mid-way through setting up the new file
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with Engine.open(db=path) as eng:
            assert eng.process(entered(id="after-wait"))["status"] == "accepted"
    finally:
        release.join()
        holder.close()


@pytest.mark.parametrize("arguments", [
    {"db": None}, {"db": 5}, {"config": 5}, {"max_event_bytes": "abc"}, {"max_event_bytes": 0},
    {"max_event_bytes": True}, {"synchronous": "bogus"}, {"synchronous": None},
])
def test_open_refuses_arguments_it_cannot_use_before_touching_anything(tmp_path: Path, monkeypatch: Any,
                                                                     arguments: dict[str, Any]) -> None:
    from engine import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError):
        Engine.open(**{"db": tmp_path / "a.db", **arguments})
    assert list(tmp_path.iterdir()) == []  # no file named "None" or "5", no database


def test_api_calls_refuse_what_is_not_their_argument(tmp_path: Path) -> None:
    import datetime

    from engine import UsageError

    with Engine.open(db=tmp_path / "a.db", synchronous="full") as engine:
        engine.process(entered(id="e1"))
        for call in (lambda: engine.evaluate(), lambda: engine.evaluate(webinar_id=None, lead_id=None),
                     lambda: engine.evaluate(webinar_id="w1", at=datetime.datetime.now(datetime.timezone.utc)),
                     lambda: engine.process_many(json.dumps(entered(id="e2"))),
                     lambda: engine.process_many([entered(id="e3")], batch_size=0)):
            with pytest.raises(UsageError):
                call()
        assert engine.rejections() == []  # nothing was stored by the refused calls
        assert [r["status"] for r in engine.process_many([entered(id="e2", lead="l9")], batch_size=1)] == ["accepted"]


def test_a_python_object_with_no_json_form_is_rejected_with_its_own_code(tmp_path: Path) -> None:
    with Engine.open(db=tmp_path / "a.db") as engine:
        nan = engine.process({**entered(id="n1"), "x": float("nan")})
        assert (nan["reason"], [e["code"] for e in nan["errors"]]) == ("malformed_json", ["non_finite_number"])
        odd = engine.process({**entered(id="n2"), "x": {1, 2}})
        assert (odd["reason"], [e["code"] for e in odd["errors"]]) == ("malformed_json", ["not_json"])
        assert len(engine.rejections()) == 2  # both kept, as any rejected input


def test_a_misspelt_rejection_reason_is_refused_not_an_empty_selection(tmp_path: Path) -> None:
    from engine import UsageError

    with Engine.open(db=tmp_path / "a.db") as engine:
        engine.process(b"{not json")
        with pytest.raises(UsageError, match="unknown rejection reason"):
            engine.rejections(reasons=["malformed-json"])
        assert [r["reason"] for r in engine.rejections(reasons=["malformed_json"])] == ["malformed_json"]
