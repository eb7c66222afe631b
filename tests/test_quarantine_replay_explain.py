"""The operator's commands: `rejections` and `reprocess` (the quarantine), `replay` (what-if under
another config) and `explain` (one lead's story), through the CLI; plus the schema migration that
the quarantine needs (version 1 -> 2)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from conftest import TRACKER, completed, entered, form_submitted, jsonl, left, registered, result_lines
from dbstate import digest, rows

from engine import Engine
from engine.store.sqlite_migrations import migrations
from engine.store.sqlite import SCHEMA_VERSION

RESULT_KEYS = ["line", "id", "type", "status", "reason", "errors", "emitted", "actions", "route"]
T_EVAL = "2026-02-02T00:00:00Z"


# -- helpers ----------------------------------------------------------------------------------

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def processed(run_cli, tmp_path: Path, *events: dict | str | bytes, db: str = "live.db", **kw: str) -> Path:
    (tmp_path / "in.jsonl").write_bytes(jsonl(*events))
    extra = [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", v)]
    out = run_cli("process", "in.jsonl", "--db", db, *extra)
    assert out.exit_code == 0, out.output
    return db if db.startswith("postgresql://") else tmp_path / db  # type: ignore[return-value]


def edit(config: Path, name: str, old: str, new: str) -> None:
    path = config / name
    text = path.read_text()
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new))


def approve_left(config: Path) -> Path:
    edit(config, "emitters.yaml", "      client_webinar_form_submitted: planned\n",
         "      client_webinar_form_submitted: planned\n      client_webinar_left: planned\n")
    return config


def json_lines(out) -> list[dict[str, Any]]:
    assert out.exit_code == 0, out.output
    return result_lines(out.stdout)


# -- rejections: listing and filters --------------------------------------------------------------

QUARANTINE = [
    entered(id="q-entered"),                                     # accepted
    left(id="q-left"),                                           # unauthorized_emitter (tracker may not emit left)
    registered(lead="l2", id="q-registered", source="landing"),  # unauthorized_emitter (no emitter at all)
    "{not json",                                                 # malformed_json
    completed(id="q-bad", at="yesterday"),                       # invalid_payload
    b'{"id": "\xff\xfe"}',                                       # malformed_json (invalid UTF-8)
]


def test_rejections_lists_the_quarantine_as_a_table(run_cli, tmp_path, db_url):
    db = processed(run_cli, tmp_path, *QUARANTINE, db=db_url)
    out = run_cli("rejections", "--db", str(db))
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "LAST", "SEEN", "REASON"]
    body = [line.split() for line in lines[1:]]
    assert [(r[0], r[2]) for r in body] == [("1", "unauthorized_emitter"), ("2", "unauthorized_emitter"),
                                             ("3", "malformed_json"), ("4", "invalid_payload"),
                                             ("5", "malformed_json")]
    assert body[0][3:6] == [TRACKER, "client_webinar_left", "q-left"]
    assert "not an approved emitter" in lines[2]
    assert "'yesterday' is not a 'date-time'" in lines[4]
    assert out.stderr.strip() == "5 rejection(s) (open)"


def test_rejections_json_carries_the_raw_bytes(run_cli, tmp_path, db_url):
    db = processed(run_cli, tmp_path, *QUARANTINE, db=db_url)
    found = json_lines(run_cli("rejections", "--db", str(db), "--format", "json"))
    assert [e["seq"] for e in found] == [1, 2, 3, 4, 5]
    first = found[0]
    raw = json.dumps(QUARANTINE[1]).encode()
    assert first["raw"].encode() == raw and first["raw_encoding"] == "utf-8"
    assert first["sha256"] == hashlib.sha256(raw).hexdigest() and first["raw_size"] == len(raw)
    assert (first["source"], first["id"], first["type"]) == (TRACKER, "q-left", "client_webinar_left")
    assert first["errors"][0]["code"] == "unauthorized_emitter"
    assert first["truncated"] is False and first["resolved_at"] is None
    assert first["first_seen_at"] == first["last_seen_at"]
    binary = found[4]
    assert binary["raw_encoding"] == "base64"
    assert base64.b64decode(binary["raw"]) == b'{"id": "\xff\xfe"}'
    assert binary["errors"][0]["code"] == "invalid_utf8"


@pytest.mark.parametrize(("args", "expected"), [
    (["--reason", "unauthorized_emitter"], ["q-left", "q-registered"]),
    (["--reason", "malformed_json", "--reason", "invalid_payload"], [None, "q-bad", None]),
    (["--emitter", "landing"], ["q-registered"]),
    (["--emitter", TRACKER, "--reason", "unauthorized_emitter"], ["q-left"]),
    (["--type", "client_webinar_completed"], ["q-bad"]),
    (["--type", "client_webinar_left", "--type", "client_webinar_registered"], ["q-left", "q-registered"]),
    (["--since", "2000-01-01T00:00:00Z"], ["q-left", "q-registered", None, "q-bad", None]),
    (["--since", "2999-01-01T00:00:00+02:00"], []),
    (["--until", "2000-01-01T00:00:00Z"], []),
    (["--state", "resolved"], []),
])
def test_rejections_filters(run_cli, tmp_path, args, expected, db_url):
    db = processed(run_cli, tmp_path, *QUARANTINE, db=db_url)
    found = json_lines(run_cli("rejections", "--db", str(db), "--format", "json", *args))
    assert [e["id"] for e in found] == expected


def test_rejections_time_bounds_are_on_last_seen(run_cli, tmp_path, db_url):
    db = processed(run_cli, tmp_path, *QUARANTINE, db=db_url)
    seen = {e["id"]: e["last_seen_at"] for e in json_lines(run_cli("rejections", "--db", str(db), "--format", "json"))}
    found = json_lines(run_cli("rejections", "--db", str(db), "--format", "json", "--since", seen["q-bad"],
                               "--until", seen["q-bad"]))
    assert [e["id"] for e in found] == ["q-bad"]


def test_rejections_bad_time_is_a_usage_error(run_cli, tmp_path):
    db = processed(run_cli, tmp_path, *QUARANTINE)
    out = run_cli("rejections", "--db", str(db), "--since", "yesterday")
    assert out.exit_code == 2 and "RFC 3339" in out.output


# -- reprocess ----------------------------------------------------------------------------------------

def test_reprocess_admits_events_once_their_emitter_is_approved(run_cli, tmp_path, config_copy):
    bad_left = left(lead="l3", id="q-left-bad")
    del bad_left["data"]["session_id"]
    db = processed(run_cli, tmp_path, entered(id="e1"), left(id="q-left"), registered(lead="l2", id="q-reg"),
                   bad_left)
    before = rows(db, "SELECT seq, raw FROM rejections ORDER BY seq")
    approve_left(config_copy)

    out = run_cli("reprocess", "--config", str(config_copy), "--db", str(db))
    results = json_lines(out)
    assert [list(r) for r in results] == [["rejection", *RESULT_KEYS]] * 3
    by_id = {r["id"]: r for r in results}
    assert by_id["q-left"]["status"] == "accepted"
    assert by_id["q-left"]["route"]["state"] == "left"
    assert [a["type"] for a in by_id["q-left"]["actions"]] == ["route", "screen", "reminder"]
    assert (by_id["q-reg"]["status"], by_id["q-reg"]["reason"]) == ("rejected", "unauthorized_emitter")
    assert (by_id["q-left-bad"]["status"], by_id["q-left-bad"]["reason"]) == ("rejected", "invalid_payload")
    assert out.stderr.strip() == "1 accepted, 0 duplicate, 2 rejected; 1 left the quarantine"

    # the accepted one left the quarantine, kept and marked; the others stay, with their new reason
    still = json_lines(run_cli("rejections", "--db", str(db), "--format", "json"))
    assert [(e["id"], e["reason"]) for e in still] == [("q-reg", "unauthorized_emitter"),
                                                       ("q-left-bad", "invalid_payload")]
    resolved = json_lines(run_cli("rejections", "--db", str(db), "--format", "json", "--state", "resolved"))
    assert [e["id"] for e in resolved] == ["q-left"]
    admitted_by = rows(db, "SELECT seq, origin, status, fact_seq FROM inputs WHERE seq = ?",
                       resolved[0]["resolved_by_input"])
    assert admitted_by == [(resolved[0]["resolved_by_input"], f"rejection:{resolved[0]['seq']}", "accepted",
                            admitted_by[0][3])]
    assert rows(db, "SELECT seq, raw FROM rejections ORDER BY seq") == before  # nothing deleted
    route = json.loads(run_cli("route", "--lead", "l1", "--webinar", "w1", "--db", str(db)).stdout)
    assert [h["to"] for h in route["history"]] == ["in_webinar", "left"]

    again = json_lines(run_cli("reprocess", "--config", str(config_copy), "--db", str(db)))
    assert [r["id"] for r in again] == ["q-reg", "q-left-bad"]


def test_reprocess_filters_and_duplicates_leave_the_quarantine(run_cli, tmp_path, config_copy):
    event = left(id="q-left")
    db = processed(run_cli, tmp_path, entered(id="e1"), event, registered(lead="l2", id="q-reg"))
    approve_left(config_copy)
    run_cli("process", "--config", str(config_copy), "--db", str(db), input=jsonl(event))  # resent, now accepted
    only = json_lines(run_cli("reprocess", "--config", str(config_copy), "--db", str(db), "--type",
                              "client_webinar_left"))
    assert [(r["id"], r["status"], r["reason"]) for r in only] == [("q-left", "duplicate", "same_envelope")]
    assert [e["id"] for e in json_lines(run_cli("rejections", "--db", str(db), "--format", "json"))] == ["q-reg"]


def test_reprocess_leaves_truncated_rejections(run_cli, tmp_path):
    big = completed(id="big", session="x" * 400)
    db = processed(run_cli, tmp_path, big, left(id="q-left"), max_event_bytes="300")
    out = run_cli("reprocess", "--db", str(db), "--reason", "too_large")
    [result] = json_lines(out)
    assert (result["rejection"], result["status"], result["reason"]) == (1, "rejected", "too_large")
    assert result["errors"][0]["code"] == "not_reprocessable"
    assert "rejection 1 (too_large) cannot be reprocessed" in out.stderr
    assert "1 truncated, not reprocessable" in out.stderr
    assert rows(db, "SELECT reason, truncated, resolved_at FROM rejections WHERE seq = 1") == [("too_large", 1, None)]
    assert rows(db, "SELECT count(*) FROM inputs") == [(2,)]  # nothing was run


def test_reprocess_from_the_api(open_engine, config_copy):
    eng = open_engine()
    eng.process_many([entered(id="e1"), left(id="q-left")])
    eng.close()
    eng = open_engine(config=approve_left(config_copy))
    [result] = eng.reprocess(sources=[TRACKER])
    assert (result["rejection"], result["status"]) == (1, "accepted")
    assert eng.rejections() == [] and [r["id"] for r in eng.rejections(state="all")] == ["q-left"]


# -- purge --------------------------------------------------------------------------------------------

def test_nothing_is_deleted_without_purge_and_purge_says_how_many(run_cli, tmp_path):
    db = processed(run_cli, tmp_path, *QUARANTINE)
    count = "SELECT count(*) FROM rejections"
    for args in (["rejections"], ["rejections", "--format", "json"], ["reprocess"]):
        assert run_cli(*args, "--db", str(db)).exit_code == 0
    assert rows(db, count) == [(5,)]

    refused = run_cli("rejections", "--db", str(db), "--purge")
    assert refused.exit_code == 2 and "purge needs a filter" in refused.output
    both = run_cli("rejections", "--db", str(db), "--purge", "--all", "--reason", "malformed_json")
    assert both.exit_code == 2
    assert run_cli("rejections", "--db", str(db), "--all").exit_code == 2
    assert rows(db, count) == [(5,)]
    logged = rows(db, "SELECT * FROM inputs")

    out = run_cli("rejections", "--db", str(db), "--purge", "--reason", "unauthorized_emitter")
    assert out.exit_code == 0 and out.stderr.strip() == "purged 2 rejection(s)" and out.stdout == ""
    assert rows(db, "SELECT reason FROM rejections ORDER BY seq") == [("malformed_json",), ("invalid_payload",),
                                                                      ("malformed_json",)]
    assert rows(db, "SELECT * FROM inputs") == logged  # the input log keeps its rows
    out = run_cli("rejections", "--db", str(db), "--purge", "--all")
    assert out.stderr.strip() == "purged 3 rejection(s)" and rows(db, count) == [(0,)]


def test_purge_all_keeps_resolved_ones_unless_asked(run_cli, tmp_path, config_copy):
    db = processed(run_cli, tmp_path, entered(id="e1"), left(id="q-left"), registered(lead="l2", id="q-reg"))
    run_cli("reprocess", "--config", str(approve_left(config_copy)), "--db", str(db))
    assert run_cli("rejections", "--db", str(db), "--purge", "--all").stderr.strip() == "purged 1 rejection(s)"
    assert rows(db, "SELECT id FROM rejections") == [("q-left",)]
    assert run_cli("rejections", "--db", str(db), "--purge", "--state", "resolved").stderr.strip() == \
        "purged 1 rejection(s)"


# -- schema migration ---------------------------------------------------------------------------------

def _version_1(path: Path, source: Path) -> None:
    """A database at schema version 1 (the first migration only), holding `source`'s rows."""
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m0002_quarantine")
    db.execute("PRAGMA user_version = 1")
    conn = db.conn
    conn.execute("ATTACH DATABASE ? AS src", (str(source),))
    for table in ("facts", "envelopes", "rejections", "inputs", "routes", "route_history", "actions", "evaluations"):
        columns = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
        conn.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM src.{table}")
    conn.commit()
    conn.execute("DETACH DATABASE src")
    db.close()


