"""The PostgreSQL store: the same two ports as store.sqlite, for many processes on one database.

Through psycopg 3, one connection per store, in autocommit mode with explicit transactions
(as the SQLite store runs `BEGIN IMMEDIATE`). What makes many writers safe:

- **Per-key serialisation.** A write transaction takes a transaction-scoped advisory lock per
  route key (`pg_advisory_xact_lock` on a 64-bit hash of the key) before it reads or writes
  anything of that key: the keys a batch names all at once, in sorted order, when the
  transaction begins (so two batches cannot deadlock on them), and any other key it touches
  (an evaluation, a derived fact of another key) when it first touches it. Events of one key
  therefore apply one at a time across every process; other keys run in parallel.
- **Dedupe by unique constraints.** `(source, id)` and `(type, identity)` are unique; a claim is
  `INSERT ... ON CONFLICT DO NOTHING RETURNING`, so whichever transaction commits first wins
  and the other gets the answer a single process would (it waits for the first to finish).
- **Sequence numbers** come from identity columns: unique and increasing in the order they are
  handed out. Unlike SQLite, a rolled-back transaction (or a forgotten fact) leaves a gap. A
  batch (`lock_keys`) reserves its input and fact numbers in one statement right behind its key
  locks (more facts' when those run out; a key locked later drops the facts' it holds): a key's
  facts stay in the order their transactions held the key, and numbers reserved but not used
  leave a gap too.
- **Timeouts**: statement, lock and idle-in-transaction timeouts on every session, so a frozen
  peer cannot hold a key for long: its session is ended and its transaction rolled back.
- **Pipelining.** A write transaction runs in psycopg's pipeline mode: a statement whose answer
  is not read (a route fix, history, actions, the outbox, the locks) is sent without waiting; a
  fetch (a claim's RETURNING, a seq, a SELECT) waits for everything before it, and a rowcount is
  read after a sync. The server runs them in order, so a key's lock still comes before any read
  of it; a failed statement is raised at the next answer or at the commit, and the ROLLBACK runs
  after the pipeline is left (an aborted pipeline would skip it).
- **Rows in bulk.** What nothing reads back at once (history, actions, the outbox, the input log,
  facts with a reserved seq, route fixes) waits in the store and goes as one multi-row INSERT per
  table before a read that could see it, a savepoint, or the commit; route states of a batch's
  keys are read once, behind their locks. A batch then costs about two statements per event
  (the envelope claim and the fact's) instead of nine; a failed bulk row fails the transaction
  at that read or at the commit, as a pipelined statement does. At the commit, the rows that ask
  for no answer (the input log, history, actions, the outbox) go by binary COPY instead, once the
  pipeline is left.
- **Claims from one lookup.** A batch (`prefetch_claims`, right behind its key locks) reads in one
  round trip which of its envelopes, fact identities and rejected inputs exist; the claims answer
  from that, their rows wait with the others and go with a check that each was new. One taken by
  another writer meanwhile (under another key, so no lock kept it out) is a `StoreConflict`: the
  batch runs again and then sees it.
- **Key facts from the batch's lookup.** Behind its key locks a batch also reads the facts of
  every key it locked (in the same round trip); a key's facts, when its rules read them, come from
  that reading, kept up to date by the batch's own writes and forgets (only a holder of the key
  writes its facts) and dropped at a savepoint's rollback. A key the batch did not lock up front
  is read from the server, merged with its facts still waiting, in seq order.

Driver errors become StoreError subclasses chosen by SQLSTATE (or, for a failed connection,
which carries none, by the connection's state): deadlocks, serialisation failures and lock
timeouts are `StoreConflict` (the caller runs the transaction again), a lost or refused
connection is `StoreUnavailable`. Every message names the database by host, port and name
(`describe`), never by its password. The schema is created and migrated on first use under a
transaction-level advisory lock, so processes starting together on an empty database agree.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, repeat
from typing import Any, Self
from urllib.parse import urlsplit

import orjson
import psycopg
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import Format
from psycopg.rows import dict_row

from ..errors import (
    DatabaseMissing,
    NotADatabase,
    StoreBusy,
    StoreConflict,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
)
from .base import (
    FACT_COLUMNS,
    INPUT_COLUMNS,
    HistoryReader,
    Kept,
    KeyStory,
    RejectionFilter,
    Row,
    Store,
    delivery_statuses,
    matches_rejection,
    past_head,
    plain_number,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore", "describe", "is_postgres_url"]

SCHEMA_VERSION = 2
VERSION_TABLE = "webinar_flows_schema"
OUR_TABLES = ("facts", "envelopes", "rejections", "inputs", "routes", "route_history", "actions", "evaluations",
              "outbox", "consumer_cursors")
MIGRATION_LOCK = 0x7766_0001  # the advisory lock key that serialises schema creation
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 60_000
LOCK_TIMEOUT_MS = 30_000  # a route key (or row) held longer than this: StoreConflict, and the batch runs again
IDLE_IN_TRANSACTION_MS = 20_000  # a frozen peer's open transaction is ended after this
PAGE = 5_000  # rows per round trip when reading a whole log


def is_postgres_url(db: object) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def describe(url: str) -> str:
    """The database as messages name it: host, port and name; never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return _describe_unparsable(url)
    hosts = (info.get("host") or info.get("hostaddr") or "").split(",")
    ports = (info.get("port") or "").split(",")
    ports = ports if len(ports) == len(hosts) else ports[:1] * len(hosts)  # one port for every host
    where = ", ".join(f"{host or 'the local socket'}:{port or 5432}" for host, port in zip(hosts, ports, strict=True))
    return _label(info.get("dbname") or info.get("user") or "postgres", where)


def _label(name: str, where: str) -> str:
    return f'PostgreSQL database "{name}" on {where}'


def _describe_unparsable(url: str) -> str:
    """A URL libpq cannot read, named by what a plain URL parser still finds in it (never its
    password: libpq's own message quotes the token it choked on, which may be the password)."""
    try:
        parts = urlsplit(url)
        host, port, name = parts.hostname, parts.port, parts.path.lstrip("/")
    except ValueError:
        return "PostgreSQL database (an unparsable URL)"
    if not host and not name:
        return "PostgreSQL database (an unparsable URL)"
    return _label(name or "postgres", f"{host or 'the local socket'}:{port or 5432} (an unparsable URL)")


