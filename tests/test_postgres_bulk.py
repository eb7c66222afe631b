"""The PostgreSQL store's bulk writes (engine/store/postgres.py, "Rows in bulk"): a batch holds
back the rows nothing reads at once and sends one INSERT per table, reads its keys' route
states once and reserves its seqs behind its key locks. What is stored must not tell: a batch
stores exactly what one event per transaction stores, in the same order; a key locked later in
a batch still orders its facts after those of the transaction that held the key; a savepoint's
rollback forgets its rows and its locks. And the point of it: few statements per event."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pg_proof import stream

from engine import Engine
from engine.store.base import FactRow
from engine.store.postgres import PostgresStore

KEY_A, KEY_B = '["a","w"]', '["b","w"]'


class Boom(Exception):
    pass


@pytest.fixture
def second_pg(pg_url: str) -> Iterator[str]:
    import pg

    url = pg.create_database()
    try:
        yield url
    finally:
        pg.drop_database(url)


def stored(url: str) -> dict[str, Any]:
    """Every table in its own order, without seq numbers and times (facts named by source and id,
    a derived fact's cause by its cause's id)."""
    with psycopg.connect(url) as conn:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

        return {
            "facts": rows("SELECT f.route_key, f.source, f.id, f.type, f.identity, f.data, f.derived, f.rule_id,"
                          " c.id FROM facts f LEFT JOIN facts c ON c.seq = f.cause_seq ORDER BY f.route_key, f.seq"),
            "inputs": rows("SELECT i.line, i.status, i.reason, i.source, i.id, i.type, f.id, r.raw_sha256"
                           " FROM inputs i LEFT JOIN facts f ON f.seq = i.fact_seq"
                           " LEFT JOIN rejections r ON r.seq = i.rejection_seq ORDER BY i.seq"),
            "routes": rows("SELECT route_key, state, screen, version, config_hash FROM routes ORDER BY route_key"),
            "history": rows("SELECT h.route_key, h.from_state, h.to_state, h.event_source, h.event_id, h.event_type,"
                            " f.id FROM route_history h JOIN facts f ON f.seq = h.fact_seq ORDER BY h.route_key, h.seq"),
            "actions": rows("SELECT a.route_key, f.id, a.position, a.type, a.body, a.applied FROM actions a"
                            " JOIN facts f ON f.seq = a.fact_seq ORDER BY a.route_key, a.seq"),
            "outbox": rows("SELECT route_key, id, type FROM outbox ORDER BY route_key, tx, seq"),  # bodies hold times
            "envelopes": rows("SELECT source, id, body FROM envelopes ORDER BY source, id"),
            "rejections": rows("SELECT raw_sha256, reason, errors FROM rejections ORDER BY raw_sha256"),
        }


def test_a_batch_stores_exactly_what_one_event_per_transaction_stores(pg_url: str, second_pg: str) -> None:
    events = stream(60, seed=11)
    events[5:5] = [b"{not json", {"specversion": "1.0"}]  # rejections in the input log, between accepted events
    with Engine.open(db=second_pg) as one_by_one:
        expected = [one_by_one.process(e, line=n) for n, e in enumerate(events, 1)]
    with Engine.open(db=pg_url) as batched:
        assert batched.process_many(events, batch_size=500, first_line=1) == expected
    want, got = stored(second_pg), stored(pg_url)
    assert want["history"] and want["actions"] and want["outbox"] and want["rejections"]
    assert any(f[6] for f in want["facts"])  # derived facts too
    for table in want:
        assert got[table] == want[table], table


def _fact(id: str, key: str, identity: str | None = None) -> FactRow:
    return FactRow("src", id, "t", key, identity, json.dumps({"n": id}), 0, None, None, None, "h",
                   "2026-02-01T10:00:00Z")


def test_a_key_locked_later_in_a_batch_orders_its_facts_after_the_holder_of_the_key(pg_url: str) -> None:
    """Batch 1 reserves its fact seqs behind the lock of key A; batch 2 then holds key B and
    stores a fact under it. When batch 1 stores a fact under B, it waits for B's lock, and its
    fact must come after batch 2's in seq order (the order facts_for_key reads), not before with
    a number reserved earlier."""
    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        seqs: dict[str, int] = {}
        with first.transaction():
            first.lock_keys([KEY_A])
            first.route_state(KEY_A)  # its reservation is read: numbers drawn before batch 2's
            holding = threading.Event()

            def other_batch() -> None:
                with second.transaction():
                    second.lock_keys([KEY_B])
                    second.route_state(KEY_B)  # B is held now
                    holding.set()
                    seqs["second"] = second.insert_fact(_fact("second", KEY_B))
                    threading.Event().wait(0.3)  # batch 1 waits for B meanwhile

            thread = threading.Thread(target=other_batch)
            thread.start()
            assert holding.wait(10)
            seqs["first"] = first.insert_fact(_fact("first", KEY_B))  # waits for B's lock
            thread.join(10)
        assert seqs["first"] > seqs["second"]
        assert [data["n"] for _, data in first.facts_for_key(KEY_B)] == ["second", "first"]
    finally:
        first.close()
        second.close()


def test_a_savepoints_rollback_forgets_its_rows_and_the_locks_it_took(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    watcher = psycopg.connect(pg_url, autocommit=True)
    try:
        def advisory_locks() -> int:
            return watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                                   (store.conn.info.backend_pid,)).fetchone()[0]

        with store.transaction():
            store.fix_route(KEY_A, "one", None, "h", "2026-02-01T10:00:00Z")
            with pytest.raises(Boom), store.savepoint():
                store.fix_route(KEY_B, "two", "s", "h", "2026-02-01T10:00:01Z")
                store.append_history(KEY_B, "one", "two", {"source": "s", "id": "e", "type": "t"}, 1, "h", "x")
                store.add_outbox([(KEY_B, "o1", "t", "{}", "x")])
                assert store.route_state(KEY_B) == ("two", "s")
                raise Boom
            assert store.route_state(KEY_B) is None  # read again, not remembered from the savepoint
            assert advisory_locks() == 2  # A, and B again for the read above (the rollback released it)
            store.fix_route(KEY_B, "three", None, "h", "2026-02-01T10:00:02Z")
        assert store.route_row(KEY_B)["state"] == "three" and store.route_row(KEY_B)["version"] == 1
        assert store.history(KEY_B) == []
        assert store.outbox_backlog("", frozenset({"t"})) == 0
    finally:
        watcher.close()
        store.close()


def test_a_savepoints_rollback_in_a_batch_keeps_the_route_states_written_before_it(pg_url: str) -> None:
    """A batch reads its keys' route states behind the locks without waiting; a savepoint's
    rollback forgets the states written inside it, and must not bring back the batch's first
    reading of those written before it."""
    keys = [f'["k{i}","w"]' for i in range(10)]
    store = PostgresStore(pg_url)
    try:
        with store.transaction():
            store.lock_keys(keys)  # a batch: route states read behind the locks
            store.fix_route(keys[0], "one", None, "h", "2026-02-01T10:00:00Z")
            with pytest.raises(Boom), store.savepoint():
                store.fix_route(keys[0], "two", None, "h", "2026-02-01T10:00:01Z")
                raise Boom
            assert store.route_state(keys[0]) == ("one", None)
            assert store.route_state(keys[1]) is None
        assert store.route_row(keys[0])["version"] == 1
    finally:
        store.close()


def test_a_batch_sends_about_two_statements_per_event(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The envelope claim and the fact's insert per event; everything else once per table and
    batch. Nine per event before the bulk writes (docs/PERFORMANCE-postgres.md)."""
    events = stream(100, seed=5)
    with Engine.open(db=pg_url) as eng:
        per_event = statements_per_event(monkeypatch, eng, events)
    assert per_event < 2.5, per_event


