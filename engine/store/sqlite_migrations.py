"""The database schema, as sqlite-utils migrations: one function per schema version.

Imported only when a database needs creating or upgrading, so that opening an up-to-date
database does not pay for sqlite-utils' import.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("webinar-flows")


@migrations()
def m0001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE facts (
            seq INTEGER PRIMARY KEY,
            source TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
            route_key TEXT, identity TEXT, data TEXT NOT NULL,
            derived INTEGER NOT NULL, rule_id TEXT, cause_seq INTEGER, evaluation_seq INTEGER,
            config_hash TEXT NOT NULL, recorded_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX facts_identity ON facts (type, identity) WHERE identity IS NOT NULL;
        CREATE TABLE envelopes (
            source TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, config_hash TEXT NOT NULL,
            PRIMARY KEY (source, id)
        ) WITHOUT ROWID;
        CREATE INDEX facts_route_key ON facts (route_key) WHERE route_key IS NOT NULL;
        CREATE TABLE rejections (
            seq INTEGER PRIMARY KEY,
            raw_sha256 TEXT NOT NULL UNIQUE, raw BLOB NOT NULL, raw_size INTEGER NOT NULL,
            truncated INTEGER NOT NULL,
            reason TEXT NOT NULL, errors TEXT NOT NULL,
            source TEXT, id TEXT, type TEXT,
            config_hash TEXT NOT NULL, first_seen_at TEXT NOT NULL, last_seen_at TEXT NOT NULL
        );
        CREATE TABLE inputs (
            seq INTEGER PRIMARY KEY,
            origin TEXT, line INTEGER,
            status TEXT NOT NULL, reason TEXT,
            source TEXT, id TEXT, type TEXT,
            fact_seq INTEGER, rejection_seq INTEGER,
            config_hash TEXT NOT NULL, recorded_at TEXT NOT NULL
        );
        CREATE TABLE routes (
            route_key TEXT PRIMARY KEY,
            state TEXT NOT NULL, screen TEXT,
            version INTEGER NOT NULL,
            config_hash TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
        );
        CREATE TABLE route_history (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL,
            event_source TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL,
            fact_seq INTEGER NOT NULL, config_hash TEXT NOT NULL, at TEXT NOT NULL
        );
        CREATE INDEX route_history_key ON route_history (route_key, seq);
        CREATE TABLE actions (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, fact_seq INTEGER NOT NULL, position INTEGER NOT NULL,
            type TEXT NOT NULL, body TEXT NOT NULL, applied INTEGER NOT NULL,
            config_hash TEXT NOT NULL, created_at TEXT NOT NULL
        );
        CREATE TABLE evaluations (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, evaluated_at TEXT NOT NULL,
            config_hash TEXT NOT NULL, recorded_at TEXT NOT NULL
        );
        """
    )


@migrations()
def m0002_quarantine(db: sqlite_utils.Database) -> None:
    """A rejection leaves the quarantine when a reprocess admits it; it is kept, marked resolved."""
    for statement in (
        "ALTER TABLE rejections ADD COLUMN resolved_at TEXT",
        "ALTER TABLE rejections ADD COLUMN resolved_by_input INTEGER",
        "CREATE INDEX rejections_open ON rejections (seq) WHERE resolved_at IS NULL",
    ):
        db.execute(statement)


@migrations()
def m0003_history_by_fact(db: sqlite_utils.Database) -> None:
    """History is found through its facts (whose route-key index already exists): an index on
    the ever-growing fact_seq is appended to, where one on the route key took a random page
    of the database on every route change."""
    db.execute("DROP INDEX IF EXISTS route_history_key")
    db.execute("CREATE INDEX IF NOT EXISTS route_history_fact ON route_history (fact_seq)")


@migrations()
def m0004_outbox(db: sqlite_utils.Database) -> None:
    """The outbox: each derived event and action as the CloudEvent a consumer receives, in
    commit order (one writer at a time, so seq order is commit order), and each consumer's
    acknowledged cursor."""
    db.executescript(
        """
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
            body TEXT NOT NULL, recorded_at TEXT NOT NULL
        );
        CREATE TABLE consumer_cursors (
            consumer TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at TEXT NOT NULL
        );
        """
    )


