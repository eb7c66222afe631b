"""Storage failures reach the caller as `StoreError`s of the right kind, and a file that is not
ours is refused without being touched.

- Driver errors are classified by their SQLite error name (busy, read-only, full, not a
  database), not by their message text, so a server can answer each one properly.
- Reads outside a write transaction raise StoreError too, never a raw `sqlite3` error.
- A foreign SQLite file is refused at any `user_version`, its bytes and journal mode as they were.
- Replay opens the live database through a correctly escaped URI: `#`, `?` and `%` in a path
  name that file, not another one.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from conftest import ROOT, entered, jsonl, registered

from engine import (
    DatabaseMissing,
    Engine,
    NotADatabase,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreReadOnly,
)
from engine.config.locate import bundled_config
from engine.store import sqlite as sqlite_store

EVENTS = (ROOT / "examples" / "events.jsonl").read_bytes().splitlines()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def foreign(path: Path, version: int, *tables: str) -> Path:
    conn = sqlite3.connect(path)
    for table in tables:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute(f"INSERT INTO {table} (body) VALUES ('keep me')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return path


# -- foreign files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("tables", [("notes",), ("facts",), ("facts", "routes", "notes")])
@pytest.mark.parametrize("create", [True, False])
def test_a_foreign_file_with_our_schema_version_is_refused_untouched(tmp_path, version, tables, create):
    """Another application's file whose user_version happens to be one of ours: refused, naming
    it, and left byte for byte as it was (no WAL switch, no migration, no table added)."""
    db = foreign(tmp_path / "notes.db", version, *tables)
    before = sha(db)
    with pytest.raises(NotADatabase, match="not a webinar-flows database") as info:
        Engine.open(db=db, create=create)
    assert str(db) in str(info.value)
    assert sha(db) == before
    assert journal_mode(db) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]



@pytest.mark.parametrize("version", [0, 1, 3])
def test_replay_and_diff_refuse_a_foreign_file_untouched(tmp_path, version):
    from engine import load_config, replay_history
    from engine.governance.compat import route_counts

    db = foreign(tmp_path / "notes.db", version, "notes")
    before = sha(db)
    with pytest.raises(NotADatabase, match="not a webinar-flows database"):
        replay_history(db, bundled_config())
    with pytest.raises(NotADatabase, match="not a webinar-flows database"):
        route_counts(db)
    config = load_config(bundled_config())
    with pytest.raises(StoreError, match=str(db)):
        from engine import diff_configs

        diff_configs(config, config, db)
    assert sha(db) == before and journal_mode(db) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]

def test_a_foreign_file_is_never_read_as_ours(tmp_path):
    """Were such a file opened, reading a route would meet missing tables as raw sqlite3 errors."""
    db = foreign(tmp_path / "other.db", 3, "facts", "notes")
    try:
        eng = Engine.open(db=db, create=False)
    except StoreError:
        return
    with eng:  # the old behaviour: opened, then a raw OperationalError on the first read
        eng.route(lead_id="l1", webinar_id="w1")
    pytest.fail("a foreign file was opened as a webinar-flows database")


# -- reads outside a write transaction ------------------------------------------------------------------

def _break(db: Path, *tables: str) -> None:
    conn = sqlite3.connect(db)
    for table in tables:  # since schema 6 most of the old tables are views
        kind = conn.execute("SELECT type FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        conn.execute(f"DROP {kind.upper()} {table}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("read", [
    lambda eng: eng.route(lead_id="l1", webinar_id="w1"),
    lambda eng: eng.rejections(),
    lambda eng: eng.explain(lead_id="l1", webinar_id="w1"),
])
def test_reads_raise_store_errors_naming_the_file(tmp_path, read):
    db = tmp_path / "live.db"
    with Engine.open(db=db) as eng:
        eng.process_many(jsonl(registered(), entered(), b"{oops").splitlines())
        _break(db, "routes", "rejections", "route_history")
        with pytest.raises(StoreError) as info:
            read(eng)
        assert str(db) in str(info.value)
        assert not isinstance(info.value.__cause__, StoreError)


def test_a_missing_database_is_not_created_for_a_reader(tmp_path):
    db = tmp_path / "nope.db"
    with pytest.raises(DatabaseMissing, match="does not exist"):
        Engine.open(db=db, create=False)
    assert not db.exists()


# -- driver errors by name, not by text ------------------------------------------------------------------

def _busy(tmp_path: Path) -> sqlite3.Error:
    db = tmp_path / "busy.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return exc
    finally:
        holder.execute("ROLLBACK")
    raise AssertionError("no busy error")


def _full(tmp_path: Path) -> sqlite3.Error:
    conn = sqlite3.connect(tmp_path / "full.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 3")
    try:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no full error")


def _read_only(tmp_path: Path) -> sqlite3.Error:
    db = tmp_path / "ro.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no read-only error")


def _not_a_database(tmp_path: Path) -> sqlite3.Error:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not a database, it is a text file that is long enough" * 100)
    try:
        sqlite3.connect(db).execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no not-a-database error")


@pytest.mark.parametrize(("make", "kind", "hint"), [
    (_busy, StoreBusy, "another process held the database too long"),
    (_full, StoreFull, "disk full or write failed"),
    (_read_only, StoreReadOnly, "cannot write there"),
    (_not_a_database, NotADatabase, "the file is not a webinar-flows database or is corrupt"),
], ids=["busy", "full", "read_only", "not_a_database"])
def test_driver_errors_are_classified_by_their_sqlite_error_name(tmp_path, make, kind, hint):
    exc = make(tmp_path)
    translated = sqlite_store._translate(exc, "x.db")
    assert type(translated) is kind and isinstance(translated, StoreError)
    assert str(translated).startswith(f"x.db: {hint}")
    # The message text plays no part: another wording (a driver's, a locale's) classifies the same.
    exc.args = ("the wording of another driver",)
    assert type(sqlite_store._translate(exc, "x.db")) is kind


def test_a_busy_database_raises_store_busy_through_the_engine(tmp_path, monkeypatch):
    db = tmp_path / "live.db"
    Engine.open(db=db).close()
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Engine.open(db=db) as eng, pytest.raises(StoreBusy) as info:
            eng.process_many(EVENTS[:3])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(db) in str(info.value)


def test_a_corrupt_file_raises_not_a_database(tmp_path):
    db = tmp_path / "junk.db"
    db.write_bytes(b"x" * 8192)
    before = sha(db)
    with pytest.raises(NotADatabase):
        Engine.open(db=db)
    assert sha(db) == before


# -- paths that a URI would misread -------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["a#b", "a?b", "a%41b", "a b", "a%3Fmode=rwc"])
def test_replay_reads_the_database_its_path_names(tmp_path, folder):
    from engine import replay_history

    where = tmp_path / folder
    where.mkdir()
    db = where / "live.db"
    with Engine.open(db=db) as eng:
        eng.process_many(EVENTS)
    before = sha(db)
    siblings = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    report = replay_history(db, bundled_config())
    assert report["replayed"]["inputs"] == len(EVENTS)
    assert report["identical"] is True
    assert sha(db) == before
    # A read-only reader of a WAL database may leave its -wal and -shm files; nothing else appears.
    shared = {Path(folder, "live.db-wal"), Path(folder, "live.db-shm")}
    assert sorted({p.relative_to(tmp_path) for p in tmp_path.rglob("*")} - shared) == siblings


@pytest.mark.parametrize("folder", ["a#b", "a?b", "a%41b"])
def test_diff_counts_the_routes_of_the_database_its_path_names(tmp_path, folder):
    from engine import diff_configs, load_config

    where = tmp_path / folder
    where.mkdir()
    db = where / "live.db"
    with Engine.open(db=db) as eng:
        eng.process_many(EVENTS)
    config = load_config(bundled_config())
    from engine.governance.compat import route_counts

    counts = route_counts(db)
    assert sum(counts.values()) > 0
    assert diff_configs(config, config, db) == []


@pytest.mark.parametrize("url", ["postgresql://alice:Hunter2%ZZ@127.0.0.1/t2",
                                 "postgres://alice:Hunter2Secret@[::1/t2",
                                 "postgresql://alice:Hunter2%@db.example:6543/t2"])
def test_an_unparsable_postgresql_url_is_refused_without_its_password(url: str) -> None:
    """libpq's parse error quotes the token it choked on, which may be the password."""
    from engine import Engine, StoreError

    with pytest.raises(StoreError) as caught:
        Engine.open(db=url)
    message = str(caught.value)
    assert "Hunter2" not in message and "not a usable PostgreSQL URL" in message
    assert message == message.strip()
    if "[" not in url:
        assert '"t2"' in message  # still named by what can be read of it
