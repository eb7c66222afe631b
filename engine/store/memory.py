"""The in-memory store: both ports in plain Python (dicts and lists), for tests and embedding.

It behaves as the SQLite store does, down to what a test can observe: sequence numbers
(the largest in use plus one, as SQLite's rowid), dedupe (an envelope's (source, id) and a
fact's (type, identity) are unique), a rejection kept once per raw_sha256, transactions
that undo everything on an exception and savepoints that undo only their own block. A
write records how to undo itself while a transaction is open; a rollback runs those
records backwards. One thread; nothing survives `close()`.
"""

from __future__ import annotations

import json
from bisect import insort
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from ..errors import StoreError
from .base import (
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
    matches_rejection,
)

_F_TYPE, _F_ROUTE_KEY, _F_IDENTITY, _F_DATA = (FACT_COLUMNS.index(c) for c in ("type", "route_key", "identity", "data"))
_REJECTION_COLUMNS = ("seq", "reason", "errors", "source", "id", "type", "raw_size", "raw_sha256", "truncated",
                      "first_seen_at", "last_seen_at", "config_hash", "resolved_at", "resolved_by_input")


def _next(table: dict[int, Any]) -> int:
    """SQLite's rowid rule: one more than the largest in use (tables are kept in seq order)."""
    return next(reversed(table), 0) + 1


def _put_back(table: dict[int, Any], seq: int, value: Any) -> None:
    """Restore a deleted entry where it belongs in seq order."""
    last = next(reversed(table), 0)
    table[seq] = value
    if seq < last:  # only when a rollback restores a deleted entry
        ordered = sorted(table.items())
        table.clear()
        table.update(ordered)