@migrations()
def m0005_deliveries(db: sqlite_utils.Database) -> None:
    """Push delivery: per consumer with a URL, how far the outbox was taken into its deliveries,
    whether it is disabled (a 410) and which deliverer holds it (a lease); per item, its state,
    attempts, next attempt (Unix seconds) and last answer."""
    db.executescript(
        """
        CREATE TABLE delivery_consumers (
            consumer TEXT PRIMARY KEY, cursor TEXT NOT NULL,
            disabled_at TEXT, disabled_reason TEXT,
            lease_owner TEXT, lease_until REAL NOT NULL
        );
        CREATE TABLE deliveries (
            seq INTEGER PRIMARY KEY,
            consumer TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, subject TEXT NOT NULL,
            body TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL, next_at REAL NOT NULL,
            last_status INTEGER, last_answer TEXT, updated_at TEXT NOT NULL,
            UNIQUE (consumer, id)
        );
        CREATE INDEX deliveries_pending ON deliveries (consumer, seq) WHERE status = 'pending';
        CREATE INDEX deliveries_failed ON deliveries (seq) WHERE status = 'failed';
        """
    )


# -- schema 6: the lean rows ------------------------------------------------------------------------

# A stored time is an integer (microseconds since 1970, UTC) when it reads back as exactly the
# text that was written (what the engine's clock writes: 2026-01-31T18:00:00Z or
# 2026-01-31T18:00:00.123456Z), else the text itself; the views below turn it back into text.
TIME_TEXT = ("CASE WHEN typeof({0}) = 'integer' THEN strftime('%Y-%m-%dT%H:%M:%S', {0} / 1000000, 'unixepoch')"
             " || CASE WHEN {0} % 1000000 THEN printf('.%06dZ', {0} % 1000000) ELSE 'Z' END ELSE {0} END")
CONFIG_TEXT = "(SELECT hash FROM configs WHERE configs.id = {0})"

# The views that keep schema 5's tables readable, column for column: config_hash and times as text.
VIEWS = {
    "inputs": "SELECT seq, origin, line, status, reason, source, id, type, fact_seq, rejection_seq,"
              " {config} AS config_hash, {recorded_at} AS recorded_at FROM stored_inputs",
    "envelopes": "SELECT source, id, body, {config} AS config_hash FROM stored_inputs WHERE body IS NOT NULL"
                 " UNION ALL SELECT source, id, body, {config} AS config_hash FROM stored_envelopes",
    "facts": "SELECT seq, source, id, type, route_key, identity, data, derived, rule_id, cause_seq, evaluation_seq,"
             " {config} AS config_hash, {recorded_at} AS recorded_at FROM stored_facts",
    "routes": "SELECT route_key, state, screen, version, {config} AS config_hash, {created_at} AS created_at,"
              " {updated_at} AS updated_at FROM stored_routes",
    "route_history": "SELECT seq, route_key, from_state, to_state, event_source, event_id, event_type, fact_seq,"
                     " {config} AS config_hash, {at} AS at FROM stored_history",
    "actions": "SELECT seq, route_key, fact_seq, position, type, body, applied, {config} AS config_hash,"
               " {created_at} AS created_at FROM stored_actions",
    "outbox": "SELECT seq, route_key, id, type, body, {recorded_at} AS recorded_at FROM stored_outbox",
}


def view_sql(name: str) -> str:
    columns = {c: TIME_TEXT.format(c) for c in ("recorded_at", "created_at", "updated_at", "at")}
    return f"CREATE VIEW {name} AS " + VIEWS[name].format(config=CONFIG_TEXT.format("config"), **columns)


@migrations()
def m0006_lean_rows(db: sqlite_utils.Database) -> None:
    """Each event writes less: a config hash is a small integer into `configs`, a time an integer
    when it reads back exactly, and the input row holds the envelope (its partial unique index on
    (source, id) is the envelope dedupe). The old tables become views with their old columns, so
    every reader of schema 5 reads the same rows (docs/PERFORMANCE.md: what each of these saved)."""
    from .timepack import pack_time

    conn = db.conn
    conn.create_function("wf_pack_time", 1, pack_time, deterministic=True)
    # Statement by statement: executescript would commit the caller's transaction first.
    for statement in _LEAN_ROWS.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    for name in VIEWS:
        conn.execute(view_sql(name))


