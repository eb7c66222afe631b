"""The PostgreSQL store's claims from one lookup (engine/store/postgres.py, "Claims from one
lookup"): a batch reads which of its envelopes, fact identities and rejected inputs exist right
behind its key locks, answers its claims from that and sends them with a check. What is stored
must not tell: a batch stores exactly what one event per transaction stores, through resends,
same facts, rejections seen before and within the batch, and rules that fail (a forgotten claim
is free again); a claim another writer takes between the lookup and the commit makes the batch
run again, and the event is then the duplicate it is. And the point of it: fewer statements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import completed, entered
from pg_proof import stream
from test_pipeline import add_broken_rule
from test_postgres_bulk import second_pg, statements_per_event, stored  # noqa: F401 (a fixture)

from engine import Engine
from engine.runtime.envelope import DEFAULT_MAX_EVENT_BYTES, read_envelope
from engine.store.base import Store
from engine.store.postgres import PostgresStore


def _hard_stream() -> list[Any]:
    """The proofs' stream (resends, same facts) with rejections, id conflicts and failing rules."""
    events: list[Any] = stream(40, seed=13)
    extra: list[Any] = [
        b"{not json", {"specversion": "1.0"}, b"{not json",  # a rejection, and its bytes again in the batch
        completed("lead-00003", "web-3", session="bad", id="bad-3"),  # its rule fails: claims forgotten
        completed("lead-00003", "web-3", session="bad", id="bad-3"),  # the same again: free, fails again
        completed("lead-00003", "web-3", session="bad", id="bad2-3"),  # its fact's identity: free, fails
        completed("lead-00003", "web-3", session="good-3", id="bad-3"),  # the forgotten id, a new body: new
        completed("lead-00003", "web-3", session="good-3", id="good2-3"),  # the fact just claimed: same_fact
        entered("lead-00004", "web-4", ts="2026-02-01T18:05:00Z", id="e-4"),  # an id with another body
    ]
    for n, event in enumerate(extra):
        events.insert(25 + 9 * n, event)
    events += [b"{not json", completed("lead-00005", "web-5", session="bad", id="bad-5")]  # rejected again later
    return events


def test_a_batch_with_prefetched_claims_stores_what_one_event_per_transaction_stores(
        config_copy: Path, pg_url: str, second_pg: str) -> None:  # noqa: F811
    add_broken_rule(config_copy)
    events = _hard_stream()
    with Engine.open(config=config_copy, db=second_pg) as one_by_one:
        expected = [one_by_one.process(e, line=n) for n, e in enumerate(events, 1)]
    reasons = {(r["status"], r["reason"]) for r in expected}
    assert {("duplicate", "same_envelope"), ("duplicate", "same_fact"), ("rejected", "malformed_json"),
            ("rejected", "rule_failed"), ("rejected", "id_conflict")} <= reasons
    with Engine.open(config=config_copy, db=pg_url) as batched:
        claimed = _count_prefetches(batched)
        assert batched.process_many(events, batch_size=60, first_line=1) == expected
    assert claimed["batches"] >= 3  # the claims were answered from the lookups
    want, got = stored(second_pg), stored(pg_url)
    for table in want:
        assert got[table] == want[table], table


def _count_prefetches(engine: Engine) -> dict[str, int]:
    """Count the prefetches that read something (a batch `lock_keys` reserved seqs for)."""
    store = engine.store
    assert isinstance(store, PostgresStore)
    counted = {"batches": 0}
    prefetch = store.prefetch_claims

    def counting(*args: Any) -> None:
        prefetch(*args)
        counted["batches"] += store._claiming

    store.prefetch_claims = counting  # type: ignore[method-assign]
    return counted


def test_a_claim_another_writer_takes_after_the_lookup_reruns_the_batch(pg_url: str, second_pg: str) -> None:  # noqa: F811
    """Between the batch's lookup and its commit another session stores one of its envelopes:
    the check at the flush finds the claim taken (StoreConflict), the batch runs again, and the
    event is a same_envelope duplicate, as it is for one event per transaction after that write."""
    events = stream(20, seed=5)
    taken = next(e for e in events[10:] if e["id"].startswith("e-"))
    canonical = read_envelope(json.dumps(taken).encode(), DEFAULT_MAX_EVENT_BYTES).canonical

    def take(url: str, config_hash: str) -> None:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("INSERT INTO envelopes (source, id, body, config_hash) VALUES (%s, %s, %s, %s)",
                          (taken["source"], taken["id"], canonical, config_hash))

    with Engine.open(db=second_pg) as one_by_one:
        take(second_pg, one_by_one.config.hash)
        expected = [one_by_one.process(e) for e in events]
    assert expected[events.index(taken)]["reason"] == "same_envelope"

    with Engine.open(db=pg_url) as batched:
        store = batched.store
        assert isinstance(store, PostgresStore)
        lookups = []
        prefetch = store.prefetch_claims

        def prefetch_then_lose_one(*args: Any) -> None:
            prefetch(*args)
            lookups.append(store._envelopes.get((taken["source"], taken["id"]), "absent"))
            if len(lookups) == 1:
                take(pg_url, batched.config.hash)

        store.prefetch_claims = prefetch_then_lose_one  # type: ignore[method-assign]
        assert batched.process_many(events, batch_size=500) == expected
    assert lookups == [None, canonical]  # found free, taken, the batch ran again and found it
    want, got = stored(second_pg), stored(pg_url)
    for table in want:
        assert got[table] == want[table], table


def test_prefetched_claims_send_fewer_statements_per_event(pg_url: str, second_pg: str,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Statements per event with the lookup and without it (the claims a statement each, as
    before): the envelope claim, the fact's insert and the rejections' go; what is left per
    event is mostly the key's facts read for its rules."""
    events = stream(100, seed=5)
    events[7:7] = [b"{not json", {"specversion": "1.0"}]
    counts = {}
    for url, prefetching in ((second_pg, False), (pg_url, True)):
        with monkeypatch.context() as patch:
            if not prefetching:
                patch.setattr(PostgresStore, "prefetch_claims", Store.prefetch_claims)
            with Engine.open(db=url) as eng:
                counts[prefetching] = statements_per_event(patch, eng, events)
    assert stored(pg_url) == stored(second_pg)
    assert counts[True] < 0.3 * counts[False], counts  # 0.25 against 1.94 when written
    assert counts[True] < 0.5, counts


def test_rejections_found_inside_a_prefetched_batch_keep_the_order_of_their_lines(
        config_copy: Path, pg_url: str, second_pg: str) -> None:  # noqa: F811
    """A batch draws the numbers of its lines' rejections before it runs; an id_conflict or a failed
    rule is only found inside it. Those are numbered among the others in the order of their lines,
    as one event per transaction (and SQLite) numbers them: `rejections` lists the oldest first."""
    add_broken_rule(config_copy)
    events = _hard_stream()
    with Engine.open(config=config_copy, db=second_pg) as one_by_one:
        for event in events:
            one_by_one.process(event)
        want = [(r["reason"], r["sha256"]) for r in one_by_one.rejections()]
    assert {"id_conflict", "rule_failed", "malformed_json"} <= {reason for reason, _ in want}
    with Engine.open(config=config_copy, db=pg_url) as batched:
        claimed = _count_prefetches(batched)
        batched.process_many(events, batch_size=60)
        got = [(r["reason"], r["sha256"]) for r in batched.rejections()]
    assert claimed["batches"] >= 3
    assert got == want
