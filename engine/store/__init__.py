"""Storage behind two interfaces (store.base): the write port the runtime uses, and the
read port governance and the console use. Every SQL statement of the project lives here
(store.sqlite); store.memory holds the same behaviour in plain Python."""

from __future__ import annotations

from pathlib import Path

from .base import HistoryReader, Store


def is_postgres_url(db: object) -> bool:
    """Whether `--db` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def display_name(db: str | Path) -> str:
    """How messages and reports name a database: a file by its path, a PostgreSQL database by
    host, port and name (never the URL: it may hold a password)."""
    if is_postgres_url(db):
        from .postgres import describe

        return describe(str(db))
    return str(db)


def open_store(db: str | Path, *, synchronous: str = "NORMAL", create: bool = True) -> Store:
    """The store for `db`: a `postgresql://` or `postgres://` URL (PostgreSQL 13+; the database
    must exist, its tables are made on first use), else a SQLite file path (or ":memory:",
    SQLite's in-memory database). A `MemoryStore` is made by constructing it.
    """
    if is_postgres_url(db):
        from .postgres import PostgresStore

        return PostgresStore(str(db), synchronous=synchronous, create=create)
    from .sqlite import SQLiteStore

    return SQLiteStore(db, synchronous=synchronous, create=create)


def open_reader(db: str | Path) -> HistoryReader:
    """A read-only reader of the database `db`; it must exist and be a webinar-flows database."""
    if is_postgres_url(db):
        from .postgres import PostgresStore

        return PostgresStore(str(db), create=False, read_only=True)
    from .sqlite import SQLiteReader

    return SQLiteReader(db)


__all__ = ["HistoryReader", "Store", "display_name", "is_postgres_url", "open_reader", "open_store"]