def test_a_version_1_database_is_upgraded_in_place(run_cli, tmp_path, config_copy):
    source = processed(run_cli, tmp_path, entered(id="e1"), left(id="q-left"), registered(lead="l2", id="q-reg"))
    old = tmp_path / "v1.db"
    _version_1(old, source)
    assert rows(old, "PRAGMA user_version") == [(1,)]
    assert "resolved_at" not in {r[1] for r in rows(old, "PRAGMA table_info(rejections)")}
    before = digest(old)

    listed = json_lines(run_cli("rejections", "--db", str(old), "--format", "json"))
    assert [e["id"] for e in listed] == ["q-left", "q-reg"]
    assert rows(old, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert {"resolved_at", "resolved_by_input"} <= {r[1] for r in rows(old, "PRAGMA table_info(rejections)")}
    from engine.store.sqlite_migrations import migrations

    applied = [r[0] for r in rows(old, "SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert applied[:4] == ["m0001_initial", "m0002_quarantine", "m0003_history_by_fact", "m0004_outbox"]
    assert len(applied) == SCHEMA_VERSION == len(migrations._migrations)
    indexes = {r[0] for r in rows(old, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "route_history_fact" in indexes and "route_history_key" not in indexes
    assert digest(old) == before  # every row kept
    route = json.loads(run_cli("route", "--lead", "l1", "--webinar", "w1", "--db", str(old)).stdout)
    assert [(h["from"], h["to"], h["event"]["id"]) for h in route["history"]] == [("new", "in_webinar", "e1")]
    results = json_lines(run_cli("reprocess", "--config", str(approve_left(config_copy)), "--db", str(old)))
    assert [r["status"] for r in results] == ["accepted", "rejected"]


# -- replay ---------------------------------------------------------------------------------------------

HISTORY = [
    entered(id="h1"),                                          # l1 in_webinar
    completed(id="h2"),                                        # l1 completed; attended = true
    form_submitted(id="h3"),                                   # l1 form_submitted
    entered(lead="l2", id="h4"),                               # l2 in_webinar
    form_submitted(lead="l2", session="s2", id="h5"),          # accepted; no transition from in_webinar
    left(lead="l2", id="h6"),                                  # unauthorized_emitter
    completed(id="h2"),                                        # duplicate, same_envelope
    registered(lead="l3", id="h8", source="landing"),          # unauthorized_emitter
]


@pytest.fixture
def history(run_cli, tmp_path) -> Path:
    db = processed(run_cli, tmp_path, *HISTORY)
    out = run_cli("evaluate", "--webinar", "w1", "--at", T_EVAL, "--db", str(db))  # l2: attended = false
    assert [json.loads(line)["attended"] for line in out.stdout.splitlines()] == [True, False]
    return db


def replay_report(run_cli, db: Path, *args: str) -> dict[str, Any]:
    before = (sha(db), digest(db))
    out = run_cli("replay", "--db", str(db), "--format", "json", *args)
    assert out.exit_code == 0, out.output
    assert (sha(db), digest(db)) == before, "replay changed the live database"
    return json.loads(out.stdout)


def test_replay_under_the_live_config_reports_no_difference(run_cli, history):
    report = replay_report(run_cli, history)
    assert report["identical"] is True
    assert report["replayed"] == {"inputs": 8, "evaluations": 2, "unavailable": 0}
    assert report["outcomes"]["changed"] == 0 and report["outcomes"]["transitions"] == []
    assert report["routes"]["count"] == 0 and report["classifications"]["count"] == 0
    text = run_cli("replay", "--db", str(history))
    assert text.exit_code == 0 and text.stdout.splitlines()[-1] == "no differences"


def test_replay_fail_on_change_gates_a_config_change(run_cli, history, config_copy):
    same = run_cli("replay", "--db", str(history), "--fail-on-change")
    assert same.exit_code == 0 and same.stdout.splitlines()[-1] == "no differences"
    edit(config_copy, "emitters.yaml", "      client_webinar_form_submitted: planned\n", "")
    changed = run_cli("replay", "--db", str(history), "--config", str(config_copy), "--fail-on-change",
                      "--format", "json")
    assert changed.exit_code == 1 and json.loads(changed.stdout)["identical"] is False
    assert run_cli("replay", "--db", str(history), "--config", str(config_copy)).exit_code == 0


def test_replay_without_the_trackers_form_permission(run_cli, history, config_copy):
    edit(config_copy, "emitters.yaml", "      client_webinar_form_submitted: planned\n", "")
    report = replay_report(run_cli, history, "--config", str(config_copy))
    outcomes = report["outcomes"]
    assert report["identical"] is False
    assert outcomes["changed"] == 2
    assert outcomes["newly_rejected"] == {"count": 2, "by_reason": {"unauthorized_emitter": 2}}
    assert outcomes["newly_accepted"] == {"count": 0, "by_reason": {}}
    [transition] = outcomes["transitions"]
    assert (transition["live"], transition["replay"], transition["count"]) == \
        ("accepted", "rejected:unauthorized_emitter", 2)
    assert [(e["input"], e["id"], e["key"]) for e in transition["examples"]] == [
        (3, "h3", {"lead_id": "l1", "webinar_id": "w1"}), (5, "h5", {"lead_id": "l2", "webinar_id": "w1"})]
    assert report["routes"] == {"count": 1, "examples": [{
        "key": {"lead_id": "l1", "webinar_id": "w1"},
        "live": {"state": "form_submitted", "screen": "post_webinar_thanks"},
        "replay": {"state": "completed", "screen": "post_webinar_form"}}]}
    assert report["classifications"]["count"] == 0

    text = run_cli("replay", "--db", str(history), "--config", str(config_copy), "--examples", "1").stdout
    assert "newly rejected: 2 (unauthorized_emitter: 2)" in text
    assert "accepted -> rejected:unauthorized_emitter: 2" in text
    assert text.count("input #") == 1
    assert "lead_id=l1, webinar_id=w1: live form_submitted (post_webinar_thanks), replay completed " \
           "(post_webinar_form)" in text


def test_replay_with_left_approved(run_cli, history, config_copy):
    report = replay_report(run_cli, history, "--config", str(approve_left(config_copy)))
    outcomes = report["outcomes"]
    assert outcomes["newly_accepted"] == {"count": 1, "by_reason": {"unauthorized_emitter": 1}}
    assert outcomes["newly_rejected"]["count"] == 0
    assert [(t["live"], t["replay"], [e["id"] for e in t["examples"]]) for t in outcomes["transitions"]] == \
        [("rejected:unauthorized_emitter", "accepted", ["h6"])]
    assert [(e["key"]["lead_id"], e["live"]["state"], e["replay"]["state"]) for e in report["routes"]["examples"]] \
        == [("l2", "in_webinar", "left")]
    assert report["classifications"]["count"] == 0  # l2 entered and did not complete either way


def test_replay_with_a_changed_rule_reports_classifications(run_cli, history, config_copy):
    edit(config_copy, "rules/attendance.yaml", "      has: [client_webinar_entered]\n",
         "      has: [client_webinar_left]\n")
    report = replay_report(run_cli, history, "--config", str(config_copy))
    assert report["outcomes"]["changed"] == 0 and report["routes"]["count"] == 0
    assert report["classifications"] == {
        "event": "client_webinar_attendance_classified", "field": "attended", "count": 1,
        "examples": [{"key": {"lead_id": "l2", "webinar_id": "w1"}, "live": False, "replay": None}]}


def test_replay_keeps_a_scratch_database_on_request(run_cli, history, tmp_path):
    scratch = tmp_path / "what-if.db"
    report = replay_report(run_cli, history, "--scratch", str(scratch))
    assert report["scratch"] == str(scratch) and report["identical"]
    assert digest(scratch) == digest(history)  # the same history gives the same state
    again = run_cli("replay", "--db", str(history), "--scratch", str(scratch))
    assert again.exit_code == 2 and "exists already" in again.output


def test_replay_reports_inputs_whose_bytes_were_purged(run_cli, history):
    run_cli("rejections", "--db", str(history), "--purge", "--emitter", "landing")
    report = replay_report(run_cli, history)
    assert report["replayed"]["unavailable"] == 1 and report["identical"] is False
    assert [e["id"] for e in report["unavailable"]["examples"]] == ["h8"]


def test_replay_of_a_missing_database_fails(run_cli, tmp_path):
    out = run_cli("replay", "--db", str(tmp_path / "nope.db"))
    assert out.exit_code == 1 and "no such database file" in out.output
    assert not (tmp_path / "nope.db").exists()


# -- explain ----------------------------------------------------------------------------------------------

STORY = [
    entered(id="s1"),
    completed(id="s2"),
    completed(id="s2"),                                  # duplicate, same_envelope
    completed(id="s3", session="s9"),                    # a second completion: no second classification
    left(id="s4"),                                       # unauthorized_emitter, names l1/w1
    entered(lead="l2", id="s5"),
    entered(lead="l3", id="s6"),
]


@pytest.fixture
def story_db(run_cli, tmp_path) -> Path:
    db = processed(run_cli, tmp_path, *STORY)
    for lead in ("l1", "l2"):
        assert run_cli("evaluate", "--webinar", "w1", "--lead", lead, "--at", T_EVAL, "--db", str(db)).exit_code == 0
    return db


def test_explain_tells_why_a_classification_was_or_was_not_emitted(run_cli, story_db):
    out = run_cli("explain", "--lead", "l1", "--webinar", "w1", "--db", str(story_db))
    assert out.exit_code == 0, out.output
    text = out.stdout
    steps = [line for line in text.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert [s.split("  ", 1)[1].split(":")[0] for s in steps] == [
        "input #1, line 1", "input #2, line 2", "input #3, line 3", "input #4, line 4", "input #5, line 5",
        "evaluation #1 at 2026-02-02T00"]
    assert "rule attended_on_completion fired: client_webinar_attendance_classified" in text
    assert "rule route_after_classification fired: post_webinar_route" in text
    assert "rule attended_on_completion did not fire: a client_webinar_attendance_classified fact with " \
           "attended=True exists" in text
    assert "rule not_attended_on_evaluation did not fire: a client_webinar_completed fact exists" in text
    assert "duplicate (same_envelope): nothing changed" in text
    assert "rejected: unauthorized_emitter" in text
    assert "route new -> in_webinar" in text and "route in_webinar -> completed" in text
    assert "actions: route in_webinar -> completed; screen post_webinar_form; reminder submit_post_webinar_form" \
        in text
    assert "route now: completed (screen post_webinar_form)" in text
    assert "classification now: attended = true" in text


def test_explain_json(run_cli, story_db):
    story = json.loads(run_cli("explain", "--lead", "l1", "--webinar", "w1", "--db", str(story_db),
                               "--format", "json").stdout)
    assert story["key"] == {"lead_id": "l1", "webinar_id": "w1"}
    assert [(s["step"], s["kind"], s.get("status"), s.get("reason")) for s in story["story"]] == [
        (1, "input", "accepted", None), (2, "input", "accepted", None), (3, "input", "duplicate", "same_envelope"),
        (4, "input", "accepted", None), (5, "input", "rejected", "unauthorized_emitter"),
        (6, "evaluation", None, None)]
    completion = story["story"][1]
    assert [(v["rule"], v["fired"]) for v in completion["rules"]] == [("attended_on_completion", True),
                                                                      ("route_after_classification", True)]
    assert completion["rules"][0]["emitted"]["data"]["attended"] is True
    assert completion["route_change"]["from"] == "in_webinar" and completion["route_change"]["to"] == "completed"
    assert [a["type"] for a in completion["actions"]] == ["route", "screen", "reminder"]
    assert story["story"][4]["errors"][0]["code"] == "unauthorized_emitter"
    evaluation = story["story"][5]
    assert evaluation["evaluated_at"] == T_EVAL
    assert evaluation["rules"] == [{"rule": "not_attended_on_evaluation", "on": "evaluation", "fired": False,
                                    "why_not": "a client_webinar_completed fact exists"}]
    assert story["classification"]["value"] is True
    assert (story["route"]["state"], story["route"]["screen"]) == ("completed", "post_webinar_form")


def test_explain_an_evaluation_that_fired_and_one_that_would(run_cli, story_db):
    l2 = json.loads(run_cli("explain", "--lead", "l2", "--webinar", "w1", "--db", str(story_db),
                            "--format", "json").stdout)
    fired = l2["story"][-1]["rules"]
    assert [(v["rule"], v["fired"]) for v in fired] == [("not_attended_on_evaluation", True),
                                                        ("route_after_classification", True)]
    assert l2["classification"]["value"] is False
    assert l2["if_evaluated_now"] == [{"rule": "not_attended_on_evaluation", "would_fire": False,
                                       "why_not": "a client_webinar_attendance_classified fact exists"}]
    l3 = run_cli("explain", "--lead", "l3", "--webinar", "w1", "--db", str(story_db)).stdout
    assert "classification now: attended = none" in l3
    assert "an evaluation now: rule not_attended_on_evaluation would fire" in l3


def test_explain_shows_a_reprocessed_rejection(run_cli, story_db, config_copy):
    run_cli("reprocess", "--config", str(approve_left(config_copy)), "--db", str(story_db))
    text = run_cli("explain", "--lead", "l1", "--webinar", "w1", "--db", str(story_db)).stdout
    assert "left the quarantine at" in text
    assert "input #8, reprocessing rejection #1: client_webinar_left s4" in text
    assert "left the quarantine at" in text and "(input #8)" in text


def test_explain_of_an_unknown_lead_exits_1(run_cli, story_db):
    out = run_cli("explain", "--lead", "nobody", "--webinar", "w1", "--db", str(story_db))
    assert out.exit_code == 1 and "nothing is known about lead 'nobody' on webinar 'w1'" in out.output


def test_explain_from_the_api(open_engine):
    eng: Engine = open_engine()
    eng.process(entered(id="a1"))
    assert eng.explain(lead_id="l1", webinar_id="w9") is None
    assert [s["input"] for s in eng.explain(lead_id="l1", webinar_id="w1")["story"]] == [1]


def test_explain_finds_rejections_that_spell_the_key_with_escapes_or_another_encoding(open_engine):
    """A producer may write "l1" as "l\\u0031", or send UTF-16; the rejection still belongs to l1."""
    eng: Engine = open_engine()
    eng.process(entered(id="k1"))
    escaped = json.dumps(left(id="k2")).replace('"l1"', '"l\\u0031"').encode()  # left: unauthorized_emitter
    utf16 = json.dumps(entered(id="k3")).encode("utf-16")                       # malformed_json (not UTF-8)
    other = json.dumps(left(lead="l2", id="k4")).replace('"l2"', '"l\\u0032"').encode()
    assert [eng.process(raw)["reason"] for raw in (escaped, utf16, other)] == \
        ["unauthorized_emitter", "malformed_json", "unauthorized_emitter"]
    story = eng.explain(lead_id="l1", webinar_id="w1")["story"]
    assert [(s["input"], s["status"]) for s in story] == [(1, "accepted"), (2, "rejected"), (3, "rejected")]
