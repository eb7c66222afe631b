"""The SQLite store's write path as it is cut for speed (docs/PERFORMANCE.md, third round).

A transaction is a plain context manager made once per store, and the per-event statements
share one cursor. What must not change: a transaction still commits all or nothing and turns
driver errors into StoreErrors, and the shared cursor never keeps a read open, so another
connection's commit is seen by the next read and a checkpoint is never held back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine import StoreError
from engine.errors import StoreBusy
from engine.store.sqlite import SQLiteStore

H = "hash-1"
AT = "2026-02-01T10:00:00Z"
KEY = '["l1","w1"]'


class Boom(Exception):
    pass


def _store(path: Path) -> SQLiteStore:
    return SQLiteStore(path)


def test_one_transaction_object_serves_every_transaction_and_rolls_back_on_an_exception(tmp_path: Path) -> None:
    store = _store(tmp_path / "t.db")
    assert store.transaction() is store.transaction()
    with store.transaction():
        store.fix_route(KEY, "one", None, H, AT)
    with pytest.raises(Boom), store.transaction():
        store.fix_route(KEY, "two", "s", H, AT)
        store.claim_envelope("src", "a", "{}", H)
        raise Boom
    assert store.route_state(KEY) == ("one", None)
    assert store.find_envelope("src", "a") is None  # the claim went with the rollback
    with store.transaction():
        store.fix_route(KEY, "three", None, H, AT)
    assert store.route_state(KEY) == ("three", None)
    store.close()


def test_a_driver_error_inside_a_transaction_leaves_as_a_store_error_and_rolls_back(tmp_path: Path) -> None:
    store = _store(tmp_path / "t.db")
    with pytest.raises(StoreError) as caught, store.transaction():
        store.fix_route(KEY, "one", None, H, AT)
        store.conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert store.route_state(KEY) is None
    with store.transaction():  # the store is usable again
        store.fix_route(KEY, "one", None, H, AT)
    assert store.route_state(KEY) == ("one", None)
    store.close()


def test_a_failed_commit_rolls_back_and_leaves_as_a_store_error(tmp_path: Path) -> None:
    store = _store(tmp_path / "t.db")
    with store.transaction():
        store.fix_route(KEY, "one", None, H, AT)
    execute = store._execute

    def refuse_commit(sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return execute(sql, *args)

    store._execute = refuse_commit  # type: ignore[method-assign]
    with pytest.raises(StoreError) as caught, store.transaction():
        store.fix_route(KEY, "two", None, H, AT)
        store.claim_envelope("src", "a", "{}", H)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    store._execute = execute  # type: ignore[method-assign]
    assert store.route_state(KEY) == ("one", None)
    assert store.find_envelope("src", "a") is None
    store.close()


@pytest.mark.parametrize("read", ["route_state", "find_envelope", "has_identity"])
def test_a_one_row_read_on_the_shared_cursor_holds_no_snapshot(tmp_path: Path, read: str) -> None:
    path = tmp_path / "t.db"
    store, writer = _store(path), _store(path)
    with store.transaction():
        store.fix_route(KEY, "one", None, H, AT)
    calls = {"route_state": lambda: store.route_state(KEY),
             "find_envelope": lambda: store.find_envelope("src", "a"),
             "has_identity": lambda: store.has_identity("t", "i")}
    calls[read]()  # outside a transaction: nothing may stay open after it
    with writer.transaction():
        writer.fix_route(KEY, "two", "s", H, AT)
    assert store.route_row(KEY)["state"] == "two"  # another cursor of the same connection sees the commit
    busy, _, _ = writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0  # no reader holds the WAL back
    writer.close()
    store.close()


def test_a_busy_database_at_begin_is_store_busy_and_the_next_transaction_runs(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = _store(path)
    store.conn.execute("PRAGMA busy_timeout = 0")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreBusy), store.transaction():
        pass
    holder.execute("ROLLBACK")
    holder.close()
    with store.transaction():
        store.fix_route(KEY, "one", None, H, AT)
    assert store.route_state(KEY) == ("one", None)
    store.close()
