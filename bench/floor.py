"""The floor: the tightest pipeline for the default contract, the yardstick of the benchmark.

No generality at all: orjson, fastjsonschema validators, raw sqlite3 with constant SQL,
`INSERT OR IGNORE` + rowcount for dedupe, a `(state, trigger) -> state` dict, the default
rules written out by hand. It does what the engine does to the database for the default
config — input log, envelopes, facts, identities, derived classification and route events,
routes, history, actions, rejections — so that the two can be compared on equal work,
and `check_agreement` proves they reach the same outcome.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import yaml

SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (seq INTEGER PRIMARY KEY, line INTEGER, status TEXT, reason TEXT,
    source TEXT, id TEXT, type TEXT);
CREATE TABLE IF NOT EXISTS envelopes (source TEXT, id TEXT, body BLOB, PRIMARY KEY (source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facts (seq INTEGER PRIMARY KEY, source TEXT, id TEXT, type TEXT, route_key TEXT,
    identity TEXT, body BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS facts_identity ON facts (type, identity) WHERE identity IS NOT NULL;
CREATE INDEX IF NOT EXISTS facts_key ON facts (route_key);
CREATE TABLE IF NOT EXISTS routes (route_key TEXT PRIMARY KEY, state TEXT, screen TEXT, version INTEGER);
CREATE TABLE IF NOT EXISTS route_history (seq INTEGER PRIMARY KEY, route_key TEXT, from_state TEXT,
    to_state TEXT, event_id TEXT);
CREATE TABLE IF NOT EXISTS actions (seq INTEGER PRIMARY KEY, route_key TEXT, fact_seq INTEGER, body BLOB);
CREATE TABLE IF NOT EXISTS rejections (seq INTEGER PRIMARY KEY, raw_sha256 TEXT UNIQUE, raw BLOB, reason TEXT);
"""
TABLE = {
    ("new", "client_webinar_registered"): "registered",
    ("new", "client_webinar_entered"): "in_webinar", ("registered", "client_webinar_entered"): "in_webinar",
    ("left", "client_webinar_entered"): "in_webinar", ("in_webinar", "client_webinar_left"): "left",
    ("new", "client_webinar_completed"): "completed", ("registered", "client_webinar_completed"): "completed",
    ("in_webinar", "client_webinar_completed"): "completed", ("left", "client_webinar_completed"): "completed",
    ("completed", "client_webinar_form_submitted"): "form_submitted",
    ("form_submitted", "client_webinar_form_submitted"): "form_submitted",
}
SCREENS = {"registered": "webinar_waiting_room", "in_webinar": "webinar_room", "left": "webinar_rejoin",
           "completed": "post_webinar_form", "form_submitted": "post_webinar_thanks"}
REMINDERS = {"left": "rejoin_webinar", "completed": "submit_post_webinar_form"}
ALLOWED = {("client-webinar-tracker-v2", "client_webinar_completed"),
           ("client-webinar-tracker-v2", "client_webinar_entered"),
           ("client-webinar-tracker-v2", "client_webinar_form_submitted")}
IDENTITY = {"client_webinar_registered": ("lead_id", "webinar_id"),
            "client_webinar_entered": ("lead_id", "webinar_id", "timestamp"),
            "client_webinar_left": ("lead_id", "webinar_id", "session_id"),
            "client_webinar_completed": ("lead_id", "webinar_id", "session_id"),
            "client_webinar_form_submitted": ("lead_id", "webinar_id", "session_id", "form_id")}
NS = uuid.UUID("6f1c2e0a-4b5d-5e6f-8a9b-0c1d2e3f4a5b")
CLASSIFIED = "client_webinar_attendance_classified"


def _validators(config: Path) -> dict[str, Any]:
    events = yaml.safe_load((config / "events.yaml").read_text())["events"]
    return {name: fastjsonschema.compile(spec["payload"]) for name, spec in events.items()}


