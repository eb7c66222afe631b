"""Properties that hold for any stream: random order, duplicates, garbage, any batching.

Streams are drawn over a small universe of leads, webinars, sessions and instants, so that
duplicates, conflicts and every route transition actually happen. A stateful test runs the
engine beside a small reference model of the spec's rules and the route table, written
here independently of the engine, and compares them after every step.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dbstate import snapshot
from engine import Engine
from collections import Counter

TRACKER = "client-webinar-tracker-v2"
PAGE = "registration-page"
LEADS = ["l1", "l2"]
WEBINARS = ["w1", "w2"]
SESSIONS = ["s1", "s2"]
# Two spellings of one instant, and one other instant.
TIMES = ["2026-02-01T18:00:00Z", "2026-02-01T19:00:00+01:00", "2026-02-01T18:30:00Z"]
TYPES = ["client_webinar_registered", "client_webinar_entered", "client_webinar_left",
         "client_webinar_completed", "client_webinar_form_submitted"]
# The default config's route table (states.yaml, drawn in docs/contract.md), restated for the reference model.
TABLE = {
    ("new", "client_webinar_registered"): "registered",
    **{(s, "client_webinar_entered"): "in_webinar" for s in ("new", "registered", "left")},
    ("in_webinar", "client_webinar_left"): "left",
    **{(s, "client_webinar_completed"): "completed" for s in ("new", "registered", "in_webinar", "left")},
    **{(s, "client_webinar_form_submitted"): "form_submitted" for s in ("completed", "form_submitted")},
}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def approved_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default config plus an approved emitter for registration and leaving."""
    from engine.config.locate import bundled_config

    src = bundled_config()
    target = tmp_path_factory.mktemp("config")
    for name in ("events.yaml", "states.yaml"):
        (target / name).write_bytes((src / name).read_bytes())
    (target / "rules").mkdir()
    for f in (src / "rules").iterdir():
        (target / "rules" / f.name).write_bytes(f.read_bytes())
    emitters = (src / "emitters.yaml").read_text()
    emitters += (f"  {PAGE}:\n    kind: web_page\n    events:\n"
                 "      client_webinar_registered: implemented\n      client_webinar_left: implemented\n")
    (target / "emitters.yaml").write_text(emitters)
    return target


def make_event(type_: str, lead: str | None, webinar: str, session: str, time: str, id_: str) -> dict[str, Any]:
    base: dict[str, Any] = {"webinar_id": webinar}
    if lead is not None:
        base["lead_id"] = lead
    data = {
        "client_webinar_registered": lambda: {**base, "webinar_type": "live", "registered_at": time, "source": "ads"},
        "client_webinar_entered": lambda: {**base, "timestamp": time},
        "client_webinar_left": lambda: {**base, "webinar_type": "live", "session_id": session, "left_at": time,
                                        "leave_reason": "user_exit"},
        "client_webinar_completed": lambda: {**base, "webinar_type": "auto", "session_id": session,
                                             "completed_at": time},
        "client_webinar_form_submitted": lambda: {**base, "webinar_type": "auto", "session_id": session,
                                                  "submitted_at": time, "form_id": "f1", "form_payload": {"a": 1}},
    }[type_]()
    source = PAGE if type_ in ("client_webinar_registered", "client_webinar_left") else TRACKER
    return {"specversion": "1.0", "id": id_, "source": source, "type": type_, "data": data}


fresh = st.tuples(st.just("new"), st.sampled_from(TYPES), st.sampled_from([*LEADS, None]),
                  st.sampled_from(WEBINARS), st.sampled_from(SESSIONS), st.sampled_from(TIMES))
ops = st.one_of(
    fresh, fresh, fresh,
    st.tuples(st.just("resend"), st.integers(0, 50)),
    st.tuples(st.just("newid"), st.integers(0, 50)),
    st.tuples(st.just("conflict"), st.integers(0, 50)),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("internal"), st.sampled_from(LEADS)),
    st.tuples(st.just("badpayload"), st.sampled_from(LEADS)),
)


def materialise(drawn: list[tuple]) -> list[bytes]:
    """Turn drawn operations into input lines; references to earlier events wrap around."""
    lines: list[bytes] = []
    events: list[dict[str, Any]] = []
    for i, op in enumerate(drawn):
        kind = op[0]
        if kind == "new" or (kind in ("resend", "newid", "conflict") and not events):
            t, lead, web, session, time = op[1:] if kind == "new" else (TYPES[1], "l1", "w1", "s1", TIMES[0])
            event = make_event(t, lead, web, session, time, f"e{i}")
            events.append(event)
        elif kind == "resend":
            event = events[op[1] % len(events)]
        elif kind == "newid":
            event = {**events[op[1] % len(events)], "id": f"e{i}"}
        elif kind == "conflict":
            old = events[op[1] % len(events)]
            event = {**old, "data": {**old["data"], "webinar_id": "w-other"}}
        elif kind == "garbage":
            lines.append(op[1] or b"{")
            continue
        elif kind == "internal":
            event = {"specversion": "1.0", "id": f"e{i}", "source": "attendance-classifier",
                     "type": "client_webinar_attendance_classified",
                     "data": {"lead_id": op[1], "webinar_id": "w1", "attended": True, "timestamp": TIMES[0]}}
        else:
            event = make_event("client_webinar_completed", op[1], "w1", "s1", "not-a-time", f"e{i}")
        lines.append(json.dumps(event).encode())
    return lines