_LEAN_ROWS = """
CREATE TABLE configs (id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE);
        INSERT INTO configs (hash)
            SELECT config_hash FROM (
                SELECT config_hash, min(seq) AS first FROM inputs GROUP BY config_hash
                UNION ALL SELECT config_hash, 1e18 FROM facts UNION ALL SELECT config_hash, 1e18 FROM envelopes
                UNION ALL SELECT config_hash, 1e18 FROM routes UNION ALL SELECT config_hash, 1e18 FROM route_history
                UNION ALL SELECT config_hash, 1e18 FROM actions)
            GROUP BY config_hash ORDER BY min(first), config_hash;

        CREATE TABLE stored_inputs (
            seq INTEGER PRIMARY KEY,
            origin TEXT, line INTEGER, status TEXT NOT NULL, reason TEXT,
            source TEXT, id TEXT, type TEXT, fact_seq INTEGER, rejection_seq INTEGER,
            config INTEGER NOT NULL, recorded_at NOT NULL,
            body TEXT
        );
        CREATE TABLE stored_envelopes (
            source TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, config INTEGER NOT NULL,
            PRIMARY KEY (source, id)
        ) WITHOUT ROWID;
        CREATE TEMP TABLE claims AS
            SELECT min(i.seq) AS seq, i.source, i.id FROM inputs i JOIN envelopes e ON e.source = i.source AND e.id = i.id
            WHERE i.status IN ('accepted', 'duplicate') GROUP BY i.source, i.id;
        INSERT INTO stored_inputs
            SELECT i.seq, i.origin, i.line, i.status, i.reason, i.source, i.id, i.type, i.fact_seq, i.rejection_seq,
                   (SELECT id FROM configs WHERE hash = i.config_hash), wf_pack_time(i.recorded_at),
                   (SELECT e.body FROM temp.claims c JOIN envelopes e ON e.source = c.source AND e.id = c.id
                    WHERE c.seq = i.seq AND e.config_hash = i.config_hash)
            FROM inputs i ORDER BY i.seq;
        -- an envelope no input row holds (written by something other than the engine) stays apart
        INSERT INTO stored_envelopes
            SELECT e.source, e.id, e.body, (SELECT id FROM configs WHERE hash = e.config_hash) FROM envelopes e
            WHERE NOT EXISTS (SELECT 1 FROM stored_inputs s WHERE s.source = e.source AND s.id = e.id
                              AND s.body IS NOT NULL);
        DROP TABLE temp.claims;
        DROP TABLE inputs;
        DROP TABLE envelopes;
        CREATE UNIQUE INDEX stored_inputs_envelope ON stored_inputs (source, id) WHERE body IS NOT NULL;

        CREATE TABLE stored_facts (
            seq INTEGER PRIMARY KEY,
            source TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
            route_key TEXT, identity TEXT, data TEXT NOT NULL,
            derived INTEGER NOT NULL, rule_id TEXT, cause_seq INTEGER, evaluation_seq INTEGER,
            config INTEGER NOT NULL, recorded_at NOT NULL
        );
        INSERT INTO stored_facts
            SELECT seq, source, id, type, route_key, identity, data, derived, rule_id, cause_seq, evaluation_seq,
                   (SELECT id FROM configs WHERE hash = config_hash), wf_pack_time(recorded_at) FROM facts ORDER BY seq;
        DROP TABLE facts;
        CREATE UNIQUE INDEX facts_identity ON stored_facts (type, identity) WHERE identity IS NOT NULL;
        CREATE INDEX facts_route_key ON stored_facts (route_key) WHERE route_key IS NOT NULL;

        CREATE TABLE stored_routes (
            route_key TEXT PRIMARY KEY,
            state TEXT NOT NULL, screen TEXT, version INTEGER NOT NULL,
            config INTEGER NOT NULL, created_at NOT NULL, updated_at NOT NULL
        );
        INSERT INTO stored_routes
            SELECT route_key, state, screen, version, (SELECT id FROM configs WHERE hash = config_hash),
                   wf_pack_time(created_at), wf_pack_time(updated_at) FROM routes;
        DROP TABLE routes;

        CREATE TABLE stored_history (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL,
            event_source TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL,
            fact_seq INTEGER NOT NULL, config INTEGER NOT NULL, at NOT NULL
        );
        INSERT INTO stored_history
            SELECT seq, route_key, from_state, to_state, event_source, event_id, event_type, fact_seq,
                   (SELECT id FROM configs WHERE hash = config_hash), wf_pack_time(at) FROM route_history ORDER BY seq;
        DROP TABLE route_history;
        CREATE INDEX route_history_fact ON stored_history (fact_seq);

        CREATE TABLE stored_actions (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, fact_seq INTEGER NOT NULL, position INTEGER NOT NULL,
            type TEXT NOT NULL, body TEXT NOT NULL, applied INTEGER NOT NULL,
            config INTEGER NOT NULL, created_at NOT NULL
        );
        INSERT INTO stored_actions
            SELECT seq, route_key, fact_seq, position, type, body, applied, (SELECT id FROM configs WHERE hash = config_hash),
                   wf_pack_time(created_at) FROM actions ORDER BY seq;
        DROP TABLE actions;

        CREATE TABLE stored_outbox (
            seq INTEGER PRIMARY KEY,
            route_key TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
            body TEXT NOT NULL, recorded_at NOT NULL
        );
        INSERT INTO stored_outbox
            SELECT seq, route_key, id, type, body, wf_pack_time(recorded_at) FROM outbox ORDER BY seq;
        DROP TABLE outbox;
        """