def key_lock(route_key: str) -> int:
    """The advisory lock of a route key: a signed 64-bit hash (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(route_key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big", signed=True)


# -- driver errors ------------------------------------------------------------------------------------

_CONFLICT = {"40001", "40P01", "55P03"}  # serialization_failure, deadlock_detected, lock_not_available
_UNAVAILABLE_PREFIXES = ("08", "57P")  # connection exceptions; admin/crash shutdown, cannot connect now
_UNAVAILABLE = {"53300", "57014"}  # too many connections; a statement cancelled (statement_timeout)


def _translate(exc: BaseException, where: str, conn: psycopg.Connection | None = None) -> StoreError:
    """A driver error as the StoreError subclass its SQLSTATE (or the connection's state) calls for."""
    state = getattr(exc, "sqlstate", None) or ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state in _CONFLICT:
        return StoreConflict(f"{where}: a concurrent transaction collided with this one: {text}")
    if state == "57014":
        return StoreBusy(f"{where}: a statement ran over its timeout: {text}")
    if state.startswith(_UNAVAILABLE_PREFIXES) or state in _UNAVAILABLE or (
            isinstance(exc, psycopg.OperationalError) and not state) or (conn is not None and conn.broken):
        return StoreUnavailable(f"{where}: the database server cannot be reached: {text}")
    if state.startswith("53"):
        return StoreFull(f"{where}: the database server is out of resources: {text}")
    if state in ("25006", "42501"):
        return StoreReadOnly(f"{where}: cannot write there (read-only or not permitted): {text}")
    if state == "3D000":
        return DatabaseMissing(f"{where}: the database does not exist (create it first): {text}")
    if state.startswith("28"):
        return StoreError(f"{where}: the server refused the login: {text}")
    return StoreError(f"{where}: database error: {text}")


_MISSING_DB = re.compile(r'database "[^"]*" does not exist')
_AUTH = re.compile(r"authentication failed|password|no pg_hba.conf entry", re.IGNORECASE)


def _connect_error(exc: psycopg.Error, where: str) -> StoreError:
    """A failed connection carries no SQLSTATE: tell a missing database and a refused login apart."""
    text = str(exc).strip()
    if _MISSING_DB.search(text):
        return DatabaseMissing(f"{where}: the database does not exist (create it first, e.g. createdb; "
                               "webinar-flows creates its tables, not the database)")
    if _AUTH.search(text):
        return StoreError(f"{where}: the server refused the login (check the user and password)")
    first = text.splitlines()[0] if text else type(exc).__name__
    return StoreUnavailable(f"{where}: cannot connect: {first}")


# -- the schema ---------------------------------------------------------------------------------------

def _identity(column: str = "seq") -> str:
    return f"{column} BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"


MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the schema of SQLite's version 3, in PostgreSQL types
        f"""CREATE TABLE facts ({_identity()},
            source TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
            route_key TEXT, identity TEXT, data TEXT NOT NULL,
            derived INTEGER NOT NULL, rule_id TEXT, cause_seq BIGINT, evaluation_seq BIGINT,
            config_hash TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
        "CREATE UNIQUE INDEX facts_identity ON facts (type, identity) WHERE identity IS NOT NULL",
        "CREATE INDEX facts_route_key ON facts (route_key, seq) WHERE route_key IS NOT NULL",
        """CREATE TABLE envelopes (source TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
            config_hash TEXT NOT NULL, PRIMARY KEY (source, id))""",
        f"""CREATE TABLE rejections ({_identity()},
            raw_sha256 TEXT NOT NULL UNIQUE, raw BYTEA NOT NULL, raw_size BIGINT NOT NULL,
            truncated INTEGER NOT NULL, reason TEXT NOT NULL, errors TEXT NOT NULL,
            source TEXT, id TEXT, type TEXT,
            config_hash TEXT NOT NULL, first_seen_at TEXT NOT NULL, last_seen_at TEXT NOT NULL,
            resolved_at TEXT, resolved_by_input BIGINT)""",
        "CREATE INDEX rejections_open ON rejections (seq) WHERE resolved_at IS NULL",
        f"""CREATE TABLE inputs ({_identity()},
            origin TEXT, line BIGINT, status TEXT NOT NULL, reason TEXT,
            source TEXT, id TEXT, type TEXT, fact_seq BIGINT, rejection_seq BIGINT,
            config_hash TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
        """CREATE TABLE routes (route_key TEXT PRIMARY KEY, state TEXT NOT NULL, screen TEXT,
            version INTEGER NOT NULL, config_hash TEXT NOT NULL, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        f"""CREATE TABLE route_history ({_identity()},
            route_key TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL,
            event_source TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL,
            fact_seq BIGINT NOT NULL, config_hash TEXT NOT NULL, at TEXT NOT NULL)""",
        "CREATE INDEX route_history_fact ON route_history (fact_seq)",
        f"""CREATE TABLE actions ({_identity()},
            route_key TEXT NOT NULL, fact_seq BIGINT NOT NULL, position INTEGER NOT NULL,
            type TEXT NOT NULL, body TEXT NOT NULL, applied INTEGER NOT NULL,
            config_hash TEXT NOT NULL, created_at TEXT NOT NULL)""",
        "CREATE INDEX actions_route_key ON actions (route_key, seq)",
        f"""CREATE TABLE evaluations ({_identity()},
            route_key TEXT NOT NULL, evaluated_at TEXT NOT NULL,
            config_hash TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
        "CREATE INDEX evaluations_route_key ON evaluations (route_key, seq)",
        # The outbox is read in the order of its writers' transaction ids, and only below the
        # oldest transaction still running: with many writers, seq order is not commit order, and
        # a reader that went by seq alone would pass an item whose transaction commits later.
        f"""CREATE TABLE outbox ({_identity()},
            tx XID8 NOT NULL DEFAULT pg_current_xact_id(),
            route_key TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
            body TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
        "CREATE INDEX outbox_order ON outbox (tx, seq)",
        """CREATE TABLE consumer_cursors (consumer TEXT PRIMARY KEY, cursor TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
    ),
    (  # 2: push delivery, as SQLite's m0005_deliveries
        """CREATE TABLE delivery_consumers (consumer TEXT PRIMARY KEY, cursor TEXT NOT NULL,
            disabled_at TEXT, disabled_reason TEXT, lease_owner TEXT, lease_until DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE deliveries ({_identity()},
            consumer TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, subject TEXT NOT NULL,
            body TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL, next_at DOUBLE PRECISION NOT NULL,
            last_status INTEGER, last_answer TEXT, updated_at TEXT NOT NULL, UNIQUE (consumer, id))""",
        "CREATE INDEX deliveries_pending ON deliveries (consumer, seq) WHERE status = 'pending'",
        "CREATE INDEX deliveries_failed ON deliveries (seq) WHERE status = 'failed'",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"


_FACT_VALUES = ", ".join(["%s"] * len(FACT_COLUMNS))
# The existence check first: a duplicate then draws no number from the sequence.
_ADD_FACT = (f"INSERT INTO facts ({', '.join(FACT_COLUMNS)}) SELECT {_FACT_VALUES}"
             " WHERE %s::text IS NULL OR NOT EXISTS (SELECT 1 FROM facts WHERE type = %s AND identity = %s)"
             " ON CONFLICT (type, identity) WHERE identity IS NOT NULL DO NOTHING RETURNING seq")
_INSERT_FACT = _insert("facts", FACT_COLUMNS) + " RETURNING seq"
_INSERT_INPUT = _insert("inputs", INPUT_COLUMNS) + " RETURNING seq"
# The same with its seq given (one the batch reserved, see `_RESERVE`).
_ADD_FACT_AT = (f"INSERT INTO facts (seq, {', '.join(FACT_COLUMNS)}) SELECT %s, {_FACT_VALUES}"
                " WHERE %s::text IS NULL OR NOT EXISTS (SELECT 1 FROM facts WHERE type = %s AND identity = %s)"
                " ON CONFLICT (type, identity) WHERE identity IS NOT NULL DO NOTHING RETURNING seq")
# One statement: an update first (a rejection seen again draws no number from the sequence), the
# insert only when it found nothing, and the insert's conflict (a concurrent first sighting) an update.
_RECORD_REJECTION = (
    "WITH seen AS (UPDATE rejections SET reason = %(reason)s, errors = %(errors)s, config_hash = %(config_hash)s,"
    " last_seen_at = %(at)s, resolved_at = NULL, resolved_by_input = NULL WHERE raw_sha256 = %(raw_sha256)s"
    " RETURNING seq), new AS (INSERT INTO rejections AS r (raw_sha256, raw, raw_size, truncated, reason, errors,"
    " source, id, type, config_hash, first_seen_at, last_seen_at) SELECT %(raw_sha256)s::text, %(raw)s::bytea,"
    " %(raw_size)s::bigint, %(truncated)s::integer, %(reason)s::text, %(errors)s::text, %(source)s::text,"
    " %(id)s::text, %(type)s::text, %(config_hash)s::text, %(at)s::text, %(at)s::text"
    " WHERE NOT EXISTS (SELECT 1 FROM seen)"
    " ON CONFLICT (raw_sha256) DO UPDATE SET reason = excluded.reason, errors = excluded.errors,"
    " config_hash = excluded.config_hash, last_seen_at = excluded.last_seen_at,"
    " resolved_at = NULL, resolved_by_input = NULL RETURNING seq)"
    " SELECT seq FROM seen UNION ALL SELECT seq FROM new")

# -- rows a write transaction sends in bulk ---------------------------------------------------------
# Rows that nothing reads back at once (route history, actions, the outbox, the input log, facts
# whose seq the batch reserved, route fixes) wait in the store and go to the server as one INSERT
# per table: a column of values per array, unnested in order. They are sent before any read that
# could see them, before a savepoint and before the commit; statements per event, the cost on
# both sides of the socket, fall from about 9 to about 2 in a batch.

_T, _B, _I = "text", "bigint", "integer"
_BULK: dict[str, tuple[tuple[str, str], ...]] = {
    "facts": (("seq", _B), ("source", _T), ("id", _T), ("type", _T), ("route_key", _T), ("identity", _T),
              ("data", _T), ("derived", _I), ("rule_id", _T), ("cause_seq", _B), ("evaluation_seq", _B),
              ("config_hash", _T), ("recorded_at", _T)),
    "inputs": (("seq", _B), ("origin", _T), ("line", _B), ("status", _T), ("reason", _T), ("source", _T),
               ("id", _T), ("type", _T), ("fact_seq", _B), ("rejection_seq", _B), ("config_hash", _T),
               ("recorded_at", _T)),
    "route_history": (("route_key", _T), ("from_state", _T), ("to_state", _T), ("event_source", _T),
                      ("event_id", _T), ("event_type", _T), ("fact_seq", _B), ("config_hash", _T), ("at", _T)),
    "actions": (("route_key", _T), ("fact_seq", _B), ("position", _I), ("type", _T), ("body", _T),
                ("applied", _I), ("config_hash", _T), ("created_at", _T)),
    "outbox": (("route_key", _T), ("id", _T), ("type", _T), ("body", _T), ("recorded_at", _T)),
}
assert tuple(c for c, _ in _BULK["facts"][1:]) == FACT_COLUMNS
assert tuple(c for c, _ in _BULK["inputs"][1:]) == INPUT_COLUMNS
_ROUTE_COLUMNS = (("route_key", _T), ("state", _T), ("screen", _T), ("version", _I), ("config_hash", _T),
                  ("created_at", _T), ("updated_at", _T))


# -- how the bulk rows' columns travel ------------------------------------------------------------
# A text column goes as one string, its values joined by a control character none of them holds
# (and split by the server's string_to_array, with another one standing for NULL): one join in
# C where an array costs a Python call per value. An integer column goes as a binary array packed
# by struct, where psycopg's looks at every value to choose its width. Both cost about a tenth of
# psycopg's arrays in the worker (docs/PERFORMANCE-postgres.md). A column that no separator fits
# (or holds something else than str) goes as psycopg's binary array, in the statement's other form.

_SEPARATORS = ("\x1f", "\x1e", "\x1d", "\x1c", "\x1b", "\x1a", "\x19", "\x18", "\x17", "\x16")


def _joined(values: Sequence[Any]) -> tuple[str, str, str | None] | None:
    """(text, separator, null marker) that string_to_array turns back into `values`, or None."""
    null = None
    if None in values:
        null = next((m for m in _SEPARATORS if m not in values), None)
        if null is None:
            return None
        values = [null if v is None else v for v in values]
    try:
        for sep in _SEPARATORS:
            if sep != null:
                text = sep.join(values)
                if text.count(sep) == len(values) - 1:
                    return (text, sep, null) if text else None  # "" would split into no value at all
    except TypeError:  # not all str
        return None
    return None


_ARRAY_HEAD = struct.Struct(">iiIii")  # dimensions, has nulls, element type, length, lower bound
_NULL_ITEM = b"\xff\xff\xff\xff"


class _BigintArray(bytes):
    """A bigint[] already in PostgreSQL's binary form."""


class _IntegerArray(bytes):
    """An integer[] already in PostgreSQL's binary form."""


class _PackedDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return obj  # type: ignore[no-any-return]


class _BigintArrayDumper(_PackedDumper):
    oid = 1016  # int8[]


class _IntegerArrayDumper(_PackedDumper):
    oid = 1007  # int4[]


_ITEM = {_B: (20, 8, "q", struct.Struct(">iq").pack, _BigintArray),
         _I: (23, 4, "i", struct.Struct(">ii").pack, _IntegerArray)}


def _packed(values: Sequence[Any], kind: str) -> Any:
    """An integer column as a binary array (`kind` bigint or integer), or a list for psycopg."""
    oid, size, code, pack, wrap = _ITEM[kind]
    n = len(values)
    nulls = values.count(None)
    head = _ARRAY_HEAD.pack(1, int(nulls > 0), oid, n, 1)
    try:
        if nulls == n:
            return wrap(head + _NULL_ITEM * n)
        if nulls:
            return wrap(head + b"".join(_NULL_ITEM if v is None else pack(size, v) for v in values))
        return wrap(head + struct.pack(">" + ("i" + code) * n, *chain.from_iterable(zip(repeat(size), values))))
    except struct.error:  # out of range: psycopg's array, and the server's error
        return list(values)


class _Bulk:
    """An INSERT of many rows, given as one value per column and unnested in order (an identity
    column numbers the rows in it); and the same INSERT for one row, which a few rows go as."""

    def __init__(self, table: str, columns: tuple[tuple[str, str], ...], tail: str = ""):
        self.columns = columns
        names = ", ".join(c for c, _ in columns)
        self.sql = {joined: f"INSERT INTO {table} ({names}) SELECT {names} FROM unnest({self._arrays(joined)})"
                            f" WITH ORDINALITY AS x({names}, o) ORDER BY o{tail}" for joined in (True, False)}
        self.row = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))}){tail}"

    def _arrays(self, joined: bool) -> str:
        return ", ".join("string_to_array(%s::text, %s::text, %s::text)" if joined and t == _T else f"%b::{t}[]"
                         for _, t in self.columns)

    def execute(self, cur: psycopg.Cursor, rows: list[tuple[Any, ...]]) -> None:
        """Queue `rows` as one statement: text columns joined, integer ones packed; when a text
        column cannot be joined, every column as psycopg's binary array."""
        params: list[Any] = []
        for (_, kind), values in zip(self.columns, zip(*rows, strict=True), strict=True):
            if kind == _T:
                joined = _joined(values)
                if joined is None:
                    cur.execute(self.sql[False], [list(column) for column in zip(*rows, strict=True)])
                    return
                params += joined
            else:
                params.append(_packed(values, kind) if kind in _ITEM else list(values))
        cur.execute(self.sql[True], params)


