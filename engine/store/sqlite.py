"""Storage behind a narrow interface, and its SQLite implementation.

sqlite-utils owns the schema and its migrations; the per-event path uses raw `sqlite3`
with constant SQL, because that is where the time goes. Every write runs inside
`BEGIN IMMEDIATE`: the write lock is taken before the first read, so two processes never
interleave a read-modify-write and no update is lost. WAL lets readers run meanwhile.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..errors import StoreError

SCHEMA_VERSION = 3  # the number of migrations in engine/migrations.py
MIGRATIONS_TABLE = "_sqlite_migrations"
BUSY_TIMEOUT_MS = 60_000
CACHE_KIB = 16_384  # the page cache: the dedupe indexes' hot pages; a million-event run stays near 76 MiB
CHECKPOINT_PAGES = 10_000  # WAL frames (about 40 MiB) before a checkpoint copies them into the file

# Rows of the two tables written for every event travel as tuples in this column order:
# binding by position is measurably cheaper than by name on the hot path.
FACT_COLUMNS = ("source", "id", "type", "route_key", "identity", "data", "derived", "rule_id", "cause_seq",
                "evaluation_seq", "config_hash", "recorded_at")
INPUT_COLUMNS = ("origin", "line", "status", "reason", "source", "id", "type", "fact_seq", "rejection_seq",
                 "config_hash", "recorded_at")


def _insert(table: str, columns: tuple[str, ...], verb: str = "INSERT") -> str:
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


_ADD_FACT = _insert("facts", FACT_COLUMNS, "INSERT OR IGNORE")
_INSERT_FACT = _insert("facts", FACT_COLUMNS)
_INSERT_INPUT = _insert("inputs", INPUT_COLUMNS)


class Store(Protocol):
    """The few operations the engine needs; a second backend implements these."""

    def transaction(self) -> Any: ...
    def savepoint(self) -> Any: ...
    def find_envelope(self, source: str, event_id: str) -> str | None: ...
    def claim_envelope(self, source: str, event_id: str, body: str, config_hash: str) -> bool: ...
    def forget(self, fact_seq: int | None, source: str, event_id: str) -> None: ...
    def has_identity(self, event_type: str, identity: str) -> bool: ...
    def add_fact(self, row: tuple[Any, ...]) -> int | None: ...
    def insert_fact(self, row: tuple[Any, ...]) -> int: ...

    def facts_for_key(self, route_key: str) -> list[tuple[str, dict[str, Any]]]: ...
    def facts_with_identity(self, route_key: str) -> list[tuple[str, dict[str, Any], str | None]]: ...
    def route_state(self, route_key: str) -> tuple[str, str | None] | None: ...
    def create_route(self, route_key: str, state: str, config_hash: str, at: str) -> None: ...
    def fix_route(self, route_key: str, state: str, screen: str | None, config_hash: str, at: str) -> None: ...
    def append_history(self, route_key: str, before: str, after: str, cause: dict[str, Any], fact_seq: int,
                       config_hash: str, at: str) -> None: ...
    def add_actions(self, route_key: str, fact_seq: int, actions: list[dict[str, Any]], consumed: frozenset[str],
                    config_hash: str, at: str) -> None: ...
    def record_rejection(self, row: dict[str, Any]) -> int: ...
    def record_input(self, row: tuple[Any, ...]) -> int: ...
    def resolve_rejection(self, seq: int, input_seq: int, at: str) -> None: ...
    def purge_rejections(self, seqs: list[int]) -> int: ...
    def record_evaluation(self, route_key: str, evaluated_at: str, config_hash: str, at: str) -> int: ...
    def route_row(self, route_key: str) -> dict[str, Any] | None: ...
    def history(self, route_key: str) -> list[dict[str, Any]]: ...
    def route_keys(self, match: dict[int, Any]) -> list[str]: ...
    def close(self) -> None: ...


class SQLiteStore:
    """The SQLite store; one connection, used by one thread."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", create: bool = True):
        self.path = str(path)
        if not create and self.path != ":memory:" and not Path(self.path).is_file():
            raise StoreError(f"{self.path}: the database does not exist (check --db or $WEBINAR_FLOWS_DB)")
        self._depth = 0
        try:
            self._open(synchronous)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    def _open(self, synchronous: str) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._connect(synchronous)
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL, or creating its schema, can meet another process
                # doing the same; SQLite does not wait on that lock upgrade, so we do.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                self.conn.close()
                time.sleep(0.02)

    def _connect(self, synchronous: str) -> None:
        if self.path != ":memory:":
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"{self.path}: cannot open the database: directory {parent} does not exist")
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                    check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: the database has schema version {version}, newer than this "
                             f"webinar-flows understands ({SCHEMA_VERSION}); upgrade webinar-flows")
        if version == 0 and self._foreign():
            raise StoreError(f"{self.path}: not a webinar-flows database (it holds other tables); "
                             "use a new file")
        if self.path != ":memory:" and self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # Each event dirties a few index pages at random; a longer WAL lets a checkpoint copy a
        # hot page once for many commits and fsync less often (SQLite's default is 1,000 pages).
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _foreign(self) -> bool:
        """Whether a file without our schema version already holds someone else's tables."""
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return bool(names - {MIGRATIONS_TABLE})

    def _migrate(self) -> None:
        import sqlite_utils

        from .sqlite_migrations import migrations

        db = sqlite_utils.Database(self.conn)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                migrations.apply(db)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; the lock is taken up front (BEGIN IMMEDIATE)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as exc:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error matters more than a failed rollback
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, self.path) from exc
            raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._depth += 1
        name = f"sp{self._depth}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        else:
            self.conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    def find_envelope(self, source: str, event_id: str) -> str | None:
        row = self.conn.execute("SELECT body FROM envelopes WHERE source = ? AND id = ?", (source, event_id)).fetchone()
        return row[0] if row else None

    def claim_envelope(self, source: str, event_id: str, body: str, config_hash: str) -> bool:
        """Remember an envelope; False when its (source, id) was already seen."""
        return self.conn.execute("INSERT OR IGNORE INTO envelopes (source, id, body, config_hash) VALUES (?, ?, ?, ?)",
                                 (source, event_id, body, config_hash)).rowcount == 1

    def forget(self, fact_seq: int | None, source: str, event_id: str) -> None:
        """Undo `claim_envelope` and `add_fact` for an event whose rules failed."""
        if fact_seq is not None:
            self.conn.execute("DELETE FROM facts WHERE seq = ?", (fact_seq,))
        self.conn.execute("DELETE FROM envelopes WHERE source = ? AND id = ?", (source, event_id))

    def has_identity(self, event_type: str, identity: str) -> bool:
        return self.conn.execute("SELECT 1 FROM facts WHERE type = ? AND identity = ?",
                                 (event_type, identity)).fetchone() is not None

    def add_fact(self, row: tuple[Any, ...]) -> int | None:
        """Store a fact (a row in FACT_COLUMNS order); None when a fact with its identity already
        exists (a same-fact duplicate)."""
        cur = self.conn.execute(_ADD_FACT, row)
        return cur.lastrowid if cur.rowcount == 1 else None

    def insert_fact(self, row: tuple[Any, ...]) -> int:
        return self.conn.execute(_INSERT_FACT, row).lastrowid  # type: ignore[return-value]

    def facts_for_key(self, route_key: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self.conn.execute("SELECT type, data FROM facts WHERE route_key = ? ORDER BY seq", (route_key,))
        return [(t, orjson.loads(d)) for t, d in rows]

    def facts_with_identity(self, route_key: str) -> list[tuple[str, dict[str, Any], str | None]]:
        rows = self.conn.execute("SELECT type, data, identity FROM facts WHERE route_key = ? ORDER BY seq", (route_key,))
        return [(t, orjson.loads(d), i) for t, d, i in rows]

    def route_state(self, route_key: str) -> tuple[str, str | None] | None:
        row = self.conn.execute("SELECT state, screen FROM routes WHERE route_key = ?", (route_key,)).fetchone()
        return (row[0], row[1]) if row else None

    def create_route(self, route_key: str, state: str, config_hash: str, at: str) -> None:
        self.conn.execute("INSERT INTO routes (route_key, state, screen, version, config_hash, created_at, updated_at)"
                          " VALUES (?, ?, NULL, 0, ?, ?, ?)", (route_key, state, config_hash, at, at))

    def fix_route(self, route_key: str, state: str, screen: str | None, config_hash: str, at: str) -> None:
        """Record a route's new state (route fixation), creating the row if the key is new."""
        self.conn.execute(
            "INSERT INTO routes (route_key, state, screen, version, config_hash, created_at, updated_at)"
            " VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (route_key) DO UPDATE SET state = excluded.state,"
            " screen = excluded.screen, version = version + 1, config_hash = excluded.config_hash,"
            " updated_at = excluded.updated_at", (route_key, state, screen, config_hash, at, at))

    def append_history(self, route_key: str, before: str, after: str, cause: dict[str, Any], fact_seq: int,
                       config_hash: str, at: str) -> None:
        self.conn.execute(
            "INSERT INTO route_history (route_key, from_state, to_state, event_source, event_id, event_type,"
            " fact_seq, config_hash, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (route_key, before, after, cause["source"], cause["id"], cause["type"], fact_seq, config_hash, at))

    def add_actions(self, route_key: str, fact_seq: int, actions: list[dict[str, Any]], consumed: frozenset[str],
                    config_hash: str, at: str) -> None:
        self.conn.executemany(
            "INSERT INTO actions (route_key, fact_seq, position, type, body, applied, config_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(route_key, fact_seq, i, a["type"], orjson.dumps(a, option=orjson.OPT_SORT_KEYS).decode(),
              int(a["type"] in consumed), config_hash, at) for i, a in enumerate(actions)])

    def record_rejection(self, row: dict[str, Any]) -> int:
        cur = self.conn.execute(
            "INSERT INTO rejections (raw_sha256, raw, raw_size, truncated, reason, errors, source, id, type,"
            " config_hash, first_seen_at, last_seen_at) VALUES (:raw_sha256, :raw, :raw_size, :truncated, :reason,"
            " :errors, :source, :id, :type, :config_hash, :at, :at)"
            " ON CONFLICT (raw_sha256) DO UPDATE SET reason = excluded.reason, errors = excluded.errors,"
            " config_hash = excluded.config_hash, last_seen_at = excluded.last_seen_at,"
            " resolved_at = NULL, resolved_by_input = NULL RETURNING seq", row)
        return cur.fetchone()[0]

    def resolve_rejection(self, seq: int, input_seq: int, at: str) -> None:
        """Take a rejection out of the quarantine: the input `input_seq` admitted its bytes."""
        self.conn.execute("UPDATE rejections SET resolved_at = ?, resolved_by_input = ? WHERE seq = ?",
                          (at, input_seq, seq))

    def purge_rejections(self, seqs: list[int]) -> int:
        """Delete these rejections (their bytes); the input log keeps its rows. Returns how many went."""
        removed = 0
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            removed += self.conn.execute(f"DELETE FROM rejections WHERE seq IN ({marks})", chunk).rowcount  # noqa: S608
        return removed

    def record_input(self, row: tuple[Any, ...]) -> int:
        """Log one input (a row in INPUT_COLUMNS order)."""
        return self.conn.execute(_INSERT_INPUT, row).lastrowid  # type: ignore[return-value]

    def record_evaluation(self, route_key: str, evaluated_at: str, config_hash: str, at: str) -> int:
        cur = self.conn.execute("INSERT INTO evaluations (route_key, evaluated_at, config_hash, recorded_at)"
                                " VALUES (?, ?, ?, ?)", (route_key, evaluated_at, config_hash, at))
        return cur.lastrowid  # type: ignore[return-value]

    def route_row(self, route_key: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT route_key, state, screen, version, config_hash, created_at, updated_at"
                                " FROM routes WHERE route_key = ?", (route_key,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None

    def history(self, route_key: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT h.from_state, h.to_state, h.event_source, h.event_id, h.event_type, h.at"
                                 " FROM facts AS f JOIN route_history AS h ON h.fact_seq = f.seq"
                                 " WHERE f.route_key = ? ORDER BY h.seq", (route_key,))
        return [{"from": f, "to": t, "event": {"source": s, "id": i, "type": ty}, "at": at}
                for f, t, s, i, ty, at in rows]

    def route_keys(self, match: dict[int, Any]) -> list[str]:
        """Route keys whose JSON array holds `match[i]` at each position i, in key order."""
        where = " AND ".join(f"json_extract(route_key, '$[{i}]') = ?" for i in match) or "1"
        rows = self.conn.execute(f"SELECT route_key FROM routes WHERE {where} ORDER BY route_key",  # noqa: S608
                                 tuple(match.values()))
        return [r[0] for r in rows]


def _translate(exc: sqlite3.Error, path: str) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        hint = "another process held the database too long"
    elif "full" in text or "disk I/O" in text:
        hint = "disk full or write failed"
    elif "not a database" in text or "malformed" in text:
        hint = "the file is not a webinar-flows database or is corrupt"
    elif "readonly" in text or "unable to open" in text:
        hint = "cannot write there (read-only or missing directory?)"
    else:
        hint = "database error"
    return StoreError(f"{path}: {hint}: {text}")
