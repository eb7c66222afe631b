"""The comparable state of a database: what "the same final state" means in tests.

Wall-clock columns and row numbers differ between runs that did the same work, so they are
left out; everything else — facts, derived events, routes, their histories, actions and
rejections — must be equal, row for row.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

TABLES = {
    "facts": "SELECT source, id, type, route_key, identity, data, derived, rule_id FROM facts",
    "routes": "SELECT route_key, state, screen, version, config_hash FROM routes",
    "route_history": "SELECT route_key, from_state, to_state, event_source, event_id, event_type FROM route_history"
                     " ORDER BY route_key, seq",
    "actions": "SELECT a.route_key, f.source, f.id, a.position, a.type, a.body, a.applied FROM actions a"
               " JOIN facts f ON f.seq = a.fact_seq",
    "rejections": "SELECT raw_sha256, raw, raw_size, truncated, reason, errors FROM rejections",
    "envelopes": "SELECT e.source, e.id, e.body, f.seq IS NULL FROM envelopes e"
                 " LEFT JOIN facts f ON f.source = e.source AND f.id = e.id",
}


def rows(db: str | Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of one query on a database file."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def snapshot(db: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's comparable rows; history keeps its per-route order, the rest is sorted."""
    conn = sqlite3.connect(db)
    try:
        out = {}
        for name, sql in TABLES.items():
            rows = conn.execute(sql).fetchall()
            out[name] = rows if name == "route_history" else sorted(rows, key=repr)
        return out
    finally:
        conn.close()


def digest(db: str | Path) -> str:
    return hashlib.sha256(repr(snapshot(db)).encode()).hexdigest()


def integrity(db: str | Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
