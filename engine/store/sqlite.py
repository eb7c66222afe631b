"""The SQLite store: every SQL statement of the project, behind `store.base`'s two interfaces.

sqlite-utils owns the schema and its migrations (sqlite_migrations.py); the per-event path
uses raw `sqlite3` with constant SQL, because that is where the time goes. Every write runs
inside `BEGIN IMMEDIATE`: the write lock is taken before the first read, so two processes
never interleave a read-modify-write and no update is lost. WAL lets readers run meanwhile.

Driver errors become `StoreError` subclasses, chosen by SQLite's error name
(`sqlite3.Error.sqlite_errorname`), never by message text; every message names the file.
A file that is not ours (another application's tables, a newer schema, not SQLite at all)
is refused before anything is written to it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import is_, itemgetter
from pathlib import Path
from typing import Any, Self

import orjson

from ..errors import (
    DatabaseMissing,
    NotADatabase,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreReadOnly,
)
from ..timefmt import sortable
from .base import (
    delivery_statuses,
    past_head,
    seq_cursor,
    FACT_COLUMNS,
    INPUT_COLUMNS,
    HistoryReader,
    Kept,
    KeyStory,
    RejectionFilter,
    Row,
    Store,
)
from .timepack import pack_time

__all__ = ["FACT_COLUMNS", "INPUT_COLUMNS", "SCHEMA_VERSION", "SQLiteReader", "SQLiteStore", "Store"]

SCHEMA_VERSION = 6  # the number of migrations in sqlite_migrations.py
MIGRATIONS_TABLE = "_sqlite_migrations"
# The tables every schema version since the first holds (since schema 6, most of them as views
# over the stored_* tables): a file at one of our versions without all of them is someone else's.
OUR_TABLES = frozenset({"facts", "envelopes", "rejections", "inputs", "routes", "route_history", "actions",
                        "evaluations"})
BUSY_TIMEOUT_MS = 60_000
CACHE_KIB = 16_384  # the page cache: the dedupe indexes' hot pages; a million-event run stays near 76 MiB
CHECKPOINT_PAGES = 10_000  # WAL frames (about 40 MiB) before a checkpoint copies them into the file


# Schema 6 stores a config hash as its id in `configs` and a time as timepack packs it; rows
# arrive in FACT_COLUMNS / INPUT_COLUMNS order, with those two last.
class _NullsInline:
    """An INSERT whose None arguments at some positions are written into its SQL as NULL.

    sqlite3 binds None through its adaptation protocol (an adapter looked up, then an attribute
    looked up on the protocol and not found, its error message formatted and thrown away):
    about 0.5 µs a value, where an int or a str costs next to nothing. The input log's and an
    input fact's rows hold three to five of them. Each pattern of None at the `nullable`
    positions gets its statement once (a handful occur), and a call answers (sql, arguments);
    a None elsewhere is bound as before. tests/test_fast_paths.py holds the rows equal.
    """

    def __init__(self, verb: str, table: str, columns: tuple[str, ...], nullable: tuple[int, ...]):
        if len(columns) - len(nullable) < 2:  # itemgetter of one position answers a value, not a tuple
            raise ValueError("an INSERT needs two arguments that are always bound")
        self._head, self._columns = f"{verb} INTO {table} ({', '.join(columns)}) VALUES (", columns
        self._nullable, self._pick, self._nones = nullable, itemgetter(*nullable), (None,) * len(nullable)
        self._forms: dict[tuple[bool, ...], tuple[str, Any]] = {}

    def __call__(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        nulls = tuple(map(is_, self._pick(args), self._nones))
        form = self._forms.get(nulls)
        if form is None:
            form = self._forms[nulls] = self._form(nulls)
        return form[0], form[1](args)

    def _form(self, nulls: tuple[bool, ...]) -> tuple[str, Any]:
        null = {i for i, is_null in zip(self._nullable, nulls, strict=True) if is_null}
        marks = ", ".join("NULL" if i in null else "?" for i in range(len(self._columns)))
        return self._head + marks + ")", itemgetter(*(i for i in range(len(self._columns)) if i not in null))


_STORED_FACT = (*FACT_COLUMNS[:-2], "config", "recorded_at")
# route_key, identity, rule_id, cause_seq, evaluation_seq
_FACT_NULLABLE = tuple(FACT_COLUMNS.index(c) for c in ("route_key", "identity", "rule_id", "cause_seq",
                                                        "evaluation_seq"))
_ADD_FACT = _NullsInline("INSERT OR IGNORE", "stored_facts", _STORED_FACT, _FACT_NULLABLE)
_INSERT_FACT = _NullsInline("INSERT", "stored_facts", _STORED_FACT, _FACT_NULLABLE)
_STORED_INPUT = (*INPUT_COLUMNS[:-2], "config", "recorded_at", "body")
_INSERT_INPUT = _NullsInline("INSERT", "stored_inputs", _STORED_INPUT, tuple(
    _STORED_INPUT.index(c) for c in ("origin", "line", "reason", "source", "fact_seq", "rejection_seq", "body")))
_CLAIMED = "SELECT body FROM stored_inputs WHERE source = ? AND id = ? AND body IS NOT NULL"
_CLAIMED_APART = "SELECT body FROM stored_envelopes WHERE source = ? AND id = ?"
_REJECTION_COLUMNS = ("seq, reason, errors, source, id, type, raw_size, raw_sha256, truncated, first_seen_at,"
                      " last_seen_at, config_hash, resolved_at, resolved_by_input")


# -- driver errors ------------------------------------------------------------------------------------

_KINDS: tuple[tuple[tuple[str, ...], type[StoreError], str], ...] = (
    (("SQLITE_BUSY", "SQLITE_LOCKED"), StoreBusy, "another process held the database too long"),
    (("SQLITE_FULL", "SQLITE_IOERR"), StoreFull, "disk full or write failed"),
    (("SQLITE_NOTADB", "SQLITE_CORRUPT"), NotADatabase, "the file is not a webinar-flows database or is corrupt"),
    (("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"), StoreReadOnly,
     "cannot write there (read-only or missing directory?)"),
)


def _translate(exc: sqlite3.Error, path: str) -> StoreError:
    """A driver error as the StoreError subclass its SQLite error name (extended codes included,
    e.g. SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED) calls for."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    for prefixes, kind, hint in _KINDS:
        if name.startswith(prefixes):
            return kind(f"{path}: {hint}: {exc}")
    return StoreError(f"{path}: database error: {exc}")


