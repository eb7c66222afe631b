"""One suite for every store backend (store.base's `Store` and `HistoryReader`), as eventsourcing
runs one recorder test case on each of its recorders.

Each test takes the `store` fixture, parametrised over the backends; a new backend joins by
adding its name to `BACKENDS` and a branch to `make_store`. Everything is checked through
values read back: dedupe, rollback, savepoints, the rejection upsert, history order, route-key
matching and each read-port answer. The last tests run the same events and scenarios through
an `Engine` on each backend and require identical results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

import engine.api
from engine import Engine, StoreError, load_config
from engine.config.locate import bundled_config
from engine.store.base import (
    FactRow,
    HistoryReader,
    InputRow,
    Kept,
    RejectionFilter,
    Store,
)
from engine.store.memory import MemoryStore
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore

BACKENDS = ["memory", "sqlite", "postgres"]  # postgres: skips without a server (tests/pg.py), fails so in CI
H = "hash-1"
AT = "2026-02-01T10:00:00Z"


def make_store(backend: str, tmp_path: Path) -> Any:
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        return SQLiteStore(tmp_path / "contract.db")
    if backend == "postgres":
        import pg

        from engine.store.postgres import PostgresStore

        url = pg.create_database()
        _dropped.append(url)
        return PostgresStore(url)
    raise AssertionError(backend)


_dropped: list[str] = []  # the PostgreSQL databases made for the running test


@pytest.fixture(autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    import pg

    while _dropped:
        pg.drop_database(_dropped.pop())


def gapless(store: Any) -> bool:
    """SQLite and the memory store hand a rolled-back seq out again; PostgreSQL's sequences leave
    a gap (seqs stay unique and increasing: the order they were handed out in)."""
    return not type(store).__name__.startswith("Postgres")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = make_store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.close()


def fact(id: str, type_: str = "t", key: str | None = '["l1","w1"]', identity: str | None = None,
         data: dict | None = None, **kw: Any) -> FactRow:
    values = {"source": "src", "id": id, "type": type_, "route_key": key, "identity": identity,
              "data": json.dumps(data if data is not None else {"n": id}), "derived": 0, "rule_id": None,
              "cause_seq": None, "evaluation_seq": None, "config_hash": H, "recorded_at": AT}
    return FactRow(**{**values, **kw})


def entry(status: str, id: str | None = None, *, fact_seq: int | None = None, rejection_seq: int | None = None,
          at: str = AT, config_hash: str = H, reason: str | None = None) -> InputRow:
    return InputRow("in.jsonl", 1, status, reason, "src" if id else None, id, "t" if id else None, fact_seq,
                    rejection_seq, config_hash, at)


def rejection(raw: bytes, *, reason: str = "invalid_payload", source: str | None = "src", type_: str | None = "t",
              at: str = AT, truncated: bool = False, config_hash: str = H) -> dict[str, Any]:
    import hashlib

    return {"raw_sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "raw_size": len(raw) * (3 if truncated else 1),
            "truncated": int(truncated), "reason": reason, "errors": json.dumps([{"code": reason}]),
            "source": source, "id": "r", "type": type_, "config_hash": config_hash, "at": at}


class Boom(Exception):
    pass


# -- the interfaces -------------------------------------------------------------------------------

def test_a_backend_missing_a_method_fails_at_construction() -> None:
    class Incomplete(Store):
        def close(self) -> None: ...

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_every_backend_offers_both_ports(store) -> None:
    assert isinstance(store, Store) and isinstance(store, HistoryReader)



@pytest.mark.parametrize("backend", [MemoryStore, SQLiteStore, PostgresStore])
def test_a_backend_offers_nothing_public_beyond_the_ports(backend: type) -> None:
    """What a caller may use is what the interfaces declare; a backend-only method would tie
    callers to one backend."""
    declared = {n for port in (Store, HistoryReader) for n in dir(port) if not n.startswith("_")}
    offered = {n for n in dir(backend) if not n.startswith("_") and callable(getattr(backend, n))}
    assert offered == declared

def test_row_layouts_are_plain_tuples() -> None:
    row = fact("e1")
    assert isinstance(row, tuple) and row[1] == "e1" and row.id == "e1"
    assert len(InputRow._fields) == 11 and FactRow._fields[3] == "route_key"


# -- dedupe ---------------------------------------------------------------------------------------

def test_an_envelope_is_claimed_once(store) -> None:
    with store.transaction():
        assert store.claim_envelope("src", "e1", '{"a":1}', H) is True
        assert store.claim_envelope("src", "e1", '{"a":2}', H) is False
        assert store.claim_envelope("other", "e1", '{"b":1}', H) is True
    assert store.find_envelope("src", "e1") == '{"a":1}'
    assert store.find_envelope("other", "e1") == '{"b":1}'
    assert store.find_envelope("src", "e2") is None


def test_a_fact_identity_is_unique_per_type(store) -> None:
    with store.transaction():
        first = store.add_fact(fact("e1", identity="i1"))
        assert store.add_fact(fact("e2", identity="i1")) is None
        second = store.add_fact(fact("e3", type_="u", identity="i1"))
        third = store.add_fact(fact("e4"))  # no identity: never a duplicate
        fourth = store.add_fact(fact("e5"))
    assert [first, second, third, fourth] == [1, 2, 3, 4]
    assert store.has_identity("t", "i1") and store.has_identity("u", "i1")
    assert not store.has_identity("t", "i2")
    assert [d["n"] for _, d in store.facts_for_key('["l1","w1"]')] == ["e1", "e3", "e4", "e5"]


def test_insert_fact_refuses_a_known_identity_and_the_transaction_undoes_everything(store) -> None:
    with store.transaction():
        store.add_fact(fact("e1", identity="i1"))
    with pytest.raises(StoreError), store.transaction():
        store.insert_fact(fact("e2", identity="i2"))
        store.insert_fact(fact("e3", identity="i1"))
    assert store.facts_with_identity('["l1","w1"]') == [("t", {"n": "e1"}, "i1")]


def test_facts_read_by_key_in_seq_order(store) -> None:
    with store.transaction():
        store.add_fact(fact("e1", key='["l2","w1"]'))
        store.add_fact(fact("e2", type_="u", identity="x", data={"v": [1, 2]}))
        store.add_fact(fact("e3", key=None))
        store.add_fact(fact("e4"))
    assert store.facts_for_key('["l1","w1"]') == [("u", {"v": [1, 2]}), ("t", {"n": "e4"})]
    assert store.facts_with_identity('["l1","w1"]') == [("u", {"v": [1, 2]}, "x"), ("t", {"n": "e4"}, None)]
    assert store.facts_for_key('["nobody"]') == []


def test_forget_undoes_a_claim_and_its_fact(store) -> None:
    with store.transaction():
        store.claim_envelope("src", "e1", "{}", H)
        seq = store.add_fact(fact("e1", identity="i1"))
        store.forget(seq, "src", "e1")
        assert store.find_envelope("src", "e1") is None
        assert not store.has_identity("t", "i1")
        assert store.claim_envelope("src", "e1", "{}", H) is True
        again = store.add_fact(fact("e1", identity="i1"))
        assert again == seq if gapless(store) else again > seq  # the largest seq in use, plus one (or a gap)
        store.forget(None, "src", "nothing")  # forgetting what is not there is no error
    assert store.facts_for_key('["l1","w1"]') == [("t", {"n": "e1"})]


# -- transactions and savepoints -----------------------------------------------------------------

def _write_one_of_each(store, n: str) -> None:
    store.claim_envelope("src", n, "{}", H)
    seq = store.add_fact(fact(n, identity=n))
    store.fix_route('["l1","w1"]', f"state-{n}", None, H, AT)
    store.append_history('["l1","w1"]', "new", f"state-{n}", {"source": "src", "id": n, "type": "t"}, seq, H, AT)
    store.add_actions('["l1","w1"]', seq, [{"type": "route", "to": n}], frozenset({"route"}), H, AT)
    rej = store.record_rejection(rejection(n.encode()))
    store.record_input(entry("accepted", n, fact_seq=seq))
    store.record_input(entry("rejected", rejection_seq=rej))
    store.record_evaluation('["l1","w1"]', AT, H, AT)


def _everything(store) -> dict[str, Any]:
    key = '["l1","w1"]'
    story = store.key_story(key)
    return {"facts": store.facts_with_identity(key), "route": store.route_row(key), "history": store.history(key),
            "inputs": list(store.inputs()), "evaluations": list(store.evaluations()),
            "rejections": list(store.rejections(RejectionFilter(state="all"), raw=True)),
            "actions": story.actions, "envelopes": [store.find_envelope("src", n) for n in ("a", "b", "c")]}


def test_a_transaction_commits_all_or_nothing(store) -> None:
    with store.transaction():
        _write_one_of_each(store, "a")
    committed = _everything(store)
    assert committed["route"]["state"] == "state-a" and len(committed["inputs"]) == 2
    with pytest.raises(Boom), store.transaction():
        _write_one_of_each(store, "b")
        raise Boom
    assert _everything(store) == committed
    with store.transaction():
        _write_one_of_each(store, "c")
    after = _everything(store)
    assert after["route"]["state"] == "state-c" and after["route"]["version"] == 2
    assert [r["id"] for r in after["inputs"] if r["id"]] == ["a", "c"]
    seqs = [r["seq"] for r in after["inputs"]]
    assert seqs == [1, 2, 3, 4] if gapless(store) else seqs == [1, 2, 5, 6]  # rolled-back seqs handed out again


def test_a_transaction_does_not_nest(store) -> None:
    with store.transaction():
        store.claim_envelope("src", "a", "{}", H)
        with pytest.raises(StoreError), store.transaction():
            pass
    assert store.find_envelope("src", "a") == "{}"


def test_a_savepoint_undoes_only_its_block(store) -> None:
    with store.transaction():
        store.claim_envelope("src", "a", "{}", H)
        store.fix_route('["l1","w1"]', "one", None, H, AT)
        with pytest.raises(Boom), store.savepoint():
            store.claim_envelope("src", "b", "{}", H)
            store.fix_route('["l1","w1"]', "two", "s", H, AT)
            store.record_evaluation('["l1","w1"]', AT, H, AT)
            raise Boom
        with store.savepoint():
            with pytest.raises(Boom), store.savepoint():  # nested savepoints
                store.claim_envelope("src", "c", "{}", H)
                raise Boom
            store.record_evaluation('["l1","w1"]', AT, H, "2026-02-01T11:00:00Z")
    assert [store.find_envelope("src", n) for n in "abc"] == ["{}", None, None]
    assert store.route_state('["l1","w1"]') == ("one", None)
    assert store.route_row('["l1","w1"]')["version"] == 1
    assert [(e["seq"] if gapless(store) else 1, e["recorded_at"])
            for e in store.evaluations()] == [(1, "2026-02-01T11:00:00Z")]


# -- routes ---------------------------------------------------------------------------------------

def test_routes_are_created_fixed_and_counted(store) -> None:
    with store.transaction():
        store.create_route('["l1","w1"]', "new", H, AT)
        store.fix_route('["l2","w1"]', "left", "bye", "hash-2", AT)
    assert store.route_row('["l1","w1"]') == {"route_key": '["l1","w1"]', "state": "new", "screen": None,
                                              "version": 0, "config_hash": H, "created_at": AT, "updated_at": AT}
    later = "2026-02-02T10:00:00Z"
    with store.transaction():
        store.fix_route('["l1","w1"]', "in_webinar", "live", "hash-2", later)
        store.fix_route('["l1","w1"]', "completed", None, "hash-3", later)
    assert store.route_row('["l1","w1"]') == {"route_key": '["l1","w1"]', "state": "completed", "screen": None,
                                              "version": 2, "config_hash": "hash-3", "created_at": AT,
                                              "updated_at": later}
    assert store.route_state('["l2","w1"]') == ("left", "bye")
    assert store.route_state('["l3","w1"]') is None and store.route_row('["l3","w1"]') is None
    assert store.route_states() == {'["l1","w1"]': ("completed", None), '["l2","w1"]': ("left", "bye")}
    assert store.route_counts() == {"completed": 1, "left": 1}
    with pytest.raises(StoreError), store.transaction():
        store.create_route('["l1","w1"]', "new", H, AT)
    assert store.route_state('["l1","w1"]') == ("completed", None)


def test_route_keys_match_by_position_and_type(store) -> None:
    keys = ['["l1","w1"]', '["l2","w1"]', '["l1","w2"]', '[1,"w1"]', '["1","w1"]', '["é","w1"]', '["Z","w1"]']
    with store.transaction():
        for k in keys:
            store.create_route(k, "new", H, AT)
    assert store.route_keys({}) == sorted(keys)
    assert store.route_keys({1: "w1"}) == ['["1","w1"]', '["Z","w1"]', '["l1","w1"]', '["l2","w1"]',
                                           '["é","w1"]', '[1,"w1"]']
    assert store.route_keys({0: "l1"}) == ['["l1","w1"]', '["l1","w2"]']
    assert store.route_keys({0: 1}) == ['[1,"w1"]']  # a number is not the text "1"
    assert store.route_keys({0: "1"}) == ['["1","w1"]']
    assert store.route_keys({0: "l1", 1: "w2"}) == ['["l1","w2"]']
    assert store.route_keys({2: "w1"}) == []


def test_history_follows_the_keys_facts_in_order(store) -> None:
    with store.transaction():
        one = store.add_fact(fact("e1"))
        other = store.add_fact(fact("e2", key='["l2","w1"]'))
        two = store.add_fact(fact("e3"))
        store.append_history('["l1","w1"]', "new", "in", {"source": "src", "id": "e1", "type": "t"}, one, H, AT)
        store.append_history('["l2","w1"]', "new", "x", {"source": "src", "id": "e2", "type": "t"}, other, H, AT)
        store.append_history('["l1","w1"]', "in", "done", {"source": "src", "id": "e3", "type": "u"}, two, H, "T2")
    assert store.history('["l1","w1"]') == [
        {"from": "new", "to": "in", "event": {"source": "src", "id": "e1", "type": "t"}, "at": AT},
        {"from": "in", "to": "done", "event": {"source": "src", "id": "e3", "type": "u"}, "at": "T2"}]
    assert [h["to_state"] for h in store.key_story('["l1","w1"]').history] == ["in", "done"]
    assert store.history('["l9","w9"]') == []


# -- the quarantine -------------------------------------------------------------------------------

def test_a_rejection_is_kept_once_per_bytes(store) -> None:
    with store.transaction():
        first = store.record_rejection(rejection(b"bad", reason="invalid_json", at="2026-02-01T10:00:00Z"))
        other = store.record_rejection(rejection(b"worse"))
        store.resolve_rejection(first, 7, "2026-02-01T10:30:00Z")
        again = store.record_rejection({**rejection(b"bad", reason="unknown_type", at="2026-02-01T11:00:00Z"),
                                        "source": "changed", "raw": b"bad"})
    assert (first, other, again) == (1, 2, 1)
    (row,) = [r for r in store.rejections(RejectionFilter(state="all"), raw=True) if r["seq"] == 1]
    assert row["reason"] == "unknown_type" and json.loads(row["errors"]) == [{"code": "unknown_type"}]
    assert row["first_seen_at"] == "2026-02-01T10:00:00Z" and row["last_seen_at"] == "2026-02-01T11:00:00Z"
    assert row["source"] == "src" and row["raw"] == b"bad"  # the first sighting's bytes and envelope fields
    assert row["resolved_at"] is None and row["resolved_by_input"] is None  # seen again: back in the quarantine


def test_rejections_are_selected_by_each_filter(store) -> None:
    with store.transaction():
        store.record_rejection(rejection(b"1", reason="invalid_json", source=None, type_=None,
                                         at="2026-02-01T09:00:00Z"))
        store.record_rejection(rejection(b"2", reason="invalid_payload", source="a", at="2026-02-01T10:00:00.5Z"))
        store.record_rejection(rejection(b"3", reason="invalid_payload", source="b", type_="u",
                                         at="2026-02-01T12:00:00+01:00"))
        store.record_rejection(rejection(b"4", reason="too_large", truncated=True, at="2026-02-02T00:00:00Z"))
        store.resolve_rejection(2, 10, AT)

    def seqs(**kw: Any) -> list[int]:
        return [r["seq"] for r in store.rejections(RejectionFilter(**kw))]

    assert seqs() == [1, 3, 4]
    assert seqs(state="resolved") == [2] and seqs(state="all") == [1, 2, 3, 4]
    assert seqs(reasons=("invalid_payload",), state="all") == [2, 3]
    assert seqs(reasons=("invalid_payload", "invalid_json")) == [1, 3]
    assert seqs(sources=("b",)) == [3] and seqs(types=("u",)) == [3]
    # compared as instants: 12:00+01:00 is 11:00Z; 10:00:00.5Z is after 10:00Z
    assert seqs(since="2026-02-01T10:00:00Z", until="2026-02-01T11:00:00Z", state="all") == [2, 3]
    assert seqs(since="2026-02-01T11:00:00.000001Z", state="all") == [4]
    assert seqs(until="2026-02-01T09:00:00Z") == [1]
    assert seqs(truncated=True) == [4] and seqs(truncated=False, state="all") == [1, 2, 3]
    full = list(store.rejections(RejectionFilter(types=("u",)), raw=True))
    assert full[0]["raw"] == b"3" and "raw" not in next(store.rejections(RejectionFilter(types=("u",))))
    assert full[0]["truncated"] in (0, False) and full[0]["raw_size"] == 1
    assert store.rejection_raw(4) == b"4" and store.rejection_raw(99) is None


def test_purge_deletes_the_given_rejections(store) -> None:
    with store.transaction():
        for raw in (b"1", b"2", b"3"):
            store.record_rejection(rejection(raw))
        store.record_input(entry("rejected", rejection_seq=2))
    with store.transaction():
        assert store.purge_rejections([2, 3, 3, 42]) == 2
    assert [r["seq"] for r in store.rejections(RejectionFilter(state="all"))] == [1]
    assert store.purge_rejections([]) == 0
    (logged,) = store.inputs()
    assert logged["rejection_seq"] == 2 and store.input_bytes(logged) is None  # the log keeps its row
    with pytest.raises(Boom), store.transaction():
        store.purge_rejections([1])
        raise Boom
    assert store.rejection_raw(1) == b"1"


# -- the read port --------------------------------------------------------------------------------

def test_the_input_log_and_evaluations_read_back_in_order(store) -> None:
    with store.transaction():
        store.claim_envelope("src", "e1", '{"id":"e1"}', H)
        seq = store.add_fact(fact("e1"))
        store.record_input(entry("accepted", "e1", fact_seq=seq, at="2026-02-01T10:00:00Z"))
        store.record_input(entry("duplicate", "e1", reason="same_fact", config_hash="hash-2"))
        rej = store.record_rejection(rejection(b"x" * 10, truncated=True))
        store.record_input(entry("rejected", rejection_seq=rej, reason="too_large"))
        store.record_evaluation('["l1","w1"]', "2026-02-03T00:00:00Z", H, "2026-02-01T10:00:01Z")
    rows = list(store.inputs())
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"seq": 1, "origin": "in.jsonl", "line": 1, "status": "accepted", "reason": None,
                       "source": "src", "id": "e1", "type": "t", "fact_seq": seq, "rejection_seq": None,
                       "config_hash": H, "recorded_at": "2026-02-01T10:00:00Z"}
    assert list(store.evaluations()) == [{"seq": 1, "route_key": '["l1","w1"]', "evaluated_at": "2026-02-03T00:00:00Z",
                                          "config_hash": H, "recorded_at": "2026-02-01T10:00:01Z"}]
    assert store.history_size() == 4
    assert store.config_hashes() == [H, "hash-2"]
    assert store.input_bytes(rows[0]) == b'{"id":"e1"}' == store.input_bytes(rows[1])
    assert store.input_bytes(rows[2]) == Kept(b"x" * 10, 30, rejection(b"x" * 10)["raw_sha256"], True)
    with store.snapshot():
        assert len(list(store.inputs())) == 3


def test_latest_results_take_each_keys_last_fact(store) -> None:
    with store.transaction():
        store.add_fact(fact("a", type_="result", data={"attended": False}))
        store.add_fact(fact("b", type_="result", key='["l2","w1"]', data={"attended": True}))
        store.add_fact(fact("c", type_="result", data={"attended": True}))
        store.add_fact(fact("d", type_="result", data={"other": 1}))
        store.add_fact(fact("e", type_="other", data={"attended": "no"}))
        store.add_fact(fact("f", type_="result", key=None, data={"attended": "none"}))
    assert store.latest_results("result", "attended") == {'["l1","w1"]': True, '["l2","w1"]': True}
    assert store.latest_results("missing", "attended") == {}


def test_key_story_gathers_what_concerns_a_key(store) -> None:
    key = '["l1","w1"]'
    with store.transaction():
        store.claim_envelope("src", "e1", '{"data":{"lead_id":"l1"},"id":"e1"}', H)
        seq = store.add_fact(fact("e1"))
        derived = store.add_fact(fact("d1", derived=1, rule_id="r1", cause_seq=seq))
        store.add_fact(fact("x1", key='["l2","w1"]'))
        store.record_input(entry("accepted", "e1", fact_seq=seq))
        store.record_input(entry("duplicate", "e1", reason="same_fact"))
        store.claim_envelope("src", "e2", '{"data":{"lead_id":"l2"},"id":"e2"}', H)
        store.record_input(entry("duplicate", "e2", reason="same_fact"))
        named = store.record_rejection(rejection(b'{"lead_id":"l1","w":"w1"}'))
        escaped = store.record_rejection(rejection(b'{"lead_id":"\\u006c1"}'))
        store.record_rejection(rejection(b'{"lead_id":"l2"}'))
        for r in (named, escaped, 3):
            store.record_input(entry("rejected", rejection_seq=r, reason="invalid_payload"))
        store.append_history(key, "new", "in", {"source": "src", "id": "e1", "type": "t"}, seq, H, AT)
        store.add_actions(key, seq, [{"type": "route", "to": "in"}, {"type": "remind", "b": 1, "a": 2}],
                          frozenset({"route"}), H, AT)
        store.record_evaluation(key, AT, H, AT)
        store.record_evaluation('["l2","w1"]', AT, H, AT)
    story = store.key_story(key, body_texts=['"l1"'], raw_texts=[b"l1", b"w1"])
    assert [f["seq"] for f in story.facts] == [seq, derived]
    assert story.facts[1]["rule_id"] == "r1" and story.facts[1]["cause_seq"] == seq and story.facts[1]["derived"]
    by_status = [(r["seq"], r["status"]) for r in story.inputs]
    assert sorted(by_status) == [(1, "accepted"), (2, "duplicate"), (4, "rejected"), (5, "rejected")]
    accepted = next(r for r in story.inputs if r["seq"] == 1)
    assert json.loads(accepted["body"])["id"] == "e1"
    rejected = next(r for r in story.inputs if r["seq"] == 4)
    assert rejected["raw"] == b'{"lead_id":"l1","w":"w1"}' and rejected["now_reason"] == "invalid_payload"
    assert [e["route_key"] for e in story.evaluations] == [key]
    assert [json.loads(a["body"]) for a in story.actions] == [{"type": "route", "to": "in"},
                                                             {"a": 2, "b": 1, "type": "remind"}]
    assert story.actions[1]["body"] == '{"a":2,"b":1,"type":"remind"}'
    assert store.key_story('["nobody"]').facts == []


# -- an engine on each backend ----------------------------------------------------------------------

def _engines(tmp_path: Path) -> dict[str, Engine]:
    config = load_config(bundled_config())

    def clock() -> str:
        return "2026-03-01T00:00:00Z"

    import pg

    # without a server, locally: the other backends still compare (the postgres tests say why they skip)
    names = BACKENDS if os.environ.get(pg.ENV) or os.environ.get("CI") else [b for b in BACKENDS if b != "postgres"]
    return {name: Engine(config, make_store(name, tmp_path), clock=clock) for name in names}


def test_the_example_events_give_identical_results_on_every_backend(tmp_path: Path) -> None:
    lines = (ROOT / "examples" / "events.jsonl").read_bytes().splitlines()
    lines += lines[:4] + [b"{not json", lines[0].replace(b'"id"', b'"id2"')]
    outcome: dict[str, Any] = {}
    for name, eng in _engines(tmp_path).items():
        with eng:
            results = eng.process_many(lines, batch_size=7)
            evaluations = eng.evaluate(webinar_id="webinar-2026-02", at="2026-02-11T00:00:00Z")
            keys = sorted(eng.store.route_states())
            routes = {k: eng.route(**eng.config.route.route_key.decode(k)) for k in keys}
            stories = {k: eng.explain(**eng.config.route.route_key.decode(k)) for k in keys}
            rejections = eng.rejections(state="all")
            reprocessed = eng.reprocess()
            outcome[name] = {"results": results, "evaluations": evaluations, "routes": routes, "stories": stories,
                             "rejections": rejections, "reprocessed": reprocessed,
                             "inputs": list(eng.store.inputs()), "counts": eng.store.route_counts(),
                             "latest": eng.store.latest_results("client_webinar_attendance_evaluated", "attended")}
    memory, sqlite = outcome["memory"], outcome["sqlite"]
    assert {r["status"] for r in sqlite["results"]} == {"accepted", "duplicate", "rejected"}
    assert len(sqlite["routes"]) >= 3 and all(v is not None for v in sqlite["routes"].values())
    for part in sqlite:
        assert memory[part] == sqlite[part], part


def _scenario_files() -> list[Path]:
    return sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("mode", ["one_by_one", "batch_of_2"])
@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: p.stem)
def test_each_scenario_runs_identically_on_the_memory_store(path: Path, mode: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The data-driven scenarios (tests/scenarios/) through `Engine.open` with its store swapped
    for a MemoryStore: every step's result equals the SQLite run's."""
    from test_scenarios import load_scenario, run_scenario

    scenario = load_scenario(path)
    on_sqlite = run_scenario(scenario, mode, tmp_path / "sqlite")
    opened: list[MemoryStore] = []

    def memory_store(db: Any, **_: Any) -> MemoryStore:
        opened.append(MemoryStore(str(db)))
        return opened[-1]

    monkeypatch.setattr(engine.api, "open_store", memory_store)
    on_memory = run_scenario(scenario, mode, tmp_path / "memory")
    assert len(opened) == 1 and not (tmp_path / "memory" / "scenario.db").exists()
    assert on_sqlite and on_memory == on_sqlite