class Floor:
    def __init__(self, db: str | Path, config: Path, max_bytes: int = 256 * 1024):
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA cache_size = -65536")
        self.conn.executescript(SCHEMA)
        self.validate = _validators(config)
        self.max_bytes = max_bytes
        self.counts = {"accepted": 0, "duplicate": 0, "rejected": 0}

    def run(self, lines: list[bytes], batch_size: int) -> dict[str, int]:
        ex = self.conn.execute
        for start in range(0, len(lines), batch_size):
            ex("BEGIN IMMEDIATE")
            for n, raw in enumerate(lines[start:start + batch_size], start + 1):
                status, reason, ev = self.one(raw)
                self.counts[status] += 1
                ex("INSERT INTO inputs (line, status, reason, source, id, type) VALUES (?, ?, ?, ?, ?, ?)",
                   (n, status, reason, ev.get("source"), ev.get("id"), ev.get("type")))
            ex("COMMIT")
        return self.counts

    def reject(self, raw: bytes, reason: str) -> tuple[str, str, dict]:
        self.conn.execute("INSERT OR REPLACE INTO rejections (raw_sha256, raw, reason) VALUES (?, ?, ?)",
                          (hashlib.sha256(raw).hexdigest(), raw[:65536], reason))
        return "rejected", reason, {}

    def one(self, raw: bytes) -> tuple[str, str | None, dict]:
        if len(raw) > self.max_bytes:
            return self.reject(raw, "too_large")
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.reject(raw, "malformed_json")
        if not (isinstance(ev, dict) and ev.get("specversion") == "1.0" and isinstance(ev.get("id"), str)
                and isinstance(ev.get("source"), str) and isinstance(ev.get("type"), str)
                and isinstance(ev.get("data"), dict)):
            return self.reject(raw, "invalid_envelope")
        t, data = ev["type"], ev["data"]
        check = self.validate.get(t)
        if check is None:
            return self.reject(raw, "unknown_event")
        if (ev["source"], t) not in ALLOWED:
            return self.reject(raw, "unauthorized_emitter")
        try:
            check(data)
        except fastjsonschema.JsonSchemaException:
            return self.reject(raw, "invalid_payload")
        ex = self.conn.execute
        body = orjson.dumps(ev, option=orjson.OPT_SORT_KEYS)
        if ex("INSERT OR IGNORE INTO envelopes VALUES (?, ?, ?)", (ev["source"], ev["id"], body)).rowcount == 0:
            old = ex("SELECT body FROM envelopes WHERE source = ? AND id = ?", (ev["source"], ev["id"])).fetchone()
            return ("duplicate", "same_envelope", ev) if old[0] == body else self.reject(raw, "id_conflict")
        fields = IDENTITY[t]
        identity = orjson.dumps([data[f] for f in fields]).decode() if all(f in data for f in fields) else None
        key = orjson.dumps([data["lead_id"], data["webinar_id"]]).decode() if "lead_id" in data else None
        cur = ex("INSERT OR IGNORE INTO facts (source, id, type, route_key, identity, body) VALUES (?, ?, ?, ?, ?, ?)",
                 (ev["source"], ev["id"], t, key, identity, body))
        if cur.rowcount == 0:
            return "duplicate", "same_fact", ev
        if key is None:
            return "accepted", None, ev
        fact = cur.lastrowid
        if t == "client_webinar_completed":
            self.classify(ev, data, key)
        row = ex("SELECT state FROM routes WHERE route_key = ?", (key,)).fetchone()
        state = row[0] if row else "new"
        dest = TABLE.get((state, t))
        if dest is None:
            if row is None:
                ex("INSERT INTO routes VALUES (?, 'new', NULL, 0)", (key,))
            return "accepted", None, ev
        ex("INSERT INTO routes VALUES (?, ?, ?, 1) ON CONFLICT (route_key) DO UPDATE SET state = excluded.state,"
           " screen = excluded.screen, version = version + 1", (key, dest, SCREENS.get(dest)))
        ex("INSERT INTO route_history (route_key, from_state, to_state, event_id) VALUES (?, ?, ?, ?)",
           (key, state, dest, ev["id"]))
        actions = [(key, fact, orjson.dumps({"type": "route", "from": state, "to": dest})),
                   (key, fact, orjson.dumps({"type": "screen", "screen": SCREENS[dest]}))]
        if dest in REMINDERS:
            actions.append((key, fact, orjson.dumps({"type": "reminder", "reminder": REMINDERS[dest],
                                                     "context": {"state": dest, "event": {"id": ev["id"]}}})))
        self.conn.executemany("INSERT INTO actions (route_key, fact_seq, body) VALUES (?, ?, ?)", actions)
        return "accepted", None, ev

    def classify(self, ev: dict, data: dict, key: str) -> None:
        ex = self.conn.execute
        true_id = orjson.dumps([data["lead_id"], data["webinar_id"], True]).decode()
        if ex("SELECT 1 FROM facts WHERE type = ? AND identity = ?", (CLASSIFIED, true_id)).fetchone():
            return
        payload = {"lead_id": data["lead_id"], "webinar_id": data["webinar_id"], "attended": True,
                   "timestamp": data["completed_at"]}
        cid = str(uuid.uuid5(NS, f"attended|{ev['source']}|{ev['id']}"))
        ex("INSERT INTO facts (source, id, type, route_key, identity, body) VALUES (?, ?, ?, ?, ?, ?)",
           ("attendance-classifier", cid, CLASSIFIED, key, true_id, orjson.dumps(payload)))
        route = {**payload, "status": "attended"}
        ex("INSERT INTO facts (source, id, type, route_key, identity, body) VALUES (?, ?, ?, ?, ?, ?)",
           ("post-webinar-routing-service", str(uuid.uuid5(NS, f"route|{cid}")), "post_webinar_route", key,
            orjson.dumps([data["lead_id"], data["webinar_id"], "attended"]).decode(), orjson.dumps(route)))

    def routes(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT route_key, state FROM routes"))

    def close(self) -> None:
        self.conn.close()