def _busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorname", None) or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


# -- reads (both the store and a read-only reader) ------------------------------------------------------

class _SQLiteReads(HistoryReader):
    """The read port's SQL, over `self.conn`; every driver error leaves as a StoreError."""

    path: str
    conn: sqlite3.Connection

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> Iterator[Row]:
        """A query's rows as dicts, without touching the connection's row factory."""
        try:
            cur = self.conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            for values in cur:
                yield dict(zip(names, values, strict=True))
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside sees the same state."""
        try:
            self.conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        try:
            yield
        finally:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # nothing was written; a failed end of a read changes nothing

    def route_row(self, route_key: str) -> Row | None:
        found = list(self._rows("SELECT route_key, state, screen, version, config_hash, created_at, updated_at"
                                " FROM routes WHERE route_key = ?", (route_key,)))
        return found[0] if found else None

    def history(self, route_key: str) -> list[Row]:
        rows = self._all("SELECT h.from_state, h.to_state, h.event_source, h.event_id, h.event_type, h.at"
                         " FROM facts AS f JOIN route_history AS h ON h.fact_seq = f.seq"
                         " WHERE f.route_key = ? ORDER BY h.seq", (route_key,))
        return [{"from": f, "to": t, "event": {"source": s, "id": i, "type": ty}, "at": at}
                for f, t, s, i, ty, at in rows]

    def route_keys(self, match: dict[int, Any]) -> list[str]:
        """Route keys whose JSON array holds `match[i]` at each position i, in key order."""
        where = " AND ".join(f"json_extract(route_key, '$[{int(i)}]') = ?" for i in match) or "1"
        return [r[0] for r in self._all(f"SELECT route_key FROM routes WHERE {where} ORDER BY route_key",
                                        tuple(match.values()))]

    def inputs(self) -> Iterator[Row]:
        return self._rows("SELECT * FROM inputs ORDER BY seq")

    def evaluations(self) -> Iterator[Row]:
        return self._rows("SELECT * FROM evaluations ORDER BY seq")

    def history_size(self) -> int:
        return sum(self._all(f"SELECT count(*) FROM {table}")[0][0]
                   for table in ("inputs", "evaluations"))

    def input_bytes(self, row: Row) -> bytes | Kept | None:
        if row["status"] in ("accepted", "duplicate"):
            found = self._all("SELECT body FROM envelopes WHERE source = ? AND id = ?", (row["source"], row["id"]))
            return found[0][0].encode("utf-8") if found else None
        found = self._all("SELECT raw, raw_size, raw_sha256, truncated FROM rejections WHERE seq = ?",
                          (row["rejection_seq"],))
        if not found:
            return None
        raw, size, digest, truncated = found[0]
        return Kept(bytes(raw), size, digest, bool(truncated))

    def rejections(self, selection: RejectionFilter, *, raw: bool = False) -> Iterator[Row]:
        where, params = _where(selection)
        columns = _REJECTION_COLUMNS + (", raw" if raw else "")
        for row in self._rows(f"SELECT {columns} FROM rejections WHERE {where} ORDER BY seq", params):
            if raw:
                row["raw"] = bytes(row["raw"])
            yield row

    def rejection_raw(self, seq: int) -> bytes | None:
        found = self._all("SELECT raw FROM rejections WHERE seq = ?", (seq,))
        return bytes(found[0][0]) if found else None

    def key_story(self, route_key: str, *, body_texts: Sequence[str] = (),
                  raw_texts: Sequence[bytes] = ()) -> KeyStory:
        story = KeyStory()
        story.facts = list(self._rows("SELECT * FROM facts WHERE route_key = ? ORDER BY seq", (route_key,)))
        story.inputs = list(self._rows(
            "SELECT i.*, e.body FROM inputs i JOIN facts f ON f.seq = i.fact_seq"
            " JOIN envelopes e ON e.source = i.source AND e.id = i.id"
            " WHERE i.status = 'accepted' AND f.route_key = ? ORDER BY i.seq", (route_key,)))
        match = " AND ".join("instr(e.body, ?) > 0" for _ in body_texts) or "1"
        story.inputs += self._rows(
            "SELECT i.*, e.body FROM inputs i JOIN envelopes e ON e.source = i.source AND e.id = i.id"
            f" WHERE i.status = 'duplicate' AND {match} ORDER BY i.seq", body_texts)
        literal = " AND ".join("instr(r.raw, ?) > 0" for _ in raw_texts) or "1"
        match = f"(({literal}) OR instr(r.raw, ?) > 0 OR instr(r.raw, ?) > 0)"
        for row in self._rows("SELECT i.*, r.raw, r.reason AS now_reason, r.errors, r.resolved_at,"
                              " r.resolved_by_input FROM inputs i JOIN rejections r ON r.seq = i.rejection_seq"
                              f" WHERE i.status = 'rejected' AND {match} ORDER BY i.seq",
                              [*raw_texts, b"\\", b"\x00"]):
            row["raw"] = bytes(row["raw"])
            story.inputs.append(row)
        story.evaluations = list(self._rows("SELECT * FROM evaluations WHERE route_key = ? ORDER BY seq",
                                            (route_key,)))
        story.history = list(self._rows("SELECT h.* FROM facts AS f JOIN route_history AS h ON h.fact_seq = f.seq"
                                        " WHERE f.route_key = ? ORDER BY h.seq", (route_key,)))
        story.actions = list(self._rows("SELECT fact_seq, body FROM actions WHERE route_key = ? ORDER BY seq",
                                        (route_key,)))
        return story

    def route_states(self) -> dict[str, tuple[str, str | None]]:
        return {k: (s, sc) for k, s, sc in self._all("SELECT route_key, state, screen FROM routes")}

    def route_counts(self) -> dict[str, int]:
        return dict(self._all("SELECT state, COUNT(*) FROM routes GROUP BY state"))  # type: ignore[arg-type]

    def latest_results(self, event_type: str, field: str) -> dict[str, Any]:
        latest: dict[str, Any] = {}
        for route_key, data in self._rows_tuples("SELECT route_key, data FROM facts WHERE type = ?"
                                                 " AND route_key IS NOT NULL ORDER BY seq", (event_type,)):
            payload = json.loads(data)
            if field in payload:
                latest[route_key] = payload[field]
        return latest

    def _rows_tuples(self, sql: str, params: Iterable[Any] = ()) -> Iterator[tuple[Any, ...]]:
        try:
            yield from self.conn.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    def _check_head(self, cursor: str, after: int) -> None:
        if after and after > (self._all("SELECT max(seq) FROM outbox")[0][0] or 0):
            raise past_head(cursor)

    def outbox_after(self, cursor: str, types: frozenset[str], limit: int) -> tuple[list[str], str]:
        after = seq_cursor(cursor)
        marks = ", ".join("?" * len(types))
        with self.snapshot():
            self._check_head(cursor, after)
            if not types:
                return [], cursor
            rows = self._all(f"SELECT seq, body FROM outbox WHERE seq > ? AND type IN ({marks})"  # noqa: S608
                             " ORDER BY seq LIMIT ?", (after, *sorted(types), limit))
            if len(rows) < limit:  # everything up to the newest item was scanned: skip past it
                last = self._all("SELECT max(seq) FROM outbox")[0][0] or after
            else:
                last = rows[-1][0]
        return [body for _, body in rows], str(max(last, after)) if (rows or last > after) else cursor

    def cursor_of(self, consumer: str) -> str:
        found = self._all("SELECT cursor FROM consumer_cursors WHERE consumer = ?", (consumer,))
        return found[0][0] if found else ""

    def outbox_backlog(self, cursor: str, types: frozenset[str]) -> int:
        if not types:
            return 0
        marks = ", ".join("?" * len(types))
        return self._all(f"SELECT count(*) FROM outbox WHERE seq > ? AND type IN ({marks})",  # noqa: S608
                         (seq_cursor(cursor), *sorted(types)))[0][0]

    def delivery_consumer(self, consumer: str) -> Row | None:
        found = list(self._rows("SELECT consumer, cursor, disabled_at, disabled_reason, lease_owner, lease_until"
                                " FROM delivery_consumers WHERE consumer = ?", (consumer,)))
        return found[0] if found else None

    def deliveries(self, consumer: str | None, statuses: Sequence[str], limit: int) -> list[Row]:
        which = "consumer = ? AND " if consumer is not None else ""
        return list(self._rows(f"SELECT seq, consumer, id, type, subject, body, status, attempts, next_at,"
                               f" last_status, last_answer, updated_at FROM deliveries"
                               f" WHERE {which}({delivery_statuses(statuses)}) ORDER BY seq LIMIT ?",
                               (*([consumer] if consumer is not None else []), limit)))

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        return {(c, s): n for c, s, n in self._all("SELECT consumer, status, count(*) FROM deliveries"
                                                    " GROUP BY consumer, status")}

    def config_hashes(self) -> list[str]:
        return [r[0] for r in self._all("SELECT config_hash FROM inputs GROUP BY config_hash ORDER BY min(seq)")]


def _where(s: RejectionFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, values in (("reason", s.reasons), ("source", s.sources), ("type", s.types)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += values
    if s.since is not None:
        clauses.append("wf_instant(last_seen_at) >= ?")
        params.append(sortable(s.since))
    if s.until is not None:
        clauses.append("wf_instant(last_seen_at) <= ?")
        params.append(sortable(s.until))
    if s.state != "all":
        clauses.append("resolved_at IS NULL" if s.state == "open" else "resolved_at IS NOT NULL")
    if s.truncated is not None:
        clauses.append("truncated" if s.truncated else "NOT truncated")
    return " AND ".join(clauses) or "1", params


def _with_instants(conn: sqlite3.Connection) -> None:
    """The SQL function wf_instant(text): `sortable` in SQL (SQLite's own date functions keep
    only milliseconds)."""
    conn.create_function("wf_instant", 1, sortable, deterministic=True)


def _refusal(conn: sqlite3.Connection, path: str) -> StoreError | None:
    """Why the open file cannot be ours, or None: read before anything is written to it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return StoreError(f"{path}: the database has schema version {version}, newer than this "
                          f"webinar-flows understands ({SCHEMA_VERSION}); upgrade webinar-flows")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    if version == 0 and names - {MIGRATIONS_TABLE}:
        return NotADatabase(f"{path}: not a webinar-flows database (it holds other tables); use a new file")
    if version > 0 and not OUR_TABLES <= names:
        return NotADatabase(f"{path}: not a webinar-flows database (schema version {version} without its "
                            "tables); use a new file")
    return None