# Tables whose rows a batch sends at its commit by binary COPY, where nothing asks for an answer
# (no conflict, nothing returned): psycopg formats a row in C, and the server stores it without an
# executor. COPY does not run in a pipeline, so the commit leaves it first (one wait more, and one
# per table, for a batch: a few events send their rows as before).
_COPIED = ("inputs", "route_history", "actions", "outbox")
# Rows from which one statement of arrays costs less than a pipelined statement per row: psycopg
# adapts each array for about 5 us, a row for about 10 (a commit per event sends one or two rows).
BULK_FROM = 8
_INSERTS = {table: _Bulk(table, columns) for table, columns in _BULK.items()}
# A batch's route writes, one row per key: `version` holds how many fixes it made (0 for a new
# route with none), so a route that existed is version + that many, one made now that many.
_FIX_TAIL = (" ON CONFLICT (route_key) DO UPDATE SET state = excluded.state, screen = excluded.screen,"
             " version = r.version + excluded.version, config_hash = excluded.config_hash,"
             " updated_at = excluded.updated_at")
_CREATE_ROUTES = _Bulk("routes", _ROUTE_COLUMNS)
_FIX_ROUTES = _Bulk("routes AS r", _ROUTE_COLUMNS, _FIX_TAIL)
# Seqs for a batch's facts and inputs, drawn after its key locks: numbers drawn before a key's lock
# could sort a fact before those of the transaction that held the key first.
_RESERVE = ("SELECT ARRAY(SELECT nextval(s.f) FROM generate_series(1, %s)),"
            " ARRAY(SELECT nextval(s.i) FROM generate_series(1, %s))"
            " FROM (SELECT pg_get_serial_sequence('facts', 'seq')::regclass AS f,"
            " pg_get_serial_sequence('inputs', 'seq')::regclass AS i) AS s")
FACT_SEQS_MORE = 64  # seqs reserved at once when a batch's run out (unused ones leave a gap)
# Fact seqs a batch reserves beyond one per event, for the facts its rules derive: a batch that runs
# out waits for more (a round trip), one left over costs a gap and about 1 us of server time.
FACT_SEQS_EXTRA = 4  # one more per this many events
# -- claims a batch answers from one lookup (`prefetch_claims`) ------------------------------------
# Which of a batch's envelopes, fact identities and rejected inputs exist, read in one round trip
# behind its key locks (the rejections' numbers for new digests drawn in the same statement).
# The claims then answer from it and their rows wait with the others; they go with a check that
# each was new (RETURNING one row per row sent): another writer, under another key, may have
# taken one meanwhile, and the batch then runs again (StoreConflict).
_ENVELOPES_SEEN = ("SELECT e.source, e.id, e.body FROM unnest(%b::text[], %b::text[]) AS x(source, id)"
                   " JOIN envelopes e ON e.source = x.source AND e.id = x.id")
_IDENTITIES_SEEN = ("SELECT f.type, f.identity FROM unnest(%b::text[], %b::text[]) AS x(type, identity)"
                    " JOIN facts f ON f.type = x.type AND f.identity = x.identity WHERE f.identity IS NOT NULL")
_REJECTIONS_SEEN = (
    "WITH d AS (SELECT DISTINCT x FROM unnest(%b::text[]) AS x),"
    " seen AS (SELECT r.raw_sha256, r.seq FROM d JOIN rejections r ON r.raw_sha256 = d.x)"
    " SELECT ARRAY(SELECT raw_sha256 FROM seen), ARRAY(SELECT seq FROM seen),"
    " ARRAY(SELECT nextval(pg_get_serial_sequence('rejections', 'seq')::regclass) FROM d"
    " WHERE d.x NOT IN (SELECT raw_sha256 FROM seen))")
_NEXT_REJECTION_SEQ = "SELECT nextval(pg_get_serial_sequence('rejections', 'seq')::regclass)"
_CHECKED = " ON CONFLICT DO NOTHING RETURNING 1"
_CLAIM_ENVELOPES = _Bulk("envelopes", (("source", _T), ("id", _T), ("body", _T), ("config_hash", _T)),
                                _CHECKED)
_CLAIM_FACTS = _Bulk("facts", _BULK["facts"], _CHECKED)
_CLAIM_REJECTIONS = _Bulk(
    "rejections", (("seq", _B), ("raw_sha256", _T), ("raw", "bytea"), ("raw_size", _B), ("truncated", _I),
                   ("reason", _T), ("errors", _T), ("source", _T), ("id", _T), ("type", _T), ("config_hash", _T),
                   ("first_seen_at", _T), ("last_seen_at", _T)), _CHECKED)
_SEEN_AGAIN = ("UPDATE rejections AS r SET reason = x.reason, errors = x.errors, config_hash = x.config_hash,"
               " last_seen_at = x.at, resolved_at = NULL, resolved_by_input = NULL"
               " FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[])"
               " AS x(seq, reason, errors, config_hash, at) WHERE r.seq = x.seq RETURNING 1")
_REJECTION_COLUMNS = ("seq, reason, errors, source, id, type, raw_size, raw_sha256, truncated, first_seen_at,"
                      " last_seen_at, config_hash, resolved_at, resolved_by_input")


def _outbox_cursor(cursor: str) -> tuple[int, int]:
    """(transaction id, seq) of an outbox cursor this store gave ("" is the beginning)."""
    if cursor == "":
        return 0, 0
    if not isinstance(cursor, str):
        raise ValueError(f"{cursor!r} is not an outbox cursor of this database")
    tx, dot, seq = cursor.partition(".")
    if not dot or not plain_number(tx, 20) or not plain_number(seq, 19):
        raise ValueError(f"{cursor!r} is not an outbox cursor of this database")
    return int(tx), int(seq)


