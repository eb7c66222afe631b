"""The floors: the tightest pipelines for the default contract, the yardsticks of the benchmark.

A floor is the tightest way a competent engineer would hand-write the same outcome for the
default config, not a copy of the engine's design: a floor that writes what the engine writes
measures nothing. No generality at all: orjson, fastjsonschema validators, raw sqlite3 with
constant SQL, WAL, `synchronous=NORMAL`, `INSERT OR IGNORE` + rowcount for dedupe, a
`(state, trigger) -> state` dict, the default rules by hand.

`Floor` (the tight floor, the benchmark's yardstick) keeps everything the contract promises —
the outcome of every line, the facts, routes, history, the outbox (one item per derived event
and per action, with the engine's stable ids) and every rejected line's bytes exactly, with its
reason and error — and writes each of them once:

- **one input row per line**, holding the line's raw bytes (so a rejection is kept byte-exact
  in its own row, and an accepted event's envelope is its line); its `(source, id)` columns,
  set only on the row that claims an envelope, are the envelope dedupe index;
- **facts** refer to their input row instead of copying the payload (a derived fact holds its
  own id and data);
- **history** is keyed by the fact that moved the route (at most one change per fact);
- **the outbox** holds one row per item — its position in commit order, the fact it hangs on,
  its type and (for an action) its stable id — and no copy of what the facts and history
  already hold: an item's CloudEvent is put together when it is read (`outbox()`);
- no config hash in any row (one config), times as integer microseconds, statuses as small
  integers, no screen column (the screen is a function of the state in the default config).

`LooseFloor` is the floor as written until issue 12: it writes what the engine wrote
(canonical envelopes beside an input log, payload copies in facts, an actions table, hashed
rejections) but no outbox, and its derived ids are not the engine's; `bench/run.py` keeps it
as a second column, to show how much of the gap is bytes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import yaml

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
ROUTED = "post_webinar_route"
COMPLETED = "client_webinar_completed"
DERIVED_SOURCE = {CLASSIFIED: "attendance-classifier", ROUTED: "post-webinar-routing-service"}
MAX_BYTES = 256 * 1024
KEEP_BYTES = 64 * 1024  # what is kept of a line over MAX_BYTES, as the engine keeps it
ACCEPTED, DUPLICATE, REJECTED = 0, 1, 2
STATUS = ("accepted", "duplicate", "rejected")


def _validators(config: Path) -> dict[str, Any]:
    events = yaml.safe_load((config / "events.yaml").read_text())["events"]
    return {name: fastjsonschema.compile(spec["payload"]) for name, spec in events.items()}


_NS = NS.bytes


def stable_id(name: str, source: str, event_id: str) -> str:
    """uuid5(NS, '["name","source","id"]'): the engine's id of a derived event (name = the rule)
    or of an action (name = "#action/<position>"), so that both sides' outbox items agree."""
    d = bytearray(hashlib.sha1(_NS + orjson.dumps([name, source, event_id])).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x50
    d[8] = (d[8] & 0x3F) | 0x80
    h = d.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (seq INTEGER PRIMARY KEY, source TEXT, id TEXT, status INTEGER NOT NULL,
    reason TEXT, errors BLOB, raw BLOB NOT NULL, at INTEGER NOT NULL, UNIQUE (source, id));
CREATE TABLE IF NOT EXISTS facts (seq INTEGER PRIMARY KEY, input INTEGER NOT NULL, type TEXT NOT NULL,
    route_key TEXT, identity TEXT, id TEXT, data BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS facts_identity ON facts (type, identity) WHERE identity IS NOT NULL;
CREATE INDEX IF NOT EXISTS facts_key ON facts (route_key) WHERE route_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS routes (route_key TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (fact INTEGER PRIMARY KEY, from_state TEXT NOT NULL, to_state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, fact INTEGER NOT NULL, type TEXT NOT NULL, id TEXT);
"""
# inputs: one row per line. `raw` is the line's bytes (the first 64 KiB of one too large); `source`
#   and `id` are set only on the row that claims an envelope (accepted, or a same-fact duplicate),
#   so UNIQUE (source, id) is the envelope dedupe index (NULLs never collide). `at`: µs since epoch.
# facts: an input fact refers to its input row (its payload is that row's line); a derived fact
#   holds its id and data, and `input` names the line that caused it.
# history: the route change a fact made, keyed by that fact (its route key and time come through it).
# outbox: one row per item in commit order. A derived event's row points at its fact; an action's at
#   the fact that caused it, with its stable id; the item's body is the fact, the history row and
#   the input line put together (see `outbox()`).


class Floor:
    """The tight floor: the same outcome as the engine, each fact written once."""

    def __init__(self, db: str | Path, config: Path, max_bytes: int = MAX_BYTES):
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA cache_size = -65536")
        self.conn.execute("PRAGMA wal_autocheckpoint = 10000")  # as the engine: fewer checkpoints of hot pages
        self.conn.executescript(SCHEMA)
        self.validate = _validators(config)
        self.max_bytes = max_bytes
        self.counts = {"accepted": 0, "duplicate": 0, "rejected": 0}

    def run(self, lines: list[bytes], batch_size: int) -> dict[str, int]:
        ex = self.conn.execute
        counts = self.counts
        one = self.one
        for start in range(0, len(lines), batch_size):
            ex("BEGIN IMMEDIATE")
            for raw in lines[start:start + batch_size]:
                counts[STATUS[one(raw, time.time_ns() // 1000)]] += 1
            ex("COMMIT")
        return counts

    def reject(self, raw: bytes, reason: str, at: int, path: str = "", message: str = "") -> int:
        """A rejected line keeps its bytes, its reason and its error (the contract promises all three)."""
        errors = orjson.dumps([{"path": path, "message": message or reason}])
        self.conn.execute("INSERT INTO inputs (status, reason, errors, raw, at) VALUES (2, ?, ?, ?, ?)",
                          (reason, errors, raw, at))
        return REJECTED

    def one(self, raw: bytes, at: int) -> int:
        if len(raw) > self.max_bytes:
            return self.reject(raw[:KEEP_BYTES], "too_large", at, message=f"{len(raw)} bytes")
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self.reject(raw, "malformed_json", at, message=str(exc))
        if not (isinstance(ev, dict) and ev.get("specversion") == "1.0" and isinstance(ev.get("id"), str)
                and isinstance(ev.get("source"), str) and isinstance(ev.get("type"), str)
                and isinstance(ev.get("data"), dict)):
            return self.reject(raw, "invalid_envelope", at)
        t, data, source, eid = ev["type"], ev["data"], ev["source"], ev["id"]
        check = self.validate.get(t)
        if check is None:
            return self.reject(raw, "unknown_event", at)
        if (source, t) not in ALLOWED:
            return self.reject(raw, "unauthorized_emitter", at)
        try:
            check(data)
        except fastjsonschema.JsonSchemaException as exc:
            return self.reject(raw, "invalid_payload", at, "/data/" + "/".join(map(str, exc.path[1:])), exc.message)
        ex = self.conn.execute
        cur = ex("INSERT OR IGNORE INTO inputs (source, id, status, raw, at) VALUES (?, ?, 0, ?, ?)",
                 (source, eid, raw, at))
        if cur.rowcount == 0:  # (source, id) seen: the same envelope, or another one under its id
            old = ex("SELECT raw FROM inputs WHERE source = ? AND id = ?", (source, eid)).fetchone()[0]
            if old != raw and orjson.dumps(orjson.loads(old), option=orjson.OPT_SORT_KEYS) != orjson.dumps(
                    ev, option=orjson.OPT_SORT_KEYS):
                return self.reject(raw, "id_conflict", at)
            ex("INSERT INTO inputs (status, reason, raw, at) VALUES (1, 'same_envelope', ?, ?)", (raw, at))
            return DUPLICATE
        line = cur.lastrowid
        fields = IDENTITY[t]
        identity = orjson.dumps([data[f] for f in fields]).decode() if all(f in data for f in fields) else None
        key = (orjson.dumps([data["lead_id"], data["webinar_id"]]).decode()
               if "lead_id" in data and "webinar_id" in data else None)
        cur = ex("INSERT OR IGNORE INTO facts (input, type, route_key, identity) VALUES (?, ?, ?, ?)",
                 (line, t, key, identity))
        if cur.rowcount == 0:  # a fact with this identity exists; the envelope stays claimed
            ex("UPDATE inputs SET status = 1, reason = 'same_fact' WHERE seq = ?", (line,))
            return DUPLICATE
        if key is None:
            return ACCEPTED
        fact = cur.lastrowid
        items = self.classify(line, source, eid, data, key) if t == COMPLETED else []
        row = ex("SELECT state FROM routes WHERE route_key = ?", (key,)).fetchone()
        state = row[0] if row else "new"
        dest = TABLE.get((state, t))
        if dest is None:
            if row is None:
                ex("INSERT INTO routes VALUES (?, 'new')", (key,))
        else:
            if row is None:
                ex("INSERT INTO routes VALUES (?, ?)", (key, dest))
            else:
                ex("UPDATE routes SET state = ? WHERE route_key = ?", (dest, key))
            ex("INSERT INTO history VALUES (?, ?, ?)", (fact, state, dest))
            items.append((fact, "action.route", stable_id("#action/0", source, eid)))
            items.append((fact, "action.screen", stable_id("#action/1", source, eid)))
            if dest in REMINDERS:
                items.append((fact, "action.reminder", stable_id("#action/2", source, eid)))
        if items:
            self.conn.executemany("INSERT INTO outbox (fact, type, id) VALUES (?, ?, ?)", items)
        return ACCEPTED

    def classify(self, line: int, source: str, eid: str, data: dict, key: str) -> list[tuple[int, str, None]]:
        """attended_on_completion (once per route: its identity is the dedupe) and
        route_after_classification; their outbox rows."""
        ex = self.conn.execute
        lead, webinar = data["lead_id"], data["webinar_id"]
        cid = stable_id("attended_on_completion", source, eid)
        payload = {"lead_id": lead, "webinar_id": webinar, "attended": True, "timestamp": data["completed_at"]}
        cur = ex("INSERT OR IGNORE INTO facts (input, type, route_key, identity, id, data) VALUES (?, ?, ?, ?, ?, ?)",
                 (line, CLASSIFIED, key, orjson.dumps([lead, webinar, True]).decode(), cid, orjson.dumps(payload)))
        if cur.rowcount == 0:
            return []
        items = [(cur.lastrowid, CLASSIFIED, None)]
        payload["status"] = "attended"
        cur = ex("INSERT OR IGNORE INTO facts (input, type, route_key, identity, id, data) VALUES (?, ?, ?, ?, ?, ?)",
                 (line, ROUTED, key, orjson.dumps([lead, webinar, "attended"]).decode(),
                  stable_id("route_after_classification", DERIVED_SOURCE[CLASSIFIED], cid), orjson.dumps(payload)))
        if cur.rowcount:
            items.append((cur.lastrowid, ROUTED, None))
        return items

    # -- reading back (outside the timed part): what the agreement check compares ----------------

    def routes(self) -> dict[str, tuple[str, str | None]]:
        return {k: (s, SCREENS.get(s)) for k, s in self.conn.execute("SELECT route_key, state FROM routes")}

    def rejections(self) -> dict[bytes, str]:
        """Kept bytes -> reason of the last rejection of those bytes."""
        return {bytes(raw): reason for raw, reason in
                self.conn.execute("SELECT raw, reason FROM inputs WHERE status = 2 ORDER BY seq")}

    def outbox(self) -> list[dict[str, Any]]:
        """Every outbox item as the CloudEvent a consumer receives, in commit order."""
        out = []
        rows = self.conn.execute(
            "SELECT o.type, o.id, f.route_key, f.type, f.id, f.data, i.raw, i.at, h.from_state, h.to_state"
            " FROM outbox o JOIN facts f ON f.seq = o.fact JOIN inputs i ON i.seq = f.input"
            " LEFT JOIN history h ON h.fact = o.fact ORDER BY o.seq")
        for item_type, item_id, key, fact_type, fact_id, fact_data, raw, at, before, after in rows:
            lead, webinar = orjson.loads(key)
            subject = f"{lead}/{webinar}"
            second, micro = divmod(at, 1_000_000)
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{micro:06d}Z"
            if fact_data is not None:  # a derived event
                out.append({"specversion": "1.0", "id": fact_id, "source": DERIVED_SOURCE[fact_type],
                            "type": fact_type, "datacontenttype": "application/json",
                            "data": orjson.loads(fact_data), "subject": subject, "time": when})
                continue
            kind = item_type.removeprefix("action.")
            if kind == "route":
                action: dict[str, Any] = {"type": "route", "from": before, "to": after}
            elif kind == "screen":
                action = {"type": "screen", "screen": SCREENS[after]}
            else:
                ev = orjson.loads(raw)
                action = {"type": "reminder", "reminder": REMINDERS[after],
                          "context": {"lead_id": lead, "webinar_id": webinar, "state": after,
                                      "event": {"type": ev["type"], "id": ev["id"], "data": ev["data"]}}}
            out.append({"specversion": "1.0", "id": item_id, "source": "scenario", "type": item_type,
                        "subject": subject, "time": when, "datacontenttype": "application/json", "data": action})
        return out

    def close(self) -> None:
        self.conn.close()


# -- the floor as written until issue 12 ------------------------------------------------------------

LOOSE_SCHEMA = """
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


class LooseFloor:
    """The floor as written until issue 12: the engine's tables of that time (input log, canonical
    envelopes, facts with payload copies, routes, history, actions, hashed rejections), no outbox."""

    def __init__(self, db: str | Path, config: Path, max_bytes: int = MAX_BYTES):
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA cache_size = -65536")
        self.conn.executescript(LOOSE_SCHEMA)
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

    def routes(self) -> dict[str, tuple[str, str | None]]:
        return {k: (s, sc) for k, s, sc in self.conn.execute("SELECT route_key, state, screen FROM routes")}

    def close(self) -> None:
        self.conn.close()
