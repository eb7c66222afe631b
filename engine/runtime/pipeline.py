"""The Engine: what happens to an event, from bytes in to a committed outcome.

Steps 1-6 (size, JSON, envelope, type, emitter, payload) are pure and run before any
lock is taken. Steps 7-8 (dedupe, store, rules, route, actions) and the input-log row run
inside one write transaction, so an event's effects commit together or not at all; a batch
shares one transaction, and a rule that fails undoes its own event's two claims (envelope and
fact; rules validate before anything else is written), so it rolls back that event only. A
result leaves the engine only after its transaction committed.
"""

from __future__ import annotations

import gc
import json
import random
import time
import reprlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .consumers import RouteConsumer
from .contract import Contract
from .emitters import EmitterPolicy
from ..errors import StoreConflict, StoreUnavailable, UsageError
from ..jsonvalue import canonical_json
from .envelope import DEFAULT_MAX_EVENT_BYTES, Envelope, Oversized, fingerprint, read_envelope
from ..model import Config
from ..timefmt import UtcClock, normalise_time
from ..reasons import ACCEPTED, DUPLICATE, REJECTED, Rejected, error
from . import outbox
from .route import RouteMachine
from .rules import RuleBook
from .scenario import actions_for
from ..store.base import Store

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class Received:
    """An event as a transport received it, with what the transport already decided.

    A transport authenticates its sender: `emitter` is that sender's emitter, and an event
    whose `source` names another one is rejected `unauthorized_emitter`. A transport may also
    refuse an event before the engine can read it (a request without a required attribute):
    `refusal` = (reason, errors) records it as that rejection. `raw` is what a rejection keeps
    when the bytes that arrived are not `event` itself (an event rebuilt from headers).
    """

    event: dict[str, Any] | str | bytes
    emitter: str | None = None
    refusal: tuple[str, list[dict[str, Any]]] | None = None
    raw: bytes | None = None


EventInput = dict[str, Any] | str | bytes | Oversized | Received
Item = tuple[EventInput, str | None, int | None]  # (event, origin, line)
Settle = Callable[[Item, dict[str, Any], int], None]
Prepared = tuple[bytes | Oversized, Envelope | Rejected, dict[str, Any]]
Claims = tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]


def _result(status: str, *, envelope: Envelope | None = None, partial: dict[str, Any] | None = None,
            reason: str | None = None, errors: list[dict[str, Any]] | None = None,
            emitted: list[dict[str, Any]] | None = None, actions: list[dict[str, Any]] | None = None,
            route: dict[str, Any] | None = None) -> dict[str, Any]:
    if envelope is not None:
        # an envelope's id and type are non-empty strings that canonical JSON wrote, so no lone
        # surrogate: text_or_none would return them as they are
        event_id, event_type = envelope.id, envelope.type
    else:
        ids = partial or {}
        event_id, event_type = text_or_none(ids.get("id")), text_or_none(ids.get("type"))
    return {
        "line": None,
        "id": event_id,
        "type": event_type,
        "status": status, "reason": reason, "errors": errors or [],
        "emitted": emitted or [], "actions": actions or [], "route": route,
    }


