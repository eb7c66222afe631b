"""The recorded history of a database: its inputs and evaluations in order, and each input's bytes.

The input log (`inputs`, by seq) says what came in and what became of it; `evaluations`
says when an explicit evaluation ran. Replay and explanation walk both as one timeline.
The two logs share no sequence, so they are interleaved by their recording time; within
each log the seq order is kept, and an input and an evaluation recorded at the same
instant are taken input first.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..runtime.envelope import Oversized

INPUT, EVALUATION = "input", "evaluation"
Row = dict[str, Any]


def rows(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> Iterator[Row]:
    """A query's rows as dicts, without touching the connection's row factory."""
    cur = conn.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    for values in cur:
        yield dict(zip(names, values, strict=True))


def connect_read_only(path: str | Path) -> sqlite3.Connection:
    """Open a webinar-flows database so that nothing can be written to it."""
    if not Path(path).is_file():
        raise StoreError(f"{path}: no such database file")
    try:
        conn = sqlite3.connect(f"file:{Path(path).resolve().as_posix()}?mode=ro", uri=True)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the database: {exc}") from None
    if version < 1:
        conn.close()
        raise StoreError(f"{path}: not a webinar-flows database (schema version {version})")
    return conn


def instant(at: str | None) -> datetime:
    """A recorded RFC 3339 time as a datetime, for ordering (the text form does not sort)."""
    try:
        return datetime.fromisoformat((at or "").replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def sortable(at: str | None) -> str:
    """A recorded time as fixed-width UTC text (microseconds always written), which sorts as time."""
    return instant(at).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def with_instants(conn: sqlite3.Connection) -> sqlite3.Connection:
    """`conn` with the SQL function wf_instant(text), `sortable` in SQL (SQLite's own date
    functions keep only milliseconds)."""
    conn.create_function("wf_instant", 1, sortable, deterministic=True)
    return conn


def timeline(inputs: Iterable[Row], evaluations: Iterable[Row]) -> Iterator[tuple[str, Row]]:
    """Inputs and evaluations (each in seq order) as one sequence, by recording time."""
    keyed_inputs = ((instant(r["recorded_at"]), 0, r["seq"], INPUT, r) for r in inputs)
    keyed_evaluations = ((instant(r["recorded_at"]), 1, r["seq"], EVALUATION, r) for r in evaluations)
    for _, _, _, kind, row in heapq.merge(keyed_inputs, keyed_evaluations, key=lambda k: k[:3]):
        yield kind, row


def input_bytes(conn: sqlite3.Connection, row: Row) -> bytes | Oversized | None:
    """What an input row received, as far as the database kept it; None when it is gone.

    An accepted or duplicate input is the envelope remembered for its (source, id), a rejection its raw bytes (a truncated one as `Oversized`, so it is
    too large again). Accepted and duplicate bodies are canonical JSON, which processes
    exactly as the bytes that were received.
    """
    if row["status"] in ("accepted", "duplicate"):
        found = conn.execute("SELECT body FROM envelopes WHERE source = ? AND id = ?",
                             (row["source"], row["id"])).fetchone()
        return found[0].encode("utf-8") if found else None
    found = conn.execute("SELECT raw, raw_size, raw_sha256, truncated FROM rejections WHERE seq = ?",
                         (row["rejection_seq"],)).fetchone()
    if found is None:
        return None
    raw, size, digest, truncated = found
    return Oversized(size, digest, bytes(raw)) if truncated else bytes(raw)