def run(config: Path, db: Path, parts: list[list[bytes]], batch_size: int = 1) -> list[dict[str, Any]]:
    results = []
    for part in parts:
        with Engine.open(config=config, db=db) as eng:
            results += eng.process_many(part, batch_size=batch_size)
    return results


def classifications(db: Path) -> dict[str, list[bool]]:
    conn = sqlite3.connect(db)
    out: dict[str, list[bool]] = {}
    for key, data in conn.execute("SELECT route_key, data FROM facts WHERE type = "
                                  "'client_webinar_attendance_classified' ORDER BY seq"):
        out.setdefault(key, []).append(json.loads(data)["attended"])
    conn.close()
    return out


@SETTINGS
@given(st.lists(ops, min_size=1, max_size=40))
def test_every_input_gets_one_result_and_invariants_hold(approved_config: Path, drawn: list[tuple]) -> None:
    lines = materialise(drawn)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "p.db"
        results = run(approved_config, db, [lines])
        assert len(results) == len(lines)
        statuses = [r["status"] for r in results]
        assert statuses.count("accepted") + statuses.count("duplicate") + statuses.count("rejected") == len(lines)
        for r in results:
            assert (r["reason"] is None) == (r["status"] == "accepted")
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM inputs").fetchone()[0] == len(lines)
        rejected = conn.execute("SELECT count(*) FROM inputs WHERE status = 'rejected'").fetchone()[0]
        assert rejected == statuses.count("rejected")
        assert conn.execute("SELECT count(*) FROM inputs i LEFT JOIN rejections r ON r.seq = i.rejection_seq"
                            " WHERE i.status = 'rejected' AND r.seq IS NULL").fetchone()[0] == 0
        for before, after, trigger in conn.execute("SELECT from_state, to_state, event_type FROM route_history"):
            assert TABLE[(before, trigger)] == after
        conn.close()
        for values in classifications(db).values():
            assert len(values) == len(set(values)), "a classification value was emitted twice"
            assert values in ([True], [False], [False, True]), f"classified {values}"


@SETTINGS
@given(st.lists(ops, min_size=1, max_size=30), st.lists(st.integers(1, 29), max_size=3),
       st.sampled_from([1, 2, 3, 7, 100]))