def text_or_none(value: Any) -> str | None:
    """A string that can be stored and printed as UTF-8, or None."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _as_bytes(event: EventInput) -> bytes | Oversized:
    """The input as the bytes a rejection keeps; a Python object that is not JSON is refused."""
    if isinstance(event, (bytes, Oversized)):
        return event
    if isinstance(event, bytearray | memoryview):
        return bytes(event)
    if isinstance(event, str):
        return event.encode("utf-8", "surrogatepass")
    try:  # the standard encoder: what it writes is then read like any line (big ints, surrogates)
        text = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError) as exc:
        raw = reprlib.repr(event).encode("utf-8", "backslashreplace")
        if isinstance(exc, ValueError) and "Out of range float" in str(exc):  # NaN or an infinity
            raise _NotJson(raw, "NaN and Infinity are not JSON numbers", "non_finite_number") from None
        raise _NotJson(raw, f"not JSON-serialisable: {type(exc).__name__}: {str(exc)[:200]}") from None


class _NotJson(Exception):
    """A Python object given to the API that has no JSON form (a set, bytes inside a dict, a cycle)."""

    def __init__(self, raw: bytes, message: str, code: str = "not_json"):
        super().__init__(message)
        self.raw, self.message, self.code = raw, message, code


class _Retry:
    """How often a batch runs again after its transaction was rolled back whole: a collision with
    another writer (`StoreConflict`) up to CONFLICT_ATTEMPTS times, after a short random pause;
    an unreachable database (`StoreUnavailable`) for up to `outage_wait` seconds."""

    CONFLICT_ATTEMPTS = 50

    def __init__(self, outage_wait: float):
        self.outage_wait = outage_wait
        self.conflicts = 0
        self.outage_since: float | None = None

    def wait(self, exc: Exception) -> None:
        if isinstance(exc, StoreConflict):
            self.conflicts += 1
            if self.conflicts > self.CONFLICT_ATTEMPTS:
                raise exc
            time.sleep(random.uniform(0, 0.002 * min(self.conflicts, 25)))
            return
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        if now - self.outage_since >= self.outage_wait:
            raise exc
        time.sleep(min(0.5, self.outage_wait - (now - self.outage_since)))


class Pipeline:
    """What happens to events, over one config and one store: process, evaluate, read routes.

    It is built from a loaded `Config` and an open store and reads no file; `engine.Engine`
    adds opening by path or URL and the governance tools.

    `outage_wait`: for how many seconds a batch is retried while the database cannot be reached
    (a shared database restarting); 0, the default, fails at once (a server answers 503).
    """

    outage_wait: float = 0.0

    def __init__(self, config: Config, store: Store, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 clock: Callable[[], str] | None = None):
        self.config = config
        self.store = store
        self.max_event_bytes = max_event_bytes
        self.clock = clock or UtcClock()
        self.contract = Contract(config)
        self.emitters = EmitterPolicy(config)
        self.rules = RuleBook(config, self.contract)
        self.machine = RouteMachine(config.route)
        self.consumer = RouteConsumer(store)
        self._inputs = config.input_events()
        # Types whose identity holds the route key's fields as plain values: a fact with such
        # an identity can only be stored under that key, so the key's facts answer "is it known".
        self._identity_names_key = frozenset(
            name for name, spec in config.events.items()
            if set(config.route.key) <= set(spec.identity) and not set(config.route.key) & spec.datetime_fields)
        self._input_seq = 0  # the input-log row of the event applied last
        # An outbox item's time is its commit's: one moment for every item of a transaction,
        # read when the transaction begins (the facts and logs keep each event's own time).
        self._commit_at = ""
        # Whether the store wants a batch's claims up front: the lists cost a little per event,
        # for nothing when its claims are local calls (SQLite, memory).
        self._prefetches = type(store).prefetch_claims is not Store.prefetch_claims

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processing ---------------------------------------------------------------------

    def process(self, event: EventInput, *, origin: str | None = None, line: int | None = None) -> dict[str, Any]:
        """Process one event in its own transaction; never raises for a bad event."""
        return self.process_many([event], batch_size=1, origin=origin, first_line=line)[0]

    def process_many(self, events: Iterable[EventInput], *, batch_size: int = DEFAULT_BATCH_SIZE,
                     origin: str | None = None, first_line: int | None = None) -> list[dict[str, Any]]:
        """Process events with one commit per `batch_size`; results equal one-by-one processing."""
        if isinstance(events, str | bytes | bytearray | memoryview | dict):  # one event, not an iterable of them
            raise UsageError("process_many takes an iterable of events (a list, a file's lines); "
                             "give a single event to process()")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a whole number, at least 1, not {batch_size!r}")
        lines = None if first_line is None else _count(first_line)
        items = ((e, origin, next(lines) if lines else None) for e in events)
        with _collector_paused():  # for the whole call: every result is kept until it returns anyway
            return [r for batch in self.iter_batches(items, batch_size) for r in batch]

    def iter_batches(self, items: Iterable[Item], batch_size: int = DEFAULT_BATCH_SIZE, *,
                     settle: Settle | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yield each batch's results once the batch has committed; items are (event, origin, line).

        `settle(item, result, input_seq)`, when given, runs after each event inside its batch's
        transaction, so what it writes commits with the event (the quarantine marks there
        what a reprocess admitted).
        """
        batch: list[Item] = []
        size = max(1, batch_size)
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield self._commit_batch(batch, settle)
                batch = []
        if batch:
            yield self._commit_batch(batch, settle)

    def _commit_batch(self, batch: list[Item], settle: Settle | None = None) -> list[dict[str, Any]]:
        """One batch in one transaction, with the cycle collector held (see `_collector_paused`).

        The collector is held inline rather than by the context manager: with a commit per
        event this runs once per event, and `_run_batch`'s frame, which holds the batch's
        prepared envelopes, is gone before the collector may run again.
        """
        if not gc.isenabled():
            return self._run_batch(batch, settle)
        gc.disable()
        try:
            return self._run_batch(batch, settle)
        finally:
            gc.enable()

    def _run_batch(self, batch: list[Item], settle: Settle | None) -> list[dict[str, Any]]:
        prepared = [self._prepare(event) for event, _, _ in batch]
        # each envelope's route key and fact identity, computed once: the key is locked, the
        # identity claimed, and both stored with its fact (also when the batch runs again)
        keys = [self.contract.route_key(p[1].data) if isinstance(p[1], Envelope) else None for p in prepared]
        identities = [self.contract.identity_of(p[1].type, p[1].data) if isinstance(p[1], Envelope) else None
                      for p in prepared]
        claims = self._claims(prepared, identities) if self._prefetches else None
        retry = None  # made on the first rollback only
        while True:
            try:
                return self._apply_batch(batch, prepared, keys, identities, claims, settle)
            except (StoreConflict, StoreUnavailable) as exc:  # rolled back whole: run the batch again
                if retry is None:
                    retry = _Retry(self.outage_wait)
                retry.wait(exc)

    def _claims(self, prepared: list[Prepared], identities: list[str | None]) -> Claims:
        """What `Store.prefetch_claims` takes: the batch's (source, id) pairs, its facts' (type,
        identity), and the sha256 of each input already rejected (those rejected inside the
        transaction, an id_conflict or a failed rule, claim on their own)."""
        envelopes = [(p[1].source, p[1].id) for p in prepared if isinstance(p[1], Envelope)]
        facts = [(p[1].type, identity) for p, identity in zip(prepared, identities, strict=True)
                 if identity is not None and isinstance(p[1], Envelope)]
        digests = [fingerprint(p[0], self.max_event_bytes)[2] for p in prepared if not isinstance(p[1], Envelope)]
        return envelopes, facts, digests

    def _apply_batch(self, batch: list[Item], prepared: list[Prepared], keys: list[str | None],
                     identities: list[str | None], claims: Claims | None, settle: Settle | None
                     ) -> list[dict[str, Any]]:
        results = []
        outcome_of = self._outcome_of
        with self.store.transaction():
            self.store.lock_keys(keys)  # None (no envelope, or no key) is skipped
            if claims is not None:
                self.store.prefetch_claims(*claims)
            self._commit_at = self.clock()
            for prep, item, key, identity in zip(prepared, batch, keys, identities, strict=True):
                result = outcome_of(prep, item[1], item[2], key, identity)
                result["line"] = item[2]
                results.append(result)
                if settle is not None:
                    settle(item, result, self._input_seq)
        return results

    def _prepare(self, event: EventInput, emitter: str | None = None) -> Prepared:
        """Steps 1-6, which need no lock: the input's bytes, and its envelope or its rejection.

        The third item is what id, type and source of the result come from: the parsed event
        when it parsed, else nothing (an unparsed line is never guessed at).
        """
        if isinstance(event, Received):
            return self._prepare_received(event)
        try:
            raw = _as_bytes(event)
        except _NotJson as bad:
            return bad.raw, Rejected("malformed_json", [error("", bad.code, bad.message)]), {}
        envelope = None
        try:
            envelope = read_envelope(raw, self.max_event_bytes)
            spec = self.contract.spec(envelope.type)
            if emitter is not None and envelope.source != emitter:
                raise Rejected("unauthorized_emitter", [error(
                    "/source", "not_sender_emitter",
                    f"source {envelope.source!r} is not {emitter!r}, the emitter this sender is authenticated as")])
            self.emitters.check(envelope.source, spec.name)
            self.contract.check_payload(spec.name, envelope.data)
            return raw, envelope, envelope.event
        except Rejected as rejected:
            partial = envelope.event if envelope is not None else rejected.partial
            return raw, rejected.kept(), partial or {}

    def _prepare_received(self, received: Received) -> Prepared:
        if received.refusal is None:
            raw, outcome, partial = self._prepare(received.event, received.emitter)
        else:
            reason, errors = received.refusal
            try:
                raw = _as_bytes(received.event)
            except _NotJson as bad:
                raw = bad.raw
            outcome = Rejected(reason, list(errors))
            partial = received.event if isinstance(received.event, dict) else {}
        if received.raw is not None and isinstance(outcome, Rejected):
            raw = received.raw
        return raw, outcome, partial

    def _outcome_of(self, prepared: Prepared, origin: str | None, line: int | None, route_key: str | None,
                    identity: str | None) -> dict[str, Any]:
        raw, outcome, partial = prepared
        at = self.clock()
        if isinstance(outcome, Envelope):
            try:
                result, fact_seq = self._accept(outcome, route_key, identity, at)
                self._log(result, origin, line, at, fact_seq=fact_seq, source=outcome.source)
                return result
            except Rejected as rejected:
                outcome = rejected.kept()
        result = _result(REJECTED, partial=partial, reason=outcome.reason, errors=outcome.errors)
        self._reject(raw, result, partial, origin, line, at)
        return result

    def _accept(self, env: Envelope, route_key: str | None, identity: str | None, at: str
                ) -> tuple[dict[str, Any], int | None]:
        """Steps 7-8 for one envelope-valid event (`route_key`, `identity`: its payload's), inside the
        caller's transaction.

        Writes come in an order that needs no savepoint: the envelope and the fact (each
        claim doubling as the dedupe check), then the rules, which only read and validate,
        then everything else. A rule that fails undoes the two claims and nothing more.
        """
        if not self.store.claim_envelope(env.source, env.id, env.canonical, self.config.hash):
            if self.store.find_envelope(env.source, env.id) == env.canonical:
                return _result(DUPLICATE, envelope=env, reason="same_envelope"), None
            raise Rejected("id_conflict", [error("/id", "id_conflict",
                                                 f"({env.source}, {env.id}) was seen before with a different body")])
        fact_seq = self.store.add_fact(self._fact_row(env.event, env.floats, route_key, identity, at))
        if fact_seq is None:
            # The envelope stays remembered: a resend of it is same_envelope, its id with
            # another body an id_conflict.
            return _result(DUPLICATE, envelope=env, reason="same_fact"), None
        if route_key is None:
            return _result(ACCEPTED, envelope=env), fact_seq
        try:
            emitted = self._derive(self.rules.on_event.get(env.type, []), env.data, (env.source, env.id), route_key,
                                   fact_seq, None, at)
        except Rejected:
            self.store.forget(fact_seq, env.source, env.id)
            raise
        actions, route = self._drive(env, route_key, fact_seq, at)
        if emitted or actions:
            self.store.add_outbox(outbox.items(route_key, [env.data[f] for f in self.config.route.key], emitted,
                                               actions, (env.source, env.id), self._commit_at))
        return _result(ACCEPTED, envelope=env, emitted=emitted, actions=actions, route=route), fact_seq

    def _fact_row(self, event: dict[str, Any], floats: bool | None, route_key: str | None, identity: str | None,
                  at: str, *, rule_id: str | None = None, cause_seq: int | None = None,
                  evaluation_seq: int | None = None) -> tuple[Any, ...]:
        """A facts row, in store.FACT_COLUMNS order; `floats` as canonical_json takes it."""
        return (event["source"], event["id"], event["type"], route_key, identity,
                canonical_json(event["data"], floats=floats), int(rule_id is not None), rule_id, cause_seq,
                evaluation_seq, self.config.hash, at)

    def _derive(self, rules: list, trigger: dict[str, Any], cause: tuple[str, str], route_key: str,
                cause_seq: int | None, evaluation_seq: int | None, at: str) -> list[dict[str, Any]]:
        """Derive, validate, then store: nothing is written unless every output is valid."""
        if not rules:
            return []
        rows = self.store.facts_with_identity(route_key)
        facts = [(event_type, data) for event_type, data, _ in rows]
        local = {(event_type, identity) for event_type, _, identity in rows if identity is not None}

        def known(event_type: str, identity: str, key: str | None) -> bool:
            if key == route_key and event_type in self._identity_names_key:
                return (event_type, identity) in local  # every fact that could hold it was read above
            return self.store.has_identity(event_type, identity)

        derived = self.rules.derive(rules, trigger, cause, facts, known)
        for d in derived:
            self.store.insert_fact(self._fact_row(d.event, d.floats, d.route_key, d.identity, at, rule_id=d.rule.id,
                                                  cause_seq=cause_seq, evaluation_seq=evaluation_seq))
        return [d.event for d in derived]

    def _drive(self, env: Envelope, route_key: str, fact_seq: int, at: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Move the route for an input event; create its row on the first fact for the key."""
        stored = self.store.route_state(route_key)
        state, screen = stored if stored is not None else (self.config.route.initial, None)
        key = {f: env.data[f] for f in self.config.route.key}
        dest = self.machine.fire(state, env.type) if env.type in self._inputs else None
        if dest is None:
            if stored is None:
                self.store.create_route(route_key, state, self.config.hash, at)
            return [], self._route_view(key, state, screen)
        actions = actions_for(self.config.route, key, state, dest, env.event)
        cause = {"source": env.source, "id": env.id, "type": env.type}
        state, screen = self.consumer.apply(route_key, actions, cause, fact_seq, self.config.hash, at)
        return actions, self._route_view(key, state, screen)

    def _route_view(self, key: dict[str, Any], state: str, screen: str | None) -> dict[str, Any]:
        view = {**key, "state": state, "screen": screen}
        if not self.machine.knows(state):
            view["problem"] = {"code": "unknown_state",
                               "message": f"state '{state}' is not declared by the current config "
                                          f"({self.config.hash[:12]}); the route is kept as it is, not reset"}
        return view

    def _log(self, result: dict[str, Any], origin: str | None, line: int | None, at: str, *,
             fact_seq: int | None = None, rejection_seq: int | None = None, source: str | None = None) -> None:
        self._input_seq = self.store.record_input((  # store.INPUT_COLUMNS
            origin, line, result["status"], result["reason"], source, result["id"], result["type"], fact_seq,
            rejection_seq, self.config.hash, at))

    def _reject(self, raw: bytes | Oversized, result: dict[str, Any], partial: dict[str, Any],
                origin: str | None, line: int | None, at: str) -> None:
        kept, size, digest, truncated = fingerprint(raw, self.max_event_bytes)
        source = text_or_none(partial.get("source"))
        seq = self.store.record_rejection({
            "raw_sha256": digest, "raw": kept, "raw_size": size, "truncated": int(truncated),
            "reason": result["reason"], "errors": json.dumps(result["errors"], ensure_ascii=False),
            "source": source, "id": result["id"], "type": result["type"], "config_hash": self.config.hash, "at": at,
        })
        self._log(result, origin, line, at, rejection_seq=seq, source=source)

    # -- evaluation and reading -----------------------------------------------------------

    def _key(self, given: dict[str, Any], *, complete: bool) -> dict[int, Any]:
        fields = self.config.route.key
        unknown = set(given) - set(fields)
        if unknown:
            raise UsageError(f"unknown route key field(s) {sorted(unknown)}; the route key is {list(fields)}")
        match = {i: given[f] for i, f in enumerate(fields) if given.get(f) is not None}
        if complete and len(match) != len(fields):
            raise UsageError(f"a route is named by all of {list(fields)}")
        return match

    def evaluate(self, *, at: str | None = None, **key: Any) -> list[dict[str, Any]]:
        """Run the evaluation rules for one route key, or every key matching a partial one.

        `at` is the evaluation time (RFC 3339, default now); it becomes the trigger's
        `evaluated_at` and part of each derived event's cause, so one evaluation at one
        moment derives the same ids however often it runs.
        """
        match = self._key(key, complete=False)
        if not match:  # a caller's None where a value was meant must not evaluate every route
            raise UsageError(f"name at least one of the route key's fields {list(self.config.route.key)} "
                             "to evaluate (a field given as None names nothing)")
        try:
            evaluated_at = normalise_time(at) if at is not None else self.clock()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        results = []
        with self.store.transaction():
            keys = self.store.route_keys(match)
            if not keys and len(match) == len(self.config.route.key):
                unknown = dict(zip(self.config.route.key, match.values(), strict=True))
                return [{**unknown, self._result_field(): None, "emitted": []}]
            self._commit_at = self.clock()
            for route_key in keys:
                results.append(self._evaluate_one(route_key, evaluated_at))
        return results

    def _evaluate_one(self, route_key: str, evaluated_at: str) -> dict[str, Any]:
        key = self.config.route.route_key.decode(route_key)
        now = self.clock()
        seq = self.store.record_evaluation(route_key, evaluated_at, self.config.hash, now)
        trigger = {**key, "evaluated_at": evaluated_at}
        cause = ("evaluation", canonical_json([*key.values(), evaluated_at]))
        try:
            with self.store.savepoint():
                emitted = self._derive(self.rules.on_evaluation, trigger, cause, route_key, None, seq, now)
                if emitted:
                    self.store.add_outbox(outbox.items(route_key, list(key.values()), emitted, [], cause,
                                                       self._commit_at))
        except Rejected as rejected:
            return {**key, self._result_field(): self._outcome(route_key), "emitted": [],
                    "error": {"reason": rejected.reason, "errors": rejected.errors}}
        return {**key, self._result_field(): self._outcome(route_key), "emitted": emitted}

    def _result_field(self) -> str:
        er = self.config.evaluation_result
        return er.field if er else "result"

    def _outcome(self, route_key: str) -> Any:
        er = self.config.evaluation_result
        if er is None:
            return None
        value = None
        for event_type, data in self.store.facts_for_key(route_key):
            if event_type == er.event and er.field in data:
                value = data[er.field]
        return value

    def route(self, **key: Any) -> dict[str, Any] | None:
        """A route with its history (oldest first), or None when no fact started it."""
        match = self._key(key, complete=True)
        route_key = canonical_json([match[i] for i in range(len(self.config.route.key))])
        row = self.store.route_row(route_key)
        if row is None:
            return None
        view = self._route_view(self.config.route.route_key.decode(route_key), row["state"], row["screen"])
        view["config_hash"] = row["config_hash"]
        view["history"] = self.store.history(route_key)
        return view

@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cycle collector for one batch (or one process_many call) and let it run after.

    Processing allocates thousands of short-lived objects per batch and makes no cycles of its
    own; left on, the collector would run every few hundred allocations and, while a caller
    keeps earlier results, walk all of them again and again. A collector the caller turned
    off stays off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _count(start: int) -> Iterator[int]:
    while True:
        yield start
        start += 1