class MemoryStore(Store, HistoryReader):
    """Both storage ports, held in memory."""

    def __init__(self, name: str = "memory") -> None:
        self.path = name  # what messages name, as a file store names its file
        self._facts: dict[int, tuple[Any, ...]] = {}
        self._by_key: dict[str, list[int]] = {}
        self._identities: dict[tuple[str, str], int] = {}
        self._envelopes: dict[tuple[str, str], tuple[str, str]] = {}
        self._rejections: dict[int, Row] = {}
        self._by_sha: dict[str, int] = {}
        self._inputs: dict[int, tuple[Any, ...]] = {}
        self._routes: dict[str, Row] = {}
        self._route_history: dict[int, Row] = {}
        self._actions: dict[int, Row] = {}
        self._evaluations: dict[int, Row] = {}
        self._outbox: dict[int, Row] = {}
        self._cursors: dict[str, str] = {}
        self._delivery_consumers: dict[str, Row] = {}
        self._deliveries: dict[int, Row] = {}
        self._delivery_ids: dict[tuple[str, str], int] = {}
        self._undo: list[Callable[[], None]] | None = None  # None: no transaction open

    # -- transactions ---------------------------------------------------------------------------

    def _did(self, undo: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    def _roll_back_to(self, mark: int) -> None:
        assert self._undo is not None
        while len(self._undo) > mark:
            self._undo.pop()()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._undo is not None:
            raise StoreError(f"{self.path}: database error: cannot start a transaction within a transaction")
        self._undo = []
        try:
            yield
        except BaseException:
            self._roll_back_to(0)
            raise
        finally:
            self._undo = None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        if self._undo is None:  # as in SQLite, a savepoint outside a transaction is one
            with self.transaction():
                yield
            return
        mark = len(self._undo)
        try:
            yield
        except BaseException:
            self._roll_back_to(mark)
            raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        yield  # one thread: nothing else writes meanwhile

    def close(self) -> None:
        pass

    # -- the write port -------------------------------------------------------------------------

    def find_envelope(self, source: str, event_id: str) -> str | None:
        found = self._envelopes.get((source, event_id))
        return found[0] if found else None

    def claim_envelope(self, source: str, event_id: str, body: str, config_hash: str) -> bool:
        key = (source, event_id)
        if key in self._envelopes:
            return False
        self._envelopes[key] = (body, config_hash)
        self._did(lambda: self._envelopes.pop(key))
        return True

    def forget(self, fact_seq: int | None, source: str, event_id: str) -> None:
        if fact_seq is not None:
            self._delete_fact(fact_seq)
        key = (source, event_id)
        if key in self._envelopes:
            kept = self._envelopes.pop(key)
            self._did(lambda: self._envelopes.__setitem__(key, kept))

    def has_identity(self, event_type: str, identity: str) -> bool:
        return (event_type, identity) in self._identities

    def add_fact(self, row: tuple[Any, ...]) -> int | None:
        identity = row[_F_IDENTITY]
        if identity is not None and (row[_F_TYPE], identity) in self._identities:
            return None
        return self._put_fact(tuple(row))

    def insert_fact(self, row: tuple[Any, ...]) -> int:
        identity = row[_F_IDENTITY]
        if identity is not None and (row[_F_TYPE], identity) in self._identities:
            raise StoreError(f"{self.path}: database error: UNIQUE constraint failed: facts.type, facts.identity")
        return self._put_fact(tuple(row))

    def _put_fact(self, row: tuple[Any, ...]) -> int:
        seq = _next(self._facts)
        self._index_fact(seq, row)
        self._did(lambda: self._unindex_fact(seq))
        return seq

    def _index_fact(self, seq: int, row: tuple[Any, ...]) -> None:
        _put_back(self._facts, seq, row)
        if row[_F_ROUTE_KEY] is not None:
            insort(self._by_key.setdefault(row[_F_ROUTE_KEY], []), seq)
        if row[_F_IDENTITY] is not None:
            self._identities[(row[_F_TYPE], row[_F_IDENTITY])] = seq

    def _unindex_fact(self, seq: int) -> tuple[Any, ...] | None:
        row = self._facts.pop(seq, None)
        if row is None:
            return None
        if row[_F_ROUTE_KEY] is not None:
            seqs = self._by_key[row[_F_ROUTE_KEY]]
            seqs.remove(seq)
            if not seqs:
                del self._by_key[row[_F_ROUTE_KEY]]
        if row[_F_IDENTITY] is not None:
            del self._identities[(row[_F_TYPE], row[_F_IDENTITY])]
        return row

    def _delete_fact(self, seq: int) -> None:
        row = self._unindex_fact(seq)
        if row is not None:
            self._did(lambda: self._index_fact(seq, row))

    def facts_for_key(self, route_key: str) -> list[tuple[str, dict[str, Any]]]:
        return [(row[_F_TYPE], orjson.loads(row[_F_DATA]))
                for row in (self._facts[s] for s in self._by_key.get(route_key, ()))]

    def facts_with_identity(self, route_key: str) -> list[tuple[str, dict[str, Any], str | None]]:
        return [(row[_F_TYPE], orjson.loads(row[_F_DATA]), row[_F_IDENTITY])
                for row in (self._facts[s] for s in self._by_key.get(route_key, ()))]

    def route_state(self, route_key: str) -> tuple[str, str | None] | None:
        route = self._routes.get(route_key)
        return (route["state"], route["screen"]) if route else None

    def create_route(self, route_key: str, state: str, config_hash: str, at: str) -> None:
        if route_key in self._routes:
            raise StoreError(f"{self.path}: database error: UNIQUE constraint failed: routes.route_key")
        self._routes[route_key] = {"route_key": route_key, "state": state, "screen": None, "version": 0,
                                   "config_hash": config_hash, "created_at": at, "updated_at": at}
        self._did(lambda: self._routes.pop(route_key))

    def fix_route(self, route_key: str, state: str, screen: str | None, config_hash: str, at: str) -> None:
        old = self._routes.get(route_key)
        if old is None:
            self._routes[route_key] = {"route_key": route_key, "state": state, "screen": screen, "version": 1,
                                       "config_hash": config_hash, "created_at": at, "updated_at": at}
            self._did(lambda: self._routes.pop(route_key))
            return
        self._routes[route_key] = {**old, "state": state, "screen": screen, "version": old["version"] + 1,
                                   "config_hash": config_hash, "updated_at": at}
        self._did(lambda: self._routes.__setitem__(route_key, old))

    def _append(self, table: dict[int, Row], row: Row) -> int:
        seq = _next(table)
        table[seq] = {"seq": seq, **row}
        self._did(lambda: table.pop(seq))
        return seq

    def append_history(self, route_key: str, before: str, after: str, cause: dict[str, Any], fact_seq: int,
                       config_hash: str, at: str) -> None:
        self._append(self._route_history, {
            "route_key": route_key, "from_state": before, "to_state": after, "event_source": cause["source"],
            "event_id": cause["id"], "event_type": cause["type"], "fact_seq": fact_seq, "config_hash": config_hash,
            "at": at})

    def add_actions(self, route_key: str, fact_seq: int, actions: list[dict[str, Any]], consumed: frozenset[str],
                    config_hash: str, at: str) -> None:
        for i, a in enumerate(actions):
            self._append(self._actions, {
                "route_key": route_key, "fact_seq": fact_seq, "position": i, "type": a["type"],
                "body": orjson.dumps(a, option=orjson.OPT_SORT_KEYS).decode(), "applied": int(a["type"] in consumed),
                "config_hash": config_hash, "created_at": at})

    def add_outbox(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        for route_key, item_id, item_type, body, at in rows:
            self._append(self._outbox, {"route_key": route_key, "id": item_id, "type": item_type, "body": body,
                                        "recorded_at": at})

    def _check_head(self, cursor: str, after: int) -> None:
        if after and after > next(reversed(self._outbox), 0):
            raise past_head(cursor)

    def set_cursor(self, consumer: str, cursor: str, at: str) -> None:
        self._check_head(cursor, seq_cursor(cursor))
        old = self._cursors.get(consumer)
        self._cursors[consumer] = cursor
        self._did(lambda: self._cursors.pop(consumer) if old is None else self._cursors.__setitem__(consumer, old))

    def outbox_after(self, cursor: str, types: frozenset[str], limit: int) -> tuple[list[str], str]:
        after = seq_cursor(cursor)
        self._check_head(cursor, after)
        if not types:
            return [], cursor
        found = [(seq, row["body"]) for seq, row in self._outbox.items() if seq > after and row["type"] in types]
        found = found[:limit]
        last = found[-1][0] if len(found) == limit else next(reversed(self._outbox), after)
        last = max(last, after)
        return [body for _, body in found], str(last) if last > after else cursor

    def cursor_of(self, consumer: str) -> str:
        return self._cursors.get(consumer, "")

    def outbox_backlog(self, cursor: str, types: frozenset[str]) -> int:
        after = seq_cursor(cursor)
        return sum(1 for seq, row in self._outbox.items() if seq > after and row["type"] in types)

    # -- push delivery -------------------------------------------------------------------------

    def _change(self, row: Row, **values: Any) -> None:
        """Update a row's fields, undone on rollback."""
        old = {k: row[k] for k in values}
        row.update(values)
        self._did(lambda: row.update(old))

    def _delivery_consumer(self, consumer: str) -> Row:
        if consumer not in self._delivery_consumers:
            self._delivery_consumers[consumer] = {"consumer": consumer, "cursor": "", "disabled_at": None,
                                                  "disabled_reason": None, "lease_owner": None, "lease_until": 0.0}
            self._did(lambda: self._delivery_consumers.pop(consumer))
        return self._delivery_consumers[consumer]

    def take_lease(self, consumer: str, owner: str, now: float, until: float) -> bool:
        row = self._delivery_consumer(consumer)
        if row["lease_owner"] != owner and row["lease_until"] > now:
            return False
        self._change(row, lease_owner=owner, lease_until=until)
        return True

    def enqueue_deliveries(self, consumer: str, rows: Sequence[tuple[str, str, str, str]], cursor: str,
                           at: str) -> None:
        seq_cursor(cursor)
        for item_id, item_type, about, body in rows:
            if (consumer, item_id) in self._delivery_ids:
                continue
            seq = self._append(self._deliveries, {
                "consumer": consumer, "id": item_id, "type": item_type, "subject": about, "body": body,
                "status": "pending", "attempts": 0, "next_at": 0.0, "last_status": None, "last_answer": None,
                "updated_at": at})
            self._delivery_ids[(consumer, item_id)] = seq
            self._did(lambda key=(consumer, item_id): self._delivery_ids.pop(key))
        self._change(self._delivery_consumer(consumer), cursor=cursor)

    def update_delivery(self, consumer: str, item_id: str, status: str, attempts: int, next_at: float,
                        last_status: int | None, last_answer: str, at: str) -> None:
        seq = self._delivery_ids.get((consumer, item_id))
        if seq is not None:
            self._change(self._deliveries[seq], status=status, attempts=attempts, next_at=next_at,
                         last_status=last_status, last_answer=last_answer, updated_at=at)

    def retry_deliveries(self, consumer: str | None, item_id: str | None, at: str) -> int:
        count = 0
        for row in self._deliveries.values():
            if row["status"] == "failed" and consumer in (None, row["consumer"]) and item_id in (None, row["id"]):
                self._change(row, status="pending", attempts=0, next_at=0.0, updated_at=at)
                count += 1
        return count

    def set_disabled(self, consumer: str, reason: str | None, at: str) -> None:
        self._change(self._delivery_consumer(consumer), disabled_at=None if reason is None else at,
                     disabled_reason=reason)

    def delivery_consumer(self, consumer: str) -> Row | None:
        row = self._delivery_consumers.get(consumer)
        return dict(row) if row is not None else None

    def deliveries(self, consumer: str | None, statuses: Sequence[str], limit: int) -> list[Row]:
        found = [dict(row) for row in self._deliveries.values()
                 if row["status"] in statuses and consumer in (None, row["consumer"])]
        return found[:limit]

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for row in self._deliveries.values():
            counts[(row["consumer"], row["status"])] = counts.get((row["consumer"], row["status"]), 0) + 1
        return counts

    def record_rejection(self, row: dict[str, Any]) -> int:
        seq = self._by_sha.get(row["raw_sha256"])
        if seq is not None:
            old = self._rejections[seq]
            self._rejections[seq] = {**old, "reason": row["reason"], "errors": row["errors"],
                                     "config_hash": row["config_hash"], "last_seen_at": row["at"],
                                     "resolved_at": None, "resolved_by_input": None}
            self._did(lambda: self._rejections.__setitem__(seq, old))
            return seq
        seq = _next(self._rejections)
        self._rejections[seq] = {
            "seq": seq, "raw_sha256": row["raw_sha256"], "raw": bytes(row["raw"]), "raw_size": row["raw_size"],
            "truncated": row["truncated"], "reason": row["reason"], "errors": row["errors"], "source": row["source"],
            "id": row["id"], "type": row["type"], "config_hash": row["config_hash"], "first_seen_at": row["at"],
            "last_seen_at": row["at"], "resolved_at": None, "resolved_by_input": None}
        self._by_sha[row["raw_sha256"]] = seq
        self._did(lambda: self._drop_rejection(seq))
        return seq

    def _drop_rejection(self, seq: int) -> Row:
        gone = self._rejections.pop(seq)
        del self._by_sha[gone["raw_sha256"]]
        return gone

    def _restore_rejection(self, row: Row) -> None:
        _put_back(self._rejections, row["seq"], row)
        self._by_sha[row["raw_sha256"]] = row["seq"]

    def record_input(self, row: tuple[Any, ...]) -> int:
        seq = _next(self._inputs)
        self._inputs[seq] = tuple(row)
        self._did(lambda: self._inputs.pop(seq))
        return seq

    def record_evaluation(self, route_key: str, evaluated_at: str, config_hash: str, at: str) -> int:
        return self._append(self._evaluations, {"route_key": route_key, "evaluated_at": evaluated_at,
                                                "config_hash": config_hash, "recorded_at": at})

    def resolve_rejection(self, seq: int, input_seq: int, at: str) -> None:
        old = self._rejections.get(seq)
        if old is None:
            return
        self._rejections[seq] = {**old, "resolved_at": at, "resolved_by_input": input_seq}
        self._did(lambda: self._rejections.__setitem__(seq, old))

    def purge_rejections(self, seqs: list[int]) -> int:
        removed = 0
        for seq in dict.fromkeys(seqs):
            if seq in self._rejections:
                gone = self._drop_rejection(seq)
                self._did(lambda gone=gone: self._restore_rejection(gone))
                removed += 1
        return removed

    # -- route reads ----------------------------------------------------------------------------

    def route_row(self, route_key: str) -> Row | None:
        route = self._routes.get(route_key)
        return dict(route) if route else None

    def _history_rows(self, route_key: str) -> list[Row]:
        """route_history rows joined to the key's facts (as the SQL joins them), by seq."""
        out = []
        for h in self._route_history.values():
            fact = self._facts.get(h["fact_seq"])
            if fact is not None and fact[_F_ROUTE_KEY] == route_key:
                out.append(dict(h))
        return sorted(out, key=lambda h: h["seq"])

    def history(self, route_key: str) -> list[Row]:
        return [{"from": h["from_state"], "to": h["to_state"],
                 "event": {"source": h["event_source"], "id": h["event_id"], "type": h["event_type"]}, "at": h["at"]}
                for h in self._history_rows(route_key)]

    def route_keys(self, match: dict[int, Any]) -> list[str]:
        return sorted(k for k in self._routes if _key_matches(k, match))

    # -- the read port --------------------------------------------------------------------------

    def _input_row(self, seq: int) -> Row:
        return {"seq": seq, **dict(zip(INPUT_COLUMNS, self._inputs[seq], strict=True))}

    def inputs(self) -> Iterator[Row]:
        return iter([self._input_row(seq) for seq in sorted(self._inputs)])

    def evaluations(self) -> Iterator[Row]:
        return iter([dict(self._evaluations[seq]) for seq in sorted(self._evaluations)])

    def history_size(self) -> int:
        return len(self._inputs) + len(self._evaluations)

    def input_bytes(self, row: Row) -> bytes | Kept | None:
        if row["status"] in ("accepted", "duplicate"):
            found = self._envelopes.get((row["source"], row["id"]))
            return found[0].encode("utf-8") if found else None
        r = self._rejections.get(row["rejection_seq"])  # type: ignore[arg-type]
        if r is None:
            return None
        return Kept(r["raw"], r["raw_size"], r["raw_sha256"], bool(r["truncated"]))

    def rejections(self, selection: RejectionFilter, *, raw: bool = False) -> Iterator[Row]:
        columns = _REJECTION_COLUMNS + (("raw",) if raw else ())
        return iter([{c: r[c] for c in columns} for r in (self._rejections[s] for s in sorted(self._rejections))
                     if matches_rejection(r, selection)])

    def rejection_raw(self, seq: int) -> bytes | None:
        r = self._rejections.get(seq)
        return r["raw"] if r else None

    def key_story(self, route_key: str, *, body_texts: Sequence[str] = (),
                  raw_texts: Sequence[bytes] = ()) -> KeyStory:
        story = KeyStory()
        story.facts = [{"seq": s, **dict(zip(FACT_COLUMNS, self._facts[s], strict=True))}
                       for s in self._by_key.get(route_key, ())]
        accepted, duplicates, rejected = [], [], []
        for seq in sorted(self._inputs):
            row = self._input_row(seq)
            envelope = self._envelopes.get((row["source"], row["id"]))
            if row["status"] == "accepted" and envelope is not None:
                fact = self._facts.get(row["fact_seq"])  # type: ignore[arg-type]
                if fact is not None and fact[_F_ROUTE_KEY] == route_key:
                    accepted.append({**row, "body": envelope[0]})
            elif row["status"] == "duplicate" and envelope is not None:
                if all(t in envelope[0] for t in body_texts):
                    duplicates.append({**row, "body": envelope[0]})
            elif row["status"] == "rejected":
                r = self._rejections.get(row["rejection_seq"])  # type: ignore[arg-type]
                if r is not None and (all(t in r["raw"] for t in raw_texts) or b"\\" in r["raw"]
                                      or b"\x00" in r["raw"]):
                    rejected.append({**row, "raw": r["raw"], "now_reason": r["reason"], "errors": r["errors"],
                                     "resolved_at": r["resolved_at"], "resolved_by_input": r["resolved_by_input"]})
        story.inputs = accepted + duplicates + rejected
        story.evaluations = [dict(e) for s, e in sorted(self._evaluations.items()) if e["route_key"] == route_key]
        story.history = self._history_rows(route_key)
        story.actions = [{"fact_seq": a["fact_seq"], "body": a["body"]}
                         for s, a in sorted(self._actions.items()) if a["route_key"] == route_key]
        return story

    def route_states(self) -> dict[str, tuple[str, str | None]]:
        return {k: (r["state"], r["screen"]) for k, r in self._routes.items()}

    def route_counts(self) -> dict[str, int]:
        return dict(Counter(r["state"] for r in self._routes.values()))

    def latest_results(self, event_type: str, field: str) -> dict[str, Any]:
        latest: dict[str, Any] = {}
        for seq in sorted(self._facts):
            row = self._facts[seq]
            if row[_F_TYPE] == event_type and row[_F_ROUTE_KEY] is not None:
                payload = json.loads(row[_F_DATA])
                if field in payload:
                    latest[row[_F_ROUTE_KEY]] = payload[field]
        return latest

    def config_hashes(self) -> list[str]:
        hash_at = INPUT_COLUMNS.index("config_hash")
        return list(dict.fromkeys(self._inputs[seq][hash_at] for seq in sorted(self._inputs)))


def _key_matches(route_key: str, match: dict[int, Any]) -> bool:
    """SQLite's `json_extract(route_key, '$[i]') = ?` for each i: text equals only text, numbers
    compare as numbers (a JSON true is 1), a missing position matches nothing."""
    if not match:
        return True
    values = json.loads(route_key)
    for i, wanted in match.items():
        if not isinstance(values, list) or not 0 <= i < len(values):
            return False
        value = values[i]
        if isinstance(value, (list, dict)):
            value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if value is None or isinstance(value, str) != isinstance(wanted, str) or value != wanted:
            return False
    return True
