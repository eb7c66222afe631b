"""The PostgreSQL store's key facts read once per batch (engine/store/postgres.py, "Key facts from
the batch's lookup"): behind its key locks a batch reads the facts of every key it locked, and a
key's facts, when its rules read them, come from that reading kept up to date by the batch's own
writes, with no round trip. What is read must not tell: the facts the batch stores, forgets (a
failed rule) and loses to a savepoint's rollback are seen as the server would show them; and a
whole stream stores what one event per transaction stores."""

from __future__ import annotations

import pytest
from pg import record_sql
from pg_proof import stream
from test_postgres_bulk import Boom, _fact, second_pg, stored  # noqa: F401 (a fixture)

from engine import Engine
from engine.store.postgres import PostgresStore

KEYS = [f'["k{i}","w"]' for i in range(10)]
KEY_READ = "FROM facts WHERE route_key = %s"  # the read of one key's facts


def _names(store: PostgresStore, key: str) -> list[str]:
    return [data["n"] for _, data in store.facts_for_key(key)]


def test_a_batchs_key_facts_follow_its_writes_forgets_and_savepoints_without_a_statement(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PostgresStore(pg_url)
    try:
        with store.transaction():
            store.insert_fact(_fact("before", KEYS[0]))
        with store.transaction():
            store.lock_keys(KEYS)  # a batch: the keys' facts read behind the locks
            assert _names(store, KEYS[0]) == ["before"]
            statements = record_sql(monkeypatch)
            first = store.add_fact(_fact("a", KEYS[0], identity="i-a"))
            store.insert_fact(_fact("b", KEYS[0]))
            store.add_fact(_fact("c", KEYS[1]))
            assert _names(store, KEYS[0]) == ["before", "a", "b"]
            assert _names(store, KEYS[1]) == ["c"]
            assert _names(store, KEYS[2]) == []
            store.forget(first, "src", "a")  # a rule failed: the fact is gone
            assert _names(store, KEYS[0]) == ["before", "b"]
            assert not [s for s in statements if KEY_READ in s]  # every read above answered locally
            with pytest.raises(Boom), store.savepoint():
                store.insert_fact(_fact("d", KEYS[0]))
                assert _names(store, KEYS[0]) == ["before", "b", "d"]
                raise Boom
            assert _names(store, KEYS[0]) == ["before", "b"]  # read from the server again
            assert [s for s in statements if KEY_READ in s]
            store.insert_fact(_fact("e", KEYS[0]))
            assert _names(store, KEYS[0]) == ["before", "b", "e"]
        assert _names(store, KEYS[0]) == ["before", "b", "e"]  # what the server holds: the same
        assert _names(store, KEYS[1]) == ["c"]
    finally:
        store.close()


def test_a_stream_reads_no_keys_facts_one_by_one_and_stores_what_one_event_per_transaction_stores(
        pg_url: str, second_pg: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    events = stream(100, seed=5)
    with Engine.open(db=second_pg) as one_by_one:
        expected = [one_by_one.process(e) for e in events]
    with Engine.open(db=pg_url) as batched:
        statements = record_sql(monkeypatch)
        assert batched.process_many(events, batch_size=500) == expected
    assert not [s for s in statements if KEY_READ in s]  # 0.21 per event before (4,000 of 19,134)
    assert len(statements) / len(events) < 0.1, len(statements) / len(events)
    want, got = stored(second_pg), stored(pg_url)
    assert any(f[6] for f in want["facts"])  # derived facts: the rules read the keys' facts
    for table in want:
        assert got[table] == want[table], table