class PostgresStore(Store, HistoryReader):
    """The PostgreSQL store: one connection, used by one thread. `url` is a libpq URL
    (postgresql:// or postgres://); the database must exist, its tables are made on first use."""

    def __init__(self, url: str, *, synchronous: str = "NORMAL", create: bool = True, read_only: bool = False):
        self.url = url
        self.path = describe(url)  # what messages name (the SQLite store's attribute of the same role)
        self._synchronous = synchronous.upper()
        self._read_only = read_only
        self._in_tx = False
        self._locked: set[str] = set()
        self._depth = 0
        self._pipe: psycopg.Pipeline | None = None  # the write transaction's pipeline, while one is open
        self._reset_batch()
        self.conn: psycopg.Connection | None = None
        self._connect()
        try:
            self._ensure_schema(create)
        except BaseException:
            self._close_quietly()
            raise

    # -- connection ------------------------------------------------------------------------------

    def _conninfo(self) -> str:
        info = conninfo_to_dict(self.url)
        options = [info.pop("options", "") or "",
                   f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", f"-c lock_timeout={LOCK_TIMEOUT_MS}",
                   f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"]
        if self._synchronous == "OFF":
            options.append("-c synchronous_commit=off")
        if self._read_only:
            options.append("-c default_transaction_read_only=on")
        info.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        info.setdefault("application_name", "webinar-flows")
        for name, value in (("keepalives", "1"), ("keepalives_idle", "10"), ("keepalives_interval", "5"),
                            ("keepalives_count", "3")):
            info.setdefault(name, value)
        return make_conninfo(**info, options=" ".join(o for o in options if o))

    def _connect(self) -> None:
        try:
            conninfo = self._conninfo()
        except psycopg.Error as exc:
            raise StoreError(f"{self.path}: not a usable PostgreSQL URL (write it as postgresql://USER:PASSWORD@HOST:"
                             "PORT/DBNAME, with a % or @ in the password written %25 or %40)") from None
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise _connect_error(exc, self.path) from None
        for packed, dumper in ((_BigintArray, _BigintArrayDumper), (_IntegerArray, _IntegerArrayDumper)):
            self.conn.adapters.register_dumper(packed, dumper)
        self.cur = self.conn.cursor()

    def _usable(self) -> bool:
        return self.conn is not None and not self.conn.closed and not self.conn.broken

    def _reconnect(self) -> None:
        """A new session after a lost one (a database restart, a dropped connection)."""
        self._close_quietly()
        self._connect()

    def _close_quietly(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        self._close_quietly()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_schema(self, create: bool) -> None:
        try:
            version = self._version()
            if version == SCHEMA_VERSION:
                return
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: the database has schema version {version}, newer than this "
                                 f"webinar-flows understands ({SCHEMA_VERSION}); upgrade webinar-flows")
            if not create or self._read_only:
                if version is None:
                    self._refuse_foreign_tables()
                raise DatabaseMissing(f"{self.path}: the database holds no webinar-flows tables yet "
                                      "(process some events first, or check --db / $WEBINAR_FLOWS_DB)")
            self._migrate()
        except psycopg.Error as exc:
            raise _translate(exc, self.path, self.conn) from None

    def _version(self) -> int | None:
        assert self.conn is not None
        if not self._exists(VERSION_TABLE):
            return None
        row = self.conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _exists(self, table: str) -> bool:
        """Whether the schema in use holds `table`: read from the catalog with a fresh snapshot
        (to_regclass may answer from a cache an advisory lock does not refresh)."""
        assert self.conn is not None
        return bool(self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = current_schema())",
            (table,)).fetchone()[0])

    def _refuse_foreign_tables(self) -> None:
        """Tables named as ours without our version table are someone else's: never touch them
        (and never advise processing events into them)."""
        taken = [t for t in OUR_TABLES if self._exists(t)]
        if taken:
            raise NotADatabase(f"{self.path}: not a webinar-flows database (it holds tables named "
                               f"{', '.join(taken)} without webinar-flows' schema version); use another "
                               "database or schema")

    def _migrate(self) -> None:
        """Create or upgrade the schema; processes starting together wait for the first one."""
        assert self.conn is not None
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            version = self._version()
            if version is None:
                self._refuse_foreign_tables()
                self.conn.execute(f"CREATE TABLE {VERSION_TABLE} (version INTEGER NOT NULL,"
                                  " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                version = 0
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    self.conn.execute(statement)
                self.conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (number,))

    # -- transactions ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction. The route keys it writes are locked by `lock_keys` (all at once,
        sorted) or, for a key it names no earlier, when first touched."""
        if self._in_tx:
            raise StoreError(f"{self.path}: a transaction is already open (transactions do not nest)")
        if not self._usable():
            self._reconnect()
        self._in_tx = True
        self._locked = set()
        assert self.conn is not None
        pipeline = self.conn.pipeline()
        try:
            try:
                self._pipe = pipeline.__enter__()
                self.cur.execute("BEGIN")
            except psycopg.Error as exc:
                self._end_pipeline(pipeline, quietly=True)
                raise _translate(exc, self.path, self.conn) from None
            try:
                yield
                copied = self._take_copied()
                self._flush()
                if copied:
                    self._end_pipeline(pipeline)  # COPY runs outside a pipeline: a queued statement's error is raised here
                    self._copy(copied)
                self.cur.execute("COMMIT")
                self._end_pipeline(pipeline)  # the last sync: the COMMIT's (or any queued statement's) error is raised here
            except BaseException as exc:
                self._end_pipeline(pipeline, quietly=True)
                self._rollback_quietly()
                if isinstance(exc, psycopg.Error):
                    raise _translate(exc, self.path, self.conn) from None
                raise
        finally:
            self._pipe = None
            self._in_tx = False
            self._locked = set()
            self._reset_batch()

    # -- what a write transaction holds back ------------------------------------------------------
    # Buffered rows (`_rows`, `_route_rows`), the route states of its locked keys (`_routes`: read
    # once after the locks, then kept up to date by its own writes; None for no route), and seqs
    # reserved for its facts and inputs. A lookup still on its way (`_pending`) is read at first use,
    # so that it shares a round trip with the first answer the batch waits for anyway.

    def _reset_batch(self) -> None:
        self._rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _BULK}
        self._fact_marks: set[Any] = set()  # route keys and (type, identity) of buffered facts
        self._route_rows: dict[str, list[Any]] = {}  # key -> [created, state, screen, fixes, hash, created_at, at]
        self._routes: dict[str, tuple[str, str | None] | None] = {}
        # key -> its facts as (seq, type, data, identity) in seq order, read behind the batch's locks
        # and kept up to date by the batch's own writes (only a holder of the key writes its facts)
        self._key_facts_of: dict[str, list[tuple[int, str, str, str | None]]] = {}
        self._seqs: dict[str, deque[int]] = {"facts": deque(), "inputs": deque()}
        self._pending: list[tuple[str, psycopg.Cursor, Any]] = []
        self._more_facts = False  # whether a batch that ran out of fact seqs reserves more
        self._forget_claims()
        self._claiming = False  # whether buffered facts go with a check (a prefetch answered claims)

    def _forget_claims(self) -> None:
        """Drop what a prefetch read and the claims buffered on it (a savepoint's rollback, the end)."""
        # (source, id) -> the stored body, None when free; (type, identity) -> whether a fact holds
        # it; sha256 -> the rejection's seq, None when new. A key absent was not prefetched.
        self._envelopes: dict[tuple[str, str], str | None] = {}
        self._identities: dict[tuple[str, str], bool] = {}
        self._rejected: dict[str, int | None] = {}
        self._claim_rows: list[tuple[str, str, str, str]] = []
        self._fact_claims: dict[int, tuple[str, str]] = {}  # seq of a buffered claimed fact -> its identity
        self._rejection_rows: list[tuple[Any, ...]] = []
        self._seen_again: dict[int, tuple[Any, ...]] = {}  # seq -> the rejection's new reason, errors, ...
        self._rejection_seqs: deque[int] = deque()

    def _flush(self, *tables: str) -> None:
        """Send the buffered rows of `tables` (all of them and the claims by default), one statement
        per table; claimed rows are checked before it returns."""
        checks: list[tuple[psycopg.Cursor, int]] = []
        if not tables:
            self._flush_claims(checks)
        for table in tables or (*_BULK, "routes"):
            if table == "routes":
                self._flush_routes()
            elif self._rows[table]:
                rows, self._rows[table] = self._rows[table], []
                if table == "facts":
                    self._fact_marks = set()
                    if self._claiming:
                        checks.append(self._send_checked(_CLAIM_FACTS, rows))
                        continue
                self._send(_INSERTS[table], rows)
        self._check(checks)

    def _take_copied(self) -> dict[str, list[tuple[Any, ...]]]:
        """At the commit: the buffered rows of the tables that take them by COPY (see `_COPIED`)."""
        copied = {}
        for table in _COPIED:
            if len(self._rows[table]) >= BULK_FROM:
                copied[table], self._rows[table] = self._rows[table], []
        return copied

    def _copy(self, copied: dict[str, list[tuple[Any, ...]]]) -> None:
        for table, rows in copied.items():
            columns = _BULK[table]
            with self.cur.copy(f"COPY {table} ({', '.join(c for c, _ in columns)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([t for _, t in columns])
                for row in rows:
                    copy.write_row(row)

    def _flush_claims(self, checks: list[tuple[psycopg.Cursor, int]]) -> None:
        """Queue the buffered envelope and rejection claims (see `_check`)."""
        if self._claim_rows:
            rows, self._claim_rows = self._claim_rows, []
            checks.append(self._send_checked(_CLAIM_ENVELOPES, rows))
        if self._rejection_rows:
            rows, self._rejection_rows = self._rejection_rows, []
            checks.append(self._send_checked(_CLAIM_REJECTIONS, rows))
        if self._seen_again:
            rows, self._seen_again = list(self._seen_again.values()), {}
            checks.append(self._send_checked(_SEEN_AGAIN, rows))

    def _send_checked(self, sql: _Bulk | str, rows: list[tuple[Any, ...]]) -> tuple[psycopg.Cursor, int]:
        """Queue rows as one statement that returns a row for each one it wrote; read by `_check`."""
        cur = self.conn.cursor()  # type: ignore[union-attr]
        if isinstance(sql, _Bulk):
            sql.execute(cur, rows)
        else:
            cur.execute(sql, [list(column) for column in zip(*rows, strict=True)])
        return cur, len(rows)

    def _check(self, checks: list[tuple[psycopg.Cursor, int]]) -> None:
        """Every claimed row was written (one wait for all): a claim answered from the prefetch that
        another writer took meanwhile is a conflict, and the batch runs again."""
        for cur, sent in checks:
            if len(cur.fetchall()) != sent:
                raise StoreConflict(f"{self.path}: another writer claimed an envelope, fact or rejection this "
                                    "batch had found free; the batch runs again")

    def _send(self, inserts: _Bulk, rows: list[tuple[Any, ...]]) -> None:
        """Queue rows as one INSERT of arrays, or as a statement each when they are few."""
        if len(rows) >= BULK_FROM:
            inserts.execute(self.cur, rows)
        else:
            self.cur.executemany(inserts.row, rows)

    def _flush_routes(self) -> None:
        if not self._route_rows:
            return
        made: list[tuple[Any, ...]] = []
        fixed: list[tuple[Any, ...]] = []
        for key, (created, *values) in self._route_rows.items():
            (made if created else fixed).append((key, *values))
        self._route_rows = {}
        for inserts, rows in ((_CREATE_ROUTES, made), (_FIX_ROUTES, fixed)):
            if rows:
                self._send(inserts, rows)

    def _discard(self) -> None:
        """Forget what a rolled-back savepoint buffered (everything before it was sent at its start)."""
        self._rows = {table: [] for table in _BULK}
        self._fact_marks = set()
        self._route_rows = {}
        self._routes = {}
        self._key_facts_of = {}  # read again: the savepoint's facts are gone
        self._forget_claims()  # everything before the savepoint was sent: its claims are the server's

    def _reserve(self, facts: int, inputs: int) -> None:
        """Draw seqs for the batch's facts and inputs, to be read with the next answer."""
        cur = self.conn.cursor()  # type: ignore[union-attr]
        cur.execute(_RESERVE, (facts, inputs))
        self._pending.append(("seqs", cur, None))

    def _settle(self) -> None:
        """Read the lookups still on their way: reserved seqs, the locked keys' route states."""
        pending, self._pending = self._pending, []
        for kind, cur, keys in pending:
            if kind == "seqs":
                facts, inputs = cur.fetchone()
                self._seqs["facts"].extend(sorted(facts))
                self._seqs["inputs"].extend(sorted(inputs))
            elif kind == "facts":
                facts: dict[str, list[tuple[int, str, str, str | None]]] = {key: [] for key in keys}
                for key, *fact in cur.fetchall():
                    facts[key].append(tuple(fact))  # type: ignore[arg-type]
                for key, rows in facts.items():
                    self._key_facts_of.setdefault(key, rows)
            else:
                found = {k: (state, screen) for k, state, screen in cur.fetchall()}
                for key in keys:
                    self._routes.setdefault(key, found.get(key))

    def _take(self, table: str) -> int | None:
        """A reserved seq for a row of `table`, or None: the row then draws its own."""
        if self._pipe is None:
            return None
        if self._pending:
            self._settle()
        pool = self._seqs[table]
        if not pool and table == "facts" and self._more_facts:
            self._reserve(FACT_SEQS_MORE, 0)
            self._settle()
        return pool.popleft() if pool else None

    def _end_pipeline(self, pipeline: Any, *, quietly: bool = False) -> None:
        """Leave pipeline mode: send what is queued, sync, and read every answer (the first error of
        a queued statement is raised here). `quietly`, after an error: the pipeline's own errors are
        dropped (the caller raises the first one), and a session left in pipeline mode is closed,
        so that the ROLLBACK that follows runs outside any pipeline (an aborted one would skip it)."""
        pipe, self._pipe = self._pipe, None
        if not quietly:
            if pipe is not None:
                pipeline.__exit__(None, None, None)
            return
        try:
            if pipe is not None:
                pipeline.__exit__(None, None, None)
        except psycopg.Error:
            pass
        if self.conn is not None and not self.conn.closed and \
                self.conn.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
            self._close_quietly()  # a new session next time, never one in a half-known state

    def _rowcount(self, cur: psycopg.Cursor) -> int:
        """The rowcount of the statement just run on `cur`: in a pipeline, only known after a sync."""
        if self._pipe is not None:
            self._pipe.sync()
        return cur.rowcount

    def _rollback_quietly(self) -> None:
        try:
            if self._usable():
                self.cur.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the original error matters more than a failed rollback

    def lock_keys(self, route_keys: Iterable[str | None]) -> None:
        """Lock a batch's route keys in one statement, in the order of their lock numbers: every
        process takes any two keys in the same order, so two batches never deadlock on them.

        In a write transaction of BULK_FROM events or more, behind the locks and without waiting:
        the keys' route states, and a seq for each event's input row and for each keyed event's
        fact (one entry per event)."""
        keys = list(route_keys)
        wanted = {k for k in keys if k is not None} - self._locked
        if not self._in_tx:
            return
        if wanted:
            self.cur.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k",
                             (sorted({key_lock(k) for k in wanted}),))
            self._locked |= wanted
        if self._pipe is None or len(keys) < BULK_FROM:
            return  # a few events: a lookup each costs less than the batch's (a commit per event)
        if self._pending:
            self._settle()
        self._seqs["facts"].clear()  # drawn before these locks
        if wanted:
            cur = self.conn.cursor()  # type: ignore[union-attr]
            cur.execute("SELECT route_key, state, screen FROM routes WHERE route_key = ANY(%b::text[])",
                        (sorted(wanted),))
            self._pending.append(("routes", cur, wanted))
            cur = self.conn.cursor()  # type: ignore[union-attr]
            cur.execute("SELECT route_key, seq, type, data, identity FROM facts WHERE route_key = ANY(%b::text[])"
                        " ORDER BY route_key, seq", (sorted(wanted),))
            self._pending.append(("facts", cur, wanted))
        self._reserve(len(keys) + len(keys) // FACT_SEQS_EXTRA, len(keys))  # an event without a key has a fact too
        self._more_facts = True

    def _lock(self, route_key: str | None) -> None:
        """Inside a transaction: hold the key's lock before reading or writing what is under it."""
        if route_key is not None and self._in_tx and route_key not in self._locked:
            if self._pipe is not None:
                if self._pending:
                    self._settle()
                self._seqs["facts"].clear()  # drawn before this lock: the key's facts get later ones
            self.cur.execute("SELECT pg_advisory_xact_lock(%s)", (key_lock(route_key),))
            self._locked.add(route_key)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._depth += 1
        name = f"sp{self._depth}"
        if self._pipe is not None:
            if self._pending:
                self._settle()  # read now: after a rollback inside, it would restore states from before the batch
            self._flush()  # what came before stays whatever happens inside
        locked = set(self._locked)
        self.cur.execute(f"SAVEPOINT {name}")
        try:
            yield
            if self._pipe is not None:
                self._flush()
        except BaseException as exc:
            self._discard()
            self._locked = locked  # a rollback to the savepoint releases the locks taken inside it
            # A database error in a pipeline dooms the whole transaction (it rolls back): what
            # would follow is skipped by the aborted pipeline and must not hide the error.
            if self._usable() and not (self._pipe is not None and isinstance(exc, (psycopg.Error, StoreError))):
                self.cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.cur.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self.cur.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._depth -= 1

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read-only, repeatable-read transaction: every read inside sees the same state."""
        if not self._usable():
            self._reconnect()
        try:
            self.cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except psycopg.Error as exc:
            raise _translate(exc, self.path, self.conn) from None
        self._in_tx = True
        try:
            yield
        finally:
            self._in_tx = False
            self._rollback_quietly()

    # -- reads shared by both ports ----------------------------------------------------------------------

    def _run(self, sql: str, params: Any = ()) -> psycopg.Cursor:
        if not self._in_tx and not self._usable():
            try:
                self._reconnect()
            except StoreError:
                raise
        try:
            if self._pipe is not None:
                self._flush()  # a read inside a write transaction sees everything it wrote
            return self.conn.execute(sql, params)  # type: ignore[union-attr]
        except psycopg.Error as exc:
            raise _translate(exc, self.path, self.conn) from None

    def _all(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        try:
            return self._run(sql, params).fetchall()
        except psycopg.Error as exc:
            raise _translate(exc, self.path, self.conn) from None

    def _dicts(self, sql: str, params: Any = ()) -> list[Row]:
        if not self._in_tx and not self._usable():
            self._reconnect()
        try:
            if self._pipe is not None:
                self._flush()
            with self.conn.cursor(row_factory=dict_row) as cur:  # type: ignore[union-attr]
                cur.execute(sql, params)
                return list(cur.fetchall())
        except psycopg.Error as exc:
            raise _translate(exc, self.path, self.conn) from None

    def _pages(self, table: str) -> Iterator[Row]:
        """A whole log in seq order, a page per round trip."""
        last = 0
        while True:
            rows = self._dicts(f"SELECT * FROM {table} WHERE seq > %s ORDER BY seq LIMIT {PAGE}", (last,))
            yield from rows
            if len(rows) < PAGE:
                return
            last = rows[-1]["seq"]

    def route_row(self, route_key: str) -> Row | None:
        found = self._dicts("SELECT route_key, state, screen, version, config_hash, created_at, updated_at"
                            " FROM routes WHERE route_key = %s", (route_key,))
        return found[0] if found else None

    def history(self, route_key: str) -> list[Row]:
        rows = self._all("SELECT h.from_state, h.to_state, h.event_source, h.event_id, h.event_type, h.at"
                         " FROM facts AS f JOIN route_history AS h ON h.fact_seq = f.seq"
                         " WHERE f.route_key = %s ORDER BY h.seq", (route_key,))
        return [{"from": f, "to": t, "event": {"source": s, "id": i, "type": ty}, "at": at}
                for f, t, s, i, ty, at in rows]

    def route_keys(self, match: dict[int, Any]) -> list[str]:
        """Route keys whose JSON array holds `match[i]` at each position i, in key order (bytewise,
        as SQLite orders text)."""
        where = " AND ".join(f"(route_key::jsonb -> {int(i)}) = %s::jsonb" for i in match) or "TRUE"
        params = [json.dumps(v, ensure_ascii=False) for v in match.values()]
        return [r[0] for r in self._all(f"SELECT route_key FROM routes WHERE {where} ORDER BY route_key COLLATE \"C\"",
                                        params)]

    # -- the read port ------------------------------------------------------------------------------------

    def inputs(self) -> Iterator[Row]:
        return self._pages("inputs")

    def evaluations(self) -> Iterator[Row]:
        return self._pages("evaluations")

    def history_size(self) -> int:
        return int(self._all("SELECT (SELECT count(*) FROM inputs) + (SELECT count(*) FROM evaluations)")[0][0])

    def input_bytes(self, row: Row) -> bytes | Kept | None:
        if row["status"] in ("accepted", "duplicate"):
            found = self._all("SELECT body FROM envelopes WHERE source = %s AND id = %s", (row["source"], row["id"]))
            return found[0][0].encode("utf-8") if found else None
        found = self._all("SELECT raw, raw_size, raw_sha256, truncated FROM rejections WHERE seq = %s",
                          (row["rejection_seq"],))
        if not found:
            return None
        raw, size, digest, truncated = found[0]
        return Kept(bytes(raw), size, digest, bool(truncated))

    def rejections(self, selection: RejectionFilter, *, raw: bool = False) -> Iterator[Row]:
        clauses, params = [], []
        for column, values in (("reason", selection.reasons), ("source", selection.sources),
                               ("type", selection.types)):
            if values:
                clauses.append(f"{column} = ANY(%s)")
                params.append(list(values))
        if selection.state != "all":
            clauses.append("resolved_at IS NULL" if selection.state == "open" else "resolved_at IS NOT NULL")
        where = " AND ".join(clauses) or "TRUE"
        columns = _REJECTION_COLUMNS + (", raw" if raw else "")
        # since/until compare instants as timefmt does (its precision beyond microseconds): in Python
        timed = selection.since is not None or selection.until is not None
        for row in self._dicts(f"SELECT {columns} FROM rejections WHERE {where} ORDER BY seq", params):
            if timed and not matches_rejection(row, selection):
                continue
            if selection.truncated is not None and bool(row["truncated"]) != selection.truncated:
                continue
            if raw:
                row["raw"] = bytes(row["raw"])
            yield row

    def rejection_raw(self, seq: int) -> bytes | None:
        found = self._all("SELECT raw FROM rejections WHERE seq = %s", (seq,))
        return bytes(found[0][0]) if found else None

    def key_story(self, route_key: str, *, body_texts: Sequence[str] = (),
                  raw_texts: Sequence[bytes] = ()) -> KeyStory:
        story = KeyStory()
        story.facts = self._dicts("SELECT * FROM facts WHERE route_key = %s ORDER BY seq", (route_key,))
        story.inputs = self._dicts(
            "SELECT i.*, e.body FROM inputs i JOIN facts f ON f.seq = i.fact_seq"
            " JOIN envelopes e ON e.source = i.source AND e.id = i.id"
            " WHERE i.status = 'accepted' AND f.route_key = %s ORDER BY i.seq", (route_key,))
        match = " AND ".join("strpos(e.body, %s) > 0" for _ in body_texts) or "TRUE"
        story.inputs += self._dicts(
            "SELECT i.*, e.body FROM inputs i JOIN envelopes e ON e.source = i.source AND e.id = i.id"
            f" WHERE i.status = 'duplicate' AND {match} ORDER BY i.seq", list(body_texts))
        literal = " AND ".join("position(%s::bytea IN r.raw) > 0" for _ in raw_texts) or "TRUE"
        match = f"(({literal}) OR position(%s::bytea IN r.raw) > 0 OR position(%s::bytea IN r.raw) > 0)"
        for row in self._dicts("SELECT i.*, r.raw, r.reason AS now_reason, r.errors, r.resolved_at,"
                               " r.resolved_by_input FROM inputs i JOIN rejections r ON r.seq = i.rejection_seq"
                               f" WHERE i.status = 'rejected' AND {match} ORDER BY i.seq",
                               [*(bytes(t) for t in raw_texts), b"\\", b"\x00"]):
            row["raw"] = bytes(row["raw"])
            story.inputs.append(row)
        story.evaluations = self._dicts("SELECT * FROM evaluations WHERE route_key = %s ORDER BY seq", (route_key,))
        story.history = self._dicts("SELECT h.* FROM facts AS f JOIN route_history AS h ON h.fact_seq = f.seq"
                                    " WHERE f.route_key = %s ORDER BY h.seq", (route_key,))
        story.actions = self._dicts("SELECT fact_seq, body FROM actions WHERE route_key = %s ORDER BY seq",
                                    (route_key,))
        return story

    def route_states(self) -> dict[str, tuple[str, str | None]]:
        return {k: (s, sc) for k, s, sc in self._all("SELECT route_key, state, screen FROM routes")}

    def route_counts(self) -> dict[str, int]:
        return {s: int(n) for s, n in self._all("SELECT state, count(*) FROM routes GROUP BY state")}

    def latest_results(self, event_type: str, field: str) -> dict[str, Any]:
        latest: dict[str, Any] = {}
        for route_key, data in self._all("SELECT route_key, data FROM facts WHERE type = %s"
                                         " AND route_key IS NOT NULL ORDER BY seq", (event_type,)):
            payload = json.loads(data)
            if field in payload:
                latest[route_key] = payload[field]
        return latest

    def config_hashes(self) -> list[str]:
        return [r[0] for r in self._all("SELECT config_hash FROM inputs GROUP BY config_hash ORDER BY min(seq)")]

    # A cursor is "<transaction id>.<seq>" of the last item passed. Items are read in that order
    # and only below the oldest transaction still running (pg_snapshot_xmin): every transaction
    # below it has ended, and every later one gets a higher id, so nothing can appear behind a
    # cursor once it has passed, however the writers' commits interleave.

    def outbox_after(self, cursor: str, types: frozenset[str], limit: int) -> tuple[list[str], str]:
        tx, seq = _outbox_cursor(cursor)
        with self.snapshot():
            self._check_cursor(cursor, tx, seq)
            if not types:
                return [], cursor
            rows = self._all("SELECT tx::text, seq, body FROM outbox WHERE (tx, seq) > (%s::text::xid8, %s)"
                             " AND tx < pg_snapshot_xmin(pg_current_snapshot()) AND type = ANY(%s)"
                             " ORDER BY tx, seq LIMIT %s", (str(tx), seq, sorted(types), limit))
            if len(rows) < limit:  # everything finished up to now was scanned: skip past it
                last = self._all("SELECT tx::text, seq FROM outbox WHERE (tx, seq) > (%s::text::xid8, %s)"
                                 " AND tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx DESC, seq DESC"
                                 " LIMIT 1", (str(tx), seq))
                end = (int(last[0][0]), last[0][1]) if last else (tx, seq)
            else:
                end = (int(rows[-1][0]), rows[-1][1])
        return [body for _, _, body in rows], (f"{end[0]}.{end[1]}" if end != (tx, seq) else cursor)

    def cursor_of(self, consumer: str) -> str:
        found = self._all("SELECT cursor FROM consumer_cursors WHERE consumer = %s", (consumer,))
        return found[0][0] if found else ""

    def outbox_backlog(self, cursor: str, types: frozenset[str]) -> int:
        tx, seq = _outbox_cursor(cursor)
        if not types:
            return 0
        return int(self._all("SELECT count(*) FROM outbox WHERE (tx, seq) > (%s::text::xid8, %s) AND type = ANY(%s)",
                             (str(tx), seq, sorted(types)))[0][0])

    def delivery_consumer(self, consumer: str) -> Row | None:
        found = self._dicts("SELECT consumer, cursor, disabled_at, disabled_reason, lease_owner, lease_until"
                            " FROM delivery_consumers WHERE consumer = %s", (consumer,))
        return found[0] if found else None

    def deliveries(self, consumer: str | None, statuses: Sequence[str], limit: int) -> list[Row]:
        which = "consumer = %s AND " if consumer is not None else ""
        return self._dicts("SELECT seq, consumer, id, type, subject, body, status, attempts, next_at, last_status,"
                           f" last_answer, updated_at FROM deliveries WHERE {which}({delivery_statuses(statuses)})"
                           " ORDER BY seq LIMIT %s", (*([consumer] if consumer is not None else []), limit))

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        return {(c, s): int(n) for c, s, n in self._all("SELECT consumer, status, count(*) FROM deliveries"
                                                         " GROUP BY consumer, status")}

    # -- the per-event hot path -----------------------------------------------------------------------
    # These run inside `transaction()`, which translates their driver errors; they use the
    # connection's cursor directly.

    def prefetch_claims(self, envelopes: Sequence[tuple[str, str]], identities: Sequence[tuple[str, str]],
                        digests: Sequence[str]) -> None:
        """Read which of these exist, in one round trip with the batch's seqs and route states (see
        "Claims from one lookup"). Only in a batch `lock_keys` reserved seqs for: a transaction of a
        few events claims with a statement each, which costs less than a lookup and a check."""
        if self._pipe is None or not self._more_facts:
            return
        self._flush()  # the lookups see every row sent before
        reads = []
        for sql, pairs in ((_ENVELOPES_SEEN, envelopes), (_IDENTITIES_SEEN, identities)):
            if pairs:
                cur = self.conn.cursor()  # type: ignore[union-attr]
                cur.execute(sql, ([a for a, _ in pairs], [b for _, b in pairs]))
                reads.append(cur)
        if digests:
            rejected = self.conn.cursor()  # type: ignore[union-attr]
            rejected.execute(_REJECTIONS_SEEN, (list(digests),))
        if self._pending:
            self._settle()
        self._claiming = True
        if envelopes:
            self._envelopes.update(dict.fromkeys(envelopes))
            self._envelopes.update({(source, id_): body for source, id_, body in reads.pop(0).fetchall()})
        if identities:
            self._identities.update(dict.fromkeys(identities, False))
            self._identities.update({(type_, identity): True for type_, identity in reads.pop(0).fetchall()})
        if digests:
            found, seqs, new = rejected.fetchone()
            self._rejected.update(dict.fromkeys(digests))
            self._rejected.update(zip(found, seqs, strict=True))
            self._rejection_seqs.extend(sorted(new))

    def find_envelope(self, source: str, event_id: str) -> str | None:
        claim = (source, event_id)
        if claim in self._envelopes:
            return self._envelopes[claim]
        row = self._exec("SELECT body FROM envelopes WHERE source = %s AND id = %s", (source, event_id)).fetchone()
        return row[0] if row else None

    def _exec(self, sql: str, params: Any) -> psycopg.Cursor:
        if self._in_tx:
            return self.cur.execute(sql, params)
        return self._run(sql, params)

    def claim_envelope(self, source: str, event_id: str, body: str, config_hash: str) -> bool:
        claim = (source, event_id)
        if claim in self._envelopes:
            if self._envelopes[claim] is not None:
                return False
            self._envelopes[claim] = body
            self._claim_rows.append((source, event_id, body, config_hash))
            return True
        # RETURNING, not rowcount: in a pipeline a fetch reads the answer, a rowcount would need a sync
        return self._exec("INSERT INTO envelopes (source, id, body, config_hash) VALUES (%s, %s, %s, %s)"
                          " ON CONFLICT DO NOTHING RETURNING true", (source, event_id, body, config_hash)
                          ).fetchone() is not None

    def forget(self, fact_seq: int | None, source: str, event_id: str) -> None:
        if fact_seq is not None:
            identity = self._fact_claims.pop(fact_seq, None)
            if identity is not None:
                self._identities[identity] = False
            self._uncache_fact(fact_seq)
            if not self._unbuffer_fact(fact_seq):
                self._exec("DELETE FROM facts WHERE seq = %s", (fact_seq,))
        claim = (source, event_id)
        if claim in self._envelopes:
            self._envelopes[claim] = None
            if self._unbuffer_claim(claim):
                return
        self._exec("DELETE FROM envelopes WHERE source = %s AND id = %s", (source, event_id))

    def _unbuffer_claim(self, claim: tuple[str, str]) -> bool:
        """Drop an envelope claim still waiting to be sent; whether it was one."""
        rows = self._claim_rows
        for i in range(len(rows) - 1, -1, -1):
            if rows[i][:2] == claim:
                del rows[i]
                return True
        return False

    def _unbuffer_fact(self, seq: int) -> bool:
        """Drop a fact still waiting to be sent; whether it was one."""
        rows = self._rows["facts"]
        for i in range(len(rows) - 1, -1, -1):
            if rows[i][0] == seq:
                del rows[i]
                return True
        return False

    def _cache_fact(self, seq: int, row: tuple[Any, ...]) -> None:
        """A fact this transaction stored, into its key's facts when the batch read those."""
        facts = self._key_facts_of.get(row[3])
        if facts is not None:
            fact = (seq, row[2], row[5], row[4])
            if not facts or facts[-1][0] < seq:
                facts.append(fact)
            else:
                bisect.insort(facts, fact)

    def _uncache_fact(self, seq: int) -> None:
        """Drop a forgotten fact from its key's facts (a rule failed: rare, so searched for)."""
        for facts in self._key_facts_of.values():
            for i, fact in enumerate(facts):
                if fact[0] == seq:
                    del facts[i]
                    return

    def _buffer_fact(self, seq: int, row: tuple[Any, ...]) -> int:
        self._cache_fact(seq, row)
        self._rows["facts"].append((seq, *row))
        self._fact_marks.add(row[3])
        if row[4] is not None:
            self._fact_marks.add((row[2], row[4]))
        return seq

    def _flush_facts_for(self, mark: Any) -> None:
        """Send the buffered facts before a read that could see one (by its key or its identity)."""
        if mark in self._fact_marks:
            self._flush("facts")

    def has_identity(self, event_type: str, identity: str) -> bool:
        known = self._identities.get((event_type, identity))
        if known is not None:
            return known
        self._flush_facts_for((event_type, identity))
        return self._exec("SELECT 1 FROM facts WHERE type = %s AND identity = %s",
                          (event_type, identity)).fetchone() is not None

    def add_fact(self, row: tuple[Any, ...]) -> int | None:
        self._lock(row[3])
        claim = (row[2], row[4])
        known = self._identities.get(claim) if row[4] is not None else None
        if known:
            return None
        seq = self._take("facts")
        if known is False and seq is not None:  # prefetched, and free
            self._identities[claim] = True
            self._fact_claims[seq] = claim
            return self._buffer_fact(seq, row)
        if seq is not None and row[4] is None:  # no identity: nothing to be a duplicate of
            return self._buffer_fact(seq, row)
        self._flush_facts_for((row[2], row[4]))  # the identity check sees every fact of the transaction
        if seq is None:
            found = self._exec(_ADD_FACT, (*row, row[4], row[2], row[4])).fetchone()
        else:
            found = self._exec(_ADD_FACT_AT, (seq, *row, row[4], row[2], row[4])).fetchone()
            if found is None:
                self._seqs["facts"].appendleft(seq)  # a duplicate: the next fact takes its number
        if known is not None:
            self._identities[claim] = True  # stored now, or found stored
        if found is None:
            return None
        self._cache_fact(found[0], row)
        return found[0]

    def insert_fact(self, row: tuple[Any, ...]) -> int:
        self._lock(row[3])
        if row[4] is not None and (row[2], row[4]) in self._identities:
            self._identities[(row[2], row[4])] = True
        seq = self._take("facts")
        if seq is None:
            seq = self._exec(_INSERT_FACT, row).fetchone()[0]
            self._cache_fact(seq, row)
            return seq
        return self._buffer_fact(seq, row)

    def facts_for_key(self, route_key: str) -> list[tuple[str, dict[str, Any]]]:
        return [(t, orjson.loads(d)) for _, t, d, _ in self._key_facts(route_key)]

    def facts_with_identity(self, route_key: str) -> list[tuple[str, dict[str, Any], str | None]]:
        return [(t, orjson.loads(d), i) for _, t, d, i in self._key_facts(route_key)]

    def _key_facts(self, route_key: str) -> list[tuple[int, str, str, str | None]]:
        """(seq, type, data, identity) of the key's facts in seq order: the server's, merged with
        those still buffered. Read so rather than after a flush: a flush of claimed facts waits for
        its check, and a batch reads a key's facts for every event its rules run on. A key the batch
        locked up front answers from the facts read behind its lock, with no round trip."""
        self._lock(route_key)
        if self._pending:
            self._settle()
        cached = self._key_facts_of.get(route_key)
        if cached is not None:
            return cached
        rows = self._exec("SELECT seq, type, data, identity FROM facts WHERE route_key = %s ORDER BY seq",
                          (route_key,)).fetchall()
        if route_key in self._fact_marks:
            rows = sorted([*rows, *((r[0], r[3], r[6], r[5]) for r in self._rows["facts"] if r[4] == route_key)])
        return rows

    def route_state(self, route_key: str) -> tuple[str, str | None] | None:
        self._lock(route_key)
        if self._pipe is not None:
            if self._pending:
                self._settle()
            if route_key in self._routes:
                return self._routes[route_key]
        row = self._exec("SELECT state, screen FROM routes WHERE route_key = %s", (route_key,)).fetchone()
        found = (row[0], row[1]) if row else None
        if self._pipe is not None:
            self._routes[route_key] = found  # the key is locked: only this transaction changes it now
        return found

    def create_route(self, route_key: str, state: str, config_hash: str, at: str) -> None:
        self._lock(route_key)
        if self._pipe is not None:
            if route_key in self._route_rows:
                self._flush_routes()  # written already: the insert fails at the next flush, as it would now
            self._route_rows[route_key] = [True, state, None, 0, config_hash, at, at]
            self._routes[route_key] = (state, None)
            return
        self._exec("INSERT INTO routes (route_key, state, screen, version, config_hash, created_at, updated_at)"
                   " VALUES (%s, %s, NULL, 0, %s, %s, %s)", (route_key, state, config_hash, at, at))

    def fix_route(self, route_key: str, state: str, screen: str | None, config_hash: str, at: str) -> None:
        self._lock(route_key)
        if self._pipe is not None:
            pending = self._route_rows.get(route_key)
            if pending is None:
                self._route_rows[route_key] = [False, state, screen, 1, config_hash, at, at]
            else:
                pending[1:] = [state, screen, pending[3] + 1, config_hash, pending[5], at]
            self._routes[route_key] = (state, screen)
            return
        self._exec(
            "INSERT INTO routes AS r (route_key, state, screen, version, config_hash, created_at, updated_at)"
            " VALUES (%s, %s, %s, 1, %s, %s, %s) ON CONFLICT (route_key) DO UPDATE SET state = excluded.state,"
            " screen = excluded.screen, version = r.version + 1, config_hash = excluded.config_hash,"
            " updated_at = excluded.updated_at", (route_key, state, screen, config_hash, at, at))

    def append_history(self, route_key: str, before: str, after: str, cause: dict[str, Any], fact_seq: int,
                       config_hash: str, at: str) -> None:
        if self._pipe is not None:
            self._rows["route_history"].append((route_key, before, after, cause["source"], cause["id"], cause["type"],
                                                fact_seq, config_hash, at))
            return
        self._exec(
            "INSERT INTO route_history (route_key, from_state, to_state, event_source, event_id, event_type,"
            " fact_seq, config_hash, at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (route_key, before, after, cause["source"], cause["id"], cause["type"], fact_seq, config_hash, at))

    def add_actions(self, route_key: str, fact_seq: int, actions: list[dict[str, Any]], consumed: frozenset[str],
                    config_hash: str, at: str) -> None:
        if not actions:
            return
        rows = [(route_key, fact_seq, i, a["type"], orjson.dumps(a, option=orjson.OPT_SORT_KEYS).decode(),
                 int(a["type"] in consumed), config_hash, at) for i, a in enumerate(actions)]
        if self._pipe is not None:
            self._rows["actions"].extend(rows)
        else:
            with self.transaction():
                self._rows["actions"].extend(rows)

    def record_rejection(self, row: dict[str, Any]) -> int:
        digest = row["raw_sha256"]
        if digest not in self._rejected and self._rejection_seqs:
            self._reserve_for(digest)
        if digest in self._rejected:
            return self._claim_rejection(digest, row)
        return self._exec(_RECORD_REJECTION, {**row, "raw": bytes(row["raw"])}).fetchone()[0]

    def _reserve_for(self, digest: str) -> None:
        """A rejection found inside a batch (an id_conflict, a failed rule) while seqs are reserved for
        later lines' rejections: it is claimed like those, so a new one takes the next reserved seq and
        the last line gets one drawn now. Its seq then follows its line, as without the prefetch."""
        found = self._exec("SELECT seq FROM rejections WHERE raw_sha256 = %s", (digest,)).fetchone()
        self._rejected[digest] = found[0] if found else None
        if found is None:
            self._rejection_seqs.append(self._exec(_NEXT_REJECTION_SEQ, ()).fetchone()[0])

    def _claim_rejection(self, digest: str, row: dict[str, Any]) -> int:
        """A prefetched rejection: seen before, its update waits; new, it takes a reserved seq and waits."""
        seq = self._rejected[digest]
        if seq is not None:
            self._seen_again[seq] = (seq, row["reason"], row["errors"], row["config_hash"], row["at"])
            return seq
        seq = self._rejection_seqs.popleft()  # one was drawn for each new digest
        self._rejected[digest] = seq
        self._rejection_rows.append((seq, digest, bytes(row["raw"]), row["raw_size"], row["truncated"], row["reason"],
                                     row["errors"], row["source"], row["id"], row["type"], row["config_hash"],
                                     row["at"], row["at"]))
        return seq

    def _flush_rejections(self, seqs: Iterable[int]) -> None:
        """Send the buffered rejection claims before a statement that changes one of them by seq."""
        if (self._rejection_rows or self._seen_again) and not set(seqs).isdisjoint(
                {*self._seen_again, *(row[0] for row in self._rejection_rows)}):
            checks: list[tuple[psycopg.Cursor, int]] = []
            self._flush_claims(checks)
            self._check(checks)

    def resolve_rejection(self, seq: int, input_seq: int, at: str) -> None:
        self._flush_rejections((seq,))
        self._exec("UPDATE rejections SET resolved_at = %s, resolved_by_input = %s WHERE seq = %s",
                   (at, input_seq, seq))

    def purge_rejections(self, seqs: list[int]) -> int:
        if not seqs:
            return 0
        self._flush_rejections(seqs)
        return self._rowcount(self._exec("DELETE FROM rejections WHERE seq = ANY(%s)", (list(seqs),)))

    def record_input(self, row: tuple[Any, ...]) -> int:
        seq = self._take("inputs")
        if seq is None:
            return self._exec(_INSERT_INPUT, row).fetchone()[0]
        self._rows["inputs"].append((seq, *row))
        return seq

    def add_outbox(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        if self._pipe is not None:
            self._rows["outbox"].extend(rows)
        else:
            with self.transaction():
                self._rows["outbox"].extend(rows)

    def _check_cursor(self, cursor: str, tx: int, seq: int) -> None:
        """A cursor a feed gave names a finished item (see outbox_after): any other one would skip
        the items before it, or wait for ones that never come."""
        if (tx, seq) != (0, 0) and not self._all(
                "SELECT 1 FROM outbox WHERE tx = %s::text::xid8 AND seq = %s"
                " AND tx < pg_snapshot_xmin(pg_current_snapshot())", (str(tx), seq)):
            raise past_head(cursor)

    def set_cursor(self, consumer: str, cursor: str, at: str) -> None:
        self._check_cursor(cursor, *_outbox_cursor(cursor))
        self._exec("INSERT INTO consumer_cursors (consumer, cursor, updated_at) VALUES (%s, %s, %s)"
                   " ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor,"
                   " updated_at = excluded.updated_at", (consumer, cursor, at))

    def take_lease(self, consumer: str, owner: str, now: float, until: float) -> bool:
        self._exec("INSERT INTO delivery_consumers (consumer, cursor, lease_until) VALUES (%s, '', 0)"
                   " ON CONFLICT DO NOTHING", (consumer,))
        return self._rowcount(self._exec(
            "UPDATE delivery_consumers SET lease_owner = %s, lease_until = %s WHERE consumer = %s"
            " AND (lease_owner IS NOT DISTINCT FROM %s OR lease_until <= %s)",
            (owner, until, consumer, owner, now))) == 1

    def enqueue_deliveries(self, consumer: str, rows: Sequence[tuple[str, str, str, str]], cursor: str,
                           at: str) -> None:
        _outbox_cursor(cursor)
        if rows:
            self.cur.executemany("INSERT INTO deliveries (consumer, id, type, subject, body, status, attempts, next_at,"
                                 " updated_at) VALUES (%s, %s, %s, %s, %s, 'pending', 0, 0, %s) ON CONFLICT DO NOTHING",
                                 [(consumer, *row, at) for row in rows])
        self._exec("UPDATE delivery_consumers SET cursor = %s WHERE consumer = %s", (cursor, consumer))

    def update_delivery(self, consumer: str, item_id: str, status: str, attempts: int, next_at: float,
                        last_status: int | None, last_answer: str, at: str) -> None:
        self._exec("UPDATE deliveries SET status = %s, attempts = %s, next_at = %s, last_status = %s,"
                   " last_answer = %s, updated_at = %s WHERE consumer = %s AND id = %s",
                   (status, attempts, next_at, last_status, last_answer, at, consumer, item_id))

    def retry_deliveries(self, consumer: str | None, item_id: str | None, at: str) -> int:
        return self._rowcount(self._exec(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_at = 0, updated_at = %s"
            " WHERE status = 'failed' AND (%s::text IS NULL OR consumer = %s)"
            " AND (%s::text IS NULL OR id = %s)", (at, consumer, consumer, item_id, item_id)))

    def set_disabled(self, consumer: str, reason: str | None, at: str) -> None:
        self._exec("INSERT INTO delivery_consumers (consumer, cursor, lease_until) VALUES (%s, '', 0)"
                   " ON CONFLICT DO NOTHING", (consumer,))
        self._exec("UPDATE delivery_consumers SET disabled_at = %s, disabled_reason = %s WHERE consumer = %s",
                   (None if reason is None else at, reason, consumer))

    def record_evaluation(self, route_key: str, evaluated_at: str, config_hash: str, at: str) -> int:
        self._lock(route_key)
        return self._exec("INSERT INTO evaluations (route_key, evaluated_at, config_hash, recorded_at)"
                          " VALUES (%s, %s, %s, %s) RETURNING seq", (route_key, evaluated_at, config_hash, at)
                          ).fetchone()[0]


def wait_for(url: str, seconds: float) -> None:
    """Block until the database answers (a helper for tests and scripts after a restart)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"{describe(url)}: not answering after {seconds:.0f} s") from None
            time.sleep(0.2)
