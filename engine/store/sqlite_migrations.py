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