# -- the store ---------------------------------------------------------------------------------------

class _Transaction:
    """`SQLiteStore.transaction()`: a plain context manager made once per store. A generator
    one (`contextlib.contextmanager`) built a generator and two wrappers for every transaction,
    about 2 µs of a one-event transaction's Python."""

    __slots__ = ("_store",)

    def __init__(self, store: SQLiteStore):
        self._store = store

    def __enter__(self) -> None:
        self._store._begin()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self._store._end(exc)
        return False  # an exception from the block goes on (as a StoreError when it was the driver's)


class SQLiteStore(_SQLiteReads, Store):
    """The SQLite store; one connection, used by one thread."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", create: bool = True):
        self.path = str(path)
        if not create and self.path != ":memory:" and not Path(self.path).is_file():
            raise DatabaseMissing(f"{self.path}: the database does not exist (check --db or $WEBINAR_FLOWS_DB)")
        self._depth = 0
        self._configs: dict[str, int] = {}  # config hash -> its id in `configs`, as committed
        self._new_configs: list[str] = []  # hashes given an id in the transaction under way
        self._config_hash, self._config_id = "", 0  # the last one asked for
        # Envelopes claimed in the transaction under way, (source, id) -> (body, config hash): each
        # is written with the input row that claimed it (or, if none does, apart at commit).
        self._claims: dict[tuple[str, str], tuple[str, str]] = {}
        self._apart = False  # whether `stored_envelopes` holds envelopes no input row holds
        self._transaction = _Transaction(self)
        try:
            self._open(synchronous)
        except sqlite3.Error as exc:
            self._close_quietly()
            raise _translate(exc, self.path) from exc
        except StoreError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()

    def _open(self, synchronous: str) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._connect(synchronous)
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL, or creating its schema, can meet another process
                # doing the same; SQLite does not wait on that lock upgrade, so we do.
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                self.conn.close()
                time.sleep(0.02)

    def _connect(self, synchronous: str) -> None:
        if self.path != ":memory:":
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise DatabaseMissing(f"{self.path}: cannot open the database: directory {parent} does not exist")
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                    check_same_thread=False)
        # One cursor for the write path: `conn.execute` makes and frees a cursor per statement
        # (about 0.3 µs, some ten statements per event). Every statement on it runs to its end
        # (a one-row read by fetchall, which steps past the row whatever a Python version's
        # fetchone does), so it never holds a read open: a statement left unfinished would keep
        # its snapshot for every later read of the connection.
        self._cursor = self.conn.cursor()
        self._execute, self._executemany = self._cursor.execute, self._cursor.executemany
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        refusal = _refusal(self.conn, self.path)
        if refusal is not None:
            raise refusal
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if self.path != ":memory:" and self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # Each event dirties a few index pages at random; a longer WAL lets a checkpoint copy a
        # hot page once for many commits and fsync less often (SQLite's default is 1,000 pages).
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        _with_instants(self.conn)
        if version < SCHEMA_VERSION:
            self._migrate()
        self._apart = self.conn.execute("SELECT EXISTS (SELECT 1 FROM stored_envelopes)").fetchone()[0] == 1

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

    def transaction(self) -> _Transaction:
        """One write transaction; the lock is taken up front (BEGIN IMMEDIATE)."""
        return self._transaction

    def _begin(self) -> None:
        try:
            self._execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    def _end(self, exc: BaseException | None) -> None:
        """COMMIT after a clean block, else ROLLBACK; a driver error leaves as a StoreError."""
        try:
            if exc is None:
                try:
                    if self._claims:
                        self._keep_claims_apart()
                    self._execute("COMMIT")
                except BaseException as failed:
                    self._rollback()
                    if isinstance(failed, sqlite3.Error):
                        raise _translate(failed, self.path) from failed
                    raise
                self._new_configs.clear()
                return
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, self.path) from exc
        finally:
            self._claims.clear()

    def _rollback(self) -> None:
        try:
            self._execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error matters more than a failed rollback
        self._forget_new_configs()

    def _keep_claims_apart(self) -> None:
        """Claimed envelopes no input row took (a caller that claims without logging an input)."""
        self.conn.executemany("INSERT INTO stored_envelopes (source, id, body, config) VALUES (?, ?, ?, ?)",
                              [(s, i, body, self._config(h)) for (s, i), (body, h) in self._claims.items()])
        self._apart = True

    def _forget_new_configs(self) -> None:
        for config_hash in self._new_configs:
            self._configs.pop(config_hash, None)
        self._new_configs.clear()
        self._config_hash, self._config_id = "", 0

    def _config(self, config_hash: str) -> int:
        """The id of a config hash in `configs`, added (in the caller's transaction) if new."""
        if config_hash == self._config_hash:
            return self._config_id
        found = self._configs.get(config_hash)
        if found is None:
            row = self.conn.execute("SELECT id FROM configs WHERE hash = ?", (config_hash,)).fetchone()
            if row is not None:
                found = row[0]
            else:
                found = self.conn.execute("INSERT INTO configs (hash) VALUES (?)", (config_hash,)).lastrowid
                self._new_configs.append(config_hash)
            self._configs[config_hash] = found  # type: ignore[assignment]
        self._config_hash, self._config_id = config_hash, found  # type: ignore[assignment]
        return found  # type: ignore[return-value]

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._depth += 1
        name = f"sp{self._depth}"
        self._execute(f"SAVEPOINT {name}")
        claims, configs = dict(self._claims), len(self._new_configs)
        try:
            yield
        except BaseException:
            self._execute(f"ROLLBACK TO {name}")
            self._execute(f"RELEASE {name}")
            self._claims = claims
            for config_hash in self._new_configs[configs:]:
                self._configs.pop(config_hash, None)
            del self._new_configs[configs:]
            self._config_hash, self._config_id = "", 0
            raise
        else:
            self._execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    # The per-event methods run inside `transaction()`, which translates their driver errors;
    # they call the connection directly, with no layer in between.

    # An envelope is kept in the row of the input that claimed it (`stored_inputs.body`, whose
    # partial unique index on (source, id) is the dedupe index): `claim_envelope` holds it until
    # `record_input` writes that row, later in the same event.

    def find_envelope(self, source: str, event_id: str) -> str | None:
        claim = self._claims.get((source, event_id))
        if claim is not None:
            return claim[0]
        rows = self._execute(_CLAIMED, (source, event_id)).fetchall()
        if not rows and self._apart:
            rows = self._execute(_CLAIMED_APART, (source, event_id)).fetchall()
        return rows[0][0] if rows else None

    def claim_envelope(self, source: str, event_id: str, body: str, config_hash: str) -> bool:
        """Remember an envelope; False when its (source, id) was already seen."""
        if self.find_envelope(source, event_id) is not None:
            return False
        self._claims[source, event_id] = (body, config_hash)
        return True

    def forget(self, fact_seq: int | None, source: str, event_id: str) -> None:
        """Undo `claim_envelope` and `add_fact` for an event whose rules failed."""
        if fact_seq is not None:
            self._execute("DELETE FROM stored_facts WHERE seq = ?", (fact_seq,))
        if self._claims.pop((source, event_id), None) is None:  # its input row was written already
            self._execute("UPDATE stored_inputs SET body = NULL WHERE source = ? AND id = ? AND body IS NOT NULL",
                              (source, event_id))

    def has_identity(self, event_type: str, identity: str) -> bool:
        return bool(self._execute("SELECT 1 FROM stored_facts WHERE type = ? AND identity = ?",
                                  (event_type, identity)).fetchall())

    def add_fact(self, row: tuple[Any, ...]) -> int | None:
        """Store a fact (a row in FACT_COLUMNS order); None when a fact with its identity already
        exists (a same-fact duplicate)."""
        cur = self._execute(*_ADD_FACT((*row[:10], self._config(row[10]), pack_time(row[11]))))
        return cur.lastrowid if cur.rowcount == 1 else None

    def insert_fact(self, row: tuple[Any, ...]) -> int:
        return self._execute(  # type: ignore[return-value]
            *_INSERT_FACT((*row[:10], self._config(row[10]), pack_time(row[11])))).lastrowid

    def facts_for_key(self, route_key: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._execute("SELECT type, data FROM stored_facts WHERE route_key = ? ORDER BY seq", (route_key,))
        return [(t, orjson.loads(d)) for t, d in rows]

    def facts_with_identity(self, route_key: str) -> list[tuple[str, dict[str, Any], str | None]]:
        rows = self._execute("SELECT type, data, identity FROM stored_facts WHERE route_key = ? ORDER BY seq",
                                 (route_key,))
        return [(t, orjson.loads(d), i) for t, d, i in rows]

    def route_state(self, route_key: str) -> tuple[str, str | None] | None:
        rows = self._execute("SELECT state, screen FROM stored_routes WHERE route_key = ?", (route_key,)).fetchall()
        return (rows[0][0], rows[0][1]) if rows else None

    def create_route(self, route_key: str, state: str, config_hash: str, at: str) -> None:
        stored_at = pack_time(at)
        self._execute("INSERT INTO stored_routes (route_key, state, screen, version, config, created_at, updated_at)"
                          " VALUES (?, ?, NULL, 0, ?, ?, ?)", (route_key, state, self._config(config_hash), stored_at,
                                                               stored_at))

    def fix_route(self, route_key: str, state: str, screen: str | None, config_hash: str, at: str) -> None:
        """Record a route's new state (route fixation), creating the row if the key is new."""
        stored_at = pack_time(at)
        self._execute(
            "INSERT INTO stored_routes (route_key, state, screen, version, config, created_at, updated_at)"
            " VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (route_key) DO UPDATE SET state = excluded.state,"
            " screen = excluded.screen, version = version + 1, config = excluded.config,"
            " updated_at = excluded.updated_at", (route_key, state, screen, self._config(config_hash), stored_at,
                                                  stored_at))

    def append_history(self, route_key: str, before: str, after: str, cause: dict[str, Any], fact_seq: int,
                       config_hash: str, at: str) -> None:
        self._execute(
            "INSERT INTO stored_history (route_key, from_state, to_state, event_source, event_id, event_type,"
            " fact_seq, config, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (route_key, before, after, cause["source"], cause["id"], cause["type"], fact_seq,
             self._config(config_hash), pack_time(at)))

    def add_actions(self, route_key: str, fact_seq: int, actions: list[dict[str, Any]], consumed: frozenset[str],
                    config_hash: str, at: str) -> None:
        config, stored_at = self._config(config_hash), pack_time(at)
        self._executemany(
            "INSERT INTO stored_actions (route_key, fact_seq, position, type, body, applied, config, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(route_key, fact_seq, i, a["type"], orjson.dumps(a, option=orjson.OPT_SORT_KEYS).decode(),
              int(a["type"] in consumed), config, stored_at) for i, a in enumerate(actions)])

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
        self._execute("UPDATE rejections SET resolved_at = ?, resolved_by_input = ? WHERE seq = ?",
                          (at, input_seq, seq))

    def purge_rejections(self, seqs: list[int]) -> int:
        """Delete these rejections (their bytes); the input log keeps its rows. Returns how many went."""
        removed = 0
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            removed += self._execute(f"DELETE FROM rejections WHERE seq IN ({marks})", chunk).rowcount
        return removed

    def record_input(self, row: tuple[Any, ...]) -> int:
        """Log one input (a row in INPUT_COLUMNS order), with the envelope it claimed."""
        claim = self._claims.pop((row[4], row[5]), None) if self._claims else None
        body = claim[0] if claim is not None else None
        return self._execute(  # type: ignore[return-value]
            *_INSERT_INPUT((*row[:9], self._config(row[9]), pack_time(row[10]), body))).lastrowid

    def add_outbox(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        self._executemany("INSERT INTO stored_outbox (route_key, id, type, body, recorded_at) VALUES (?, ?, ?, ?, ?)",
                              [(k, i, t, b, pack_time(at)) for k, i, t, b, at in rows])

    def set_cursor(self, consumer: str, cursor: str, at: str) -> None:
        self._check_head(cursor, seq_cursor(cursor))
        self.conn.execute("INSERT INTO consumer_cursors (consumer, cursor, updated_at) VALUES (?, ?, ?)"
                          " ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor,"
                          " updated_at = excluded.updated_at", (consumer, cursor, at))

    def take_lease(self, consumer: str, owner: str, now: float, until: float) -> bool:
        self.conn.execute("INSERT OR IGNORE INTO delivery_consumers (consumer, cursor, lease_until) VALUES (?, '', 0)",
                          (consumer,))
        return self.conn.execute("UPDATE delivery_consumers SET lease_owner = ?, lease_until = ? WHERE consumer = ?"
                                 " AND (lease_owner IS ? OR lease_until <= ?)",
                                 (owner, until, consumer, owner, now)).rowcount == 1

    def enqueue_deliveries(self, consumer: str, rows: Sequence[tuple[str, str, str, str]], cursor: str,
                           at: str) -> None:
        seq_cursor(cursor)
        self.conn.executemany("INSERT OR IGNORE INTO deliveries (consumer, id, type, subject, body, status, attempts,"
                              " next_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, 0, ?)",
                              [(consumer, *row, at) for row in rows])
        self.conn.execute("UPDATE delivery_consumers SET cursor = ? WHERE consumer = ?", (cursor, consumer))

    def update_delivery(self, consumer: str, item_id: str, status: str, attempts: int, next_at: float,
                        last_status: int | None, last_answer: str, at: str) -> None:
        self.conn.execute("UPDATE deliveries SET status = ?, attempts = ?, next_at = ?, last_status = ?,"
                          " last_answer = ?, updated_at = ? WHERE consumer = ? AND id = ?",
                          (status, attempts, next_at, last_status, last_answer, at, consumer, item_id))

    def retry_deliveries(self, consumer: str | None, item_id: str | None, at: str) -> int:
        return self.conn.execute("UPDATE deliveries SET status = 'pending', attempts = 0, next_at = 0, updated_at = ?"
                                 " WHERE status = 'failed' AND (? IS NULL OR consumer = ?) AND (? IS NULL OR id = ?)",
                                 (at, consumer, consumer, item_id, item_id)).rowcount

    def set_disabled(self, consumer: str, reason: str | None, at: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO delivery_consumers (consumer, cursor, lease_until) VALUES (?, '', 0)",
                          (consumer,))
        self.conn.execute("UPDATE delivery_consumers SET disabled_at = ?, disabled_reason = ? WHERE consumer = ?",
                          (None if reason is None else at, reason, consumer))

    def record_evaluation(self, route_key: str, evaluated_at: str, config_hash: str, at: str) -> int:
        cur = self.conn.execute("INSERT INTO evaluations (route_key, evaluated_at, config_hash, recorded_at)"
                                " VALUES (?, ?, ?, ?)", (route_key, evaluated_at, config_hash, at))
        return cur.lastrowid  # type: ignore[return-value]


# -- a read-only reader of a database file -------------------------------------------------------------

class SQLiteReader(_SQLiteReads):
    """A webinar-flows database opened so that nothing can be written to it (replay's live
    database, diff's route counts). Its path is escaped into the URI (`#`, `?`, `%`)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(path).is_file():
            raise DatabaseMissing(f"{path}: no such database file")
        try:
            self.conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                                        isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        try:
            refusal = _refusal(self.conn, self.path)
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if refusal is None and version < 1:
                refusal = NotADatabase(f"{path}: not a webinar-flows database (schema version {version})")
            _with_instants(self.conn)
        except sqlite3.Error as exc:
            self.conn.close()
            raise _translate(exc, self.path) from exc
        if refusal is not None:
            self.conn.close()
            raise refusal

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