def statements_per_event(patch: pytest.MonkeyPatch, eng: Engine, events: list[Any], batch_size: int = 500) -> float:
    """`events` through `eng.process_many`, counting the statements psycopg executes."""
    statements = 0
    execute = psycopg.Cursor.execute

    def counting(self: psycopg.Cursor, *args: Any, **kwargs: Any) -> Any:
        nonlocal statements
        statements += 1
        return execute(self, *args, **kwargs)

    patch.setattr(psycopg.Cursor, "execute", counting)
    eng.process_many(events, batch_size=batch_size)
    return statements / len(events)


def test_a_batch_reserves_its_fact_seqs_in_about_one_round_trip(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seqs for a batch's facts come behind its key locks, with room for the facts its rules derive:
    a batch that runs out waits for more. About four more per batch of 500 before (one per event
    with a key, then no more than the inputs left), at most one now."""
    events = stream(100, seed=5)
    reserves = 0
    execute = psycopg.Cursor.execute

    def counting(self: psycopg.Cursor, query: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reserves
        reserves += "generate_series" in str(query)
        return execute(self, query, *args, **kwargs)

    with Engine.open(db=pg_url) as eng:
        monkeypatch.setattr(psycopg.Cursor, "execute", counting)
        eng.process_many(events, batch_size=500)
    assert len(events) <= 500 and reserves <= 2, reserves
