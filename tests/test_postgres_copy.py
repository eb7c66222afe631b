"""A batch's plain rows by binary COPY at its commit (engine/store/postgres.py, `_COPIED`): the
input log, route history, actions and the outbox of a batch go by COPY once its pipeline is left;
a few rows go as before. What is stored must not tell (the stream tests of test_postgres_bulk.py
and test_postgres_prefetch.py compare a batch with one event per transaction); here: the COPY is
used, an error queued before it or raised by it rolls the whole batch back, and the session
serves the next transaction."""

from __future__ import annotations

import pytest
from pg import record_sql
from pg_proof import stream
from test_postgres_bulk import second_pg, stored  # noqa: F401 (a fixture)

from engine import Engine
from engine.errors import StoreError
from engine.store.postgres import BULK_FROM, PostgresStore

KEY = '["a","w"]'


def test_a_batch_copies_its_plain_rows_and_stores_what_one_event_per_transaction_stores(
        pg_url: str, second_pg: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    events = stream(60, seed=11)
    with Engine.open(db=second_pg) as one_by_one:
        expected = [one_by_one.process(e) for e in events]
    copies = record_sql(monkeypatch, "copy")
    assert copies == []  # one event per transaction: a few rows, no COPY
    with Engine.open(db=pg_url) as batched:
        assert batched.process_many(events, batch_size=500) == expected
    assert sorted(c.split()[1] for c in copies) == ["actions", "inputs", "outbox", "route_history"]
    assert stored(pg_url) == stored(second_pg)


def _outbox(n: int) -> list[tuple[str, str, str, str, str]]:
    return [(KEY, f"o{i}", "t", "{}", "2026-02-01T10:00:00Z") for i in range(n)]


def test_an_error_queued_before_the_copy_rolls_the_batch_back(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        with store.transaction():
            store.create_route(KEY, "one", "h", "2026-02-01T10:00:00Z")
        with pytest.raises(StoreError, match="database error"), store.transaction():
            store.add_outbox(_outbox(BULK_FROM))
            store.create_route(KEY, "two", "h", "2026-02-01T10:00:01Z")  # a duplicate key: fails at the flush
        assert store.outbox_backlog("", frozenset({"t"})) == 0
        with store.transaction():  # the session serves the next one
            store.add_outbox(_outbox(BULK_FROM))
        assert store.outbox_backlog("", frozenset({"t"})) == BULK_FROM
        assert store.route_row(KEY)["state"] == "one"


def test_an_error_in_the_copy_rolls_the_batch_back(pg_url: str) -> None:
    with PostgresStore(pg_url) as store:
        with pytest.raises(StoreError, match="database error"), store.transaction():
            store.create_route(KEY, "one", "h", "2026-02-01T10:00:00Z")
            store.add_outbox(_outbox(BULK_FROM - 1) + [(KEY, "bad", "t", "{}\x00", "x")])  # NUL: text refuses it
        assert store.route_row(KEY) is None
        assert store.outbox_backlog("", frozenset({"t"})) == 0
        with store.transaction():
            store.add_outbox(_outbox(BULK_FROM))
        assert store.outbox_backlog("", frozenset({"t"})) == BULK_FROM