def test_same_final_state_however_the_stream_is_cut(approved_config: Path, drawn: list[tuple],
                                                   cuts: list[int], batch_size: int) -> None:
    lines = materialise(drawn)
    points = sorted({c for c in cuts if c < len(lines)})
    parts = [lines[a:b] for a, b in zip([0, *points], [*points, len(lines)], strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        one, many, batched = Path(tmp) / "one.db", Path(tmp) / "many.db", Path(tmp) / "batched.db"
        whole = run(approved_config, one, [lines])
        split = run(approved_config, many, parts)
        grouped = run(approved_config, batched, [lines], batch_size=batch_size)
        assert grouped == whole
        assert [r["status"] for r in split] == [r["status"] for r in whole]
        assert snapshot(many) == snapshot(one)
        assert snapshot(batched) == snapshot(one)


class Model:
    """The spec's rules, independently: facts, dedupe, route table, classification."""

    def __init__(self) -> None:
        self.envelopes: dict[tuple[str, str], str] = {}
        self.identities: set[tuple] = set()
        self.facts: dict[tuple[str, str], list[str]] = {}
        self.routes: dict[tuple[str, str], str] = {}
        self.classified: dict[tuple[str, str], list[bool]] = {}

    @staticmethod
    def _instant(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)

    def identity(self, event: dict[str, Any]) -> tuple | None:
        d, t = event["data"], event["type"]
        if "lead_id" not in d:
            return None
        if t == "client_webinar_registered":
            return (t, d["lead_id"], d["webinar_id"])
        if t == "client_webinar_entered":
            return (t, d["lead_id"], d["webinar_id"], self._instant(d["timestamp"]))
        if t == "client_webinar_form_submitted":
            return (t, d["lead_id"], d["webinar_id"], d["session_id"], d["form_id"])
        return (t, d["lead_id"], d["webinar_id"], d["session_id"])

    def process(self, event: dict[str, Any]) -> str:
        if "lead_id" not in event["data"] and event["type"] != "client_webinar_entered":
            return "rejected"  # lead_id is required everywhere but on entered
        body = json.dumps(event, sort_keys=True)
        env = (event["source"], event["id"])
        if env in self.envelopes:
            return "duplicate" if self.envelopes[env] == body else "rejected"
        ident = self.identity(event)
        if ident is not None and ident in self.identities:
            return "duplicate"
        self.envelopes[env] = body
        if ident is not None:
            self.identities.add(ident)
        d = event["data"]
        if "lead_id" not in d:
            return "accepted"
        key = (d["lead_id"], d["webinar_id"])
        self.facts.setdefault(key, []).append(event["type"])
        state = self.routes.setdefault(key, "new")
        self.routes[key] = TABLE.get((state, event["type"]), state)
        if event["type"] == "client_webinar_completed" and True not in self.classified.get(key, []):
            self.classified.setdefault(key, []).append(True)
        return "accepted"

    def evaluate(self, webinar: str) -> None:
        for key, types in self.facts.items():
            if key[1] == webinar and "client_webinar_entered" in types and "client_webinar_completed" not in types \
                    and not self.classified.get(key):
                self.classified[key] = [False]


class EngineVersusModel(RuleBasedStateMachine):
    config: Path

    @initialize()
    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.db = Path(self.tmp.name) / "s.db"
        self.engine = Engine.open(config=self.config, db=self.db)
        self.model = Model()
        self.sent: list[dict[str, Any]] = []
        self.answered: Counter[str] = Counter()  # every input sent, by the status the engine answered

    def teardown(self) -> None:
        self.engine.close()
        self.tmp.cleanup()

    def _send(self, event: dict[str, Any]) -> None:
        expected = self.model.process(event)
        result = self.engine.process(event)
        self.answered[result["status"]] += 1
        assert result["status"] == expected, (event, result)
        self.sent.append(event)

    @rule(t=st.sampled_from(TYPES), lead=st.sampled_from([*LEADS, None]), web=st.sampled_from(WEBINARS),
          session=st.sampled_from(SESSIONS), time=st.sampled_from(TIMES))
    def send_new(self, t: str, lead: str | None, web: str, session: str, time: str) -> None:
        self._send(make_event(t, lead, web, session, time, f"n{len(self.sent)}"))

    @precondition(lambda self: self.sent)
    @rule(k=st.integers(0, 100))
    def resend_duplicate(self, k: int) -> None:
        self._send(self.sent[k % len(self.sent)])

    @precondition(lambda self: self.sent)
    @rule(k=st.integers(0, 100))
    def send_out_of_order_same_fact(self, k: int) -> None:
        self._send({**self.sent[k % len(self.sent)], "id": f"r{len(self.sent)}"})

    @rule(garbage=st.binary(max_size=30))
    def send_garbage(self, garbage: bytes) -> None:
        assume(garbage.strip())
        result = self.engine.process(garbage)
        self.answered[result["status"]] += 1
        assert result["status"] == "rejected"

    @rule(lead=st.sampled_from(LEADS))
    def forge_emitter(self, lead: str) -> None:
        event = make_event("client_webinar_completed", lead, "w1", "s1", TIMES[0], f"f{len(self.sent)}")
        result = self.engine.process({**event, "source": "attendance-classifier"})
        self.answered[result["status"]] += 1
        assert (result["status"], result["reason"]) == ("rejected", "unauthorized_emitter")

    @rule(web=st.sampled_from(WEBINARS))
    def evaluate(self, web: str) -> None:
        self.model.evaluate(web)
        self.engine.evaluate(webinar_id=web, at="2026-02-02T00:00:00Z")

    @rule()
    def restart(self) -> None:
        self.engine.close()
        self.engine = Engine.open(config=self.config, db=self.db)

    @rule(ts=st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(LEADS), st.sampled_from(WEBINARS)),
                      min_size=1, max_size=5), size=st.integers(1, 4))
    def batch_through_process_many(self, ts: list[tuple[str, str, str]], size: int) -> None:
        events = [make_event(t, lead, web, "s1", TIMES[2], f"b{len(self.sent)}-{i}") for i, (t, lead, web) in enumerate(ts)]
        expected = [self.model.process(e) for e in events]
        results = self.engine.process_many(events, batch_size=size)
        assert [r["status"] for r in results] == expected
        self.answered.update(expected)
        self.sent += events

    @invariant()
    def routes_and_classifications_match(self) -> None:
        if not hasattr(self, "model"):
            return
        for (lead, web), state in self.model.routes.items():
            assert self.engine.route(lead_id=lead, webinar_id=web)["state"] == state
        got = {tuple(json.loads(k)): v for k, v in classifications(self.db).items()}
        assert got == {k: v for k, v in self.model.classified.items() if v}
        # The input log holds every input sent, once, with the status it was answered.
        conn = sqlite3.connect(self.db)
        try:
            logged = dict(conn.execute("SELECT status, count(*) FROM inputs GROUP BY status").fetchall())
        finally:
            conn.close()
        assert logged == {status: n for status, n in self.answered.items() if n}


@pytest.fixture
def stateful(approved_config: Path) -> type[EngineVersusModel]:
    EngineVersusModel.config = approved_config
    return EngineVersusModel


def test_engine_matches_reference_model(stateful: type[EngineVersusModel]) -> None:
    stateful.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
    stateful.TestCase().runTest()
