"""The two storage interfaces, as abstract base classes (a backend missing a method fails at
construction, not at the first event that needs it).

- `Store`, the write port: what the runtime calls while processing and evaluating, plus the
  few route reads `Engine.route` and `Engine.evaluate` need. The per-event methods are the
  hot path: a backend implements them directly, with no layer in between.
- `HistoryReader`, the read port: what governance (replay, explain, the quarantine, diff) and
  a console read. A read-only reader opened on a file implements only this one.

A backend that serves an `Engine` implements both (`SQLiteStore`, `MemoryStore`). Every
method raises `StoreError` (or one of its subclasses) for a storage failure, never a driver
exception. Rows the runtime writes travel as tuples in `FACT_COLUMNS` / `INPUT_COLUMNS`
order (`FactRow` and `InputRow` name those positions; their instances are plain tuples).
Rows read back for governance are dicts named by column (`Row`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..timefmt import sortable

Row = dict[str, Any]


class FactRow(NamedTuple):
    """One fact, as `Store.add_fact` / `insert_fact` take it."""

    source: str
    id: str
    type: str
    route_key: str | None
    identity: str | None
    data: str  # canonical JSON
    derived: int
    rule_id: str | None
    cause_seq: int | None
    evaluation_seq: int | None
    config_hash: str
    recorded_at: str


class InputRow(NamedTuple):
    """One input-log entry, as `Store.record_input` takes it."""

    origin: str | None
    line: int | None
    status: str
    reason: str | None
    source: str | None
    id: str | None
    type: str | None
    fact_seq: int | None
    rejection_seq: int | None
    config_hash: str
    recorded_at: str


FACT_COLUMNS: tuple[str, ...] = FactRow._fields
INPUT_COLUMNS: tuple[str, ...] = InputRow._fields

REJECTION_STATES = ("open", "resolved", "all")


class Kept(NamedTuple):
    """What the store kept of a rejected input's bytes: `raw` is the whole input unless
    `truncated`, then only its head; `size` and `sha256` are of the whole."""

    raw: bytes
    size: int
    sha256: str
    truncated: bool


@dataclass(frozen=True)
class RejectionFilter:
    """Which stored rejections a read selects; each given filter narrows, values of one filter are or-ed.

    `since`/`until` bound `last_seen_at` inclusively, compared as instants (RFC 3339 text).
    `state`: open (not resolved), resolved, or all. `truncated`: only truncated (True), only
    whole (False), or either (None).
    """

    reasons: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    state: str = "open"
    truncated: bool | None = None


@dataclass
class KeyStory:
    """Everything stored about one route key, as `explain` reads it (each list in seq order).

    `inputs` holds the accepted inputs whose fact has the key (each with `body`, its stored
    envelope), then the candidates among duplicate inputs (`body`) and rejected ones (`raw`,
    with the rejection's current `now_reason`, `errors`, `resolved_at`, `resolved_by_input`):
    the caller parses those and keeps the ones that really name the key.
    """

    facts: list[Row] = field(default_factory=list)
    inputs: list[Row] = field(default_factory=list)
    evaluations: list[Row] = field(default_factory=list)
    history: list[Row] = field(default_factory=list)  # route_history rows of the key's facts
    actions: list[Row] = field(default_factory=list)  # {fact_seq, body} of the key's actions


def seq_cursor(cursor: str) -> int:
    """An outbox cursor of a one-writer store: the seq of the last item passed ("" is the beginning)."""
    if cursor == "":
        return 0
    if not isinstance(cursor, str) or not plain_number(cursor, 19):
        raise ValueError(f"{cursor!r} is not an outbox cursor of this database")
    return int(cursor)


def plain_number(text: str, longest: int) -> bool:
    """Whether `text` is a whole number as a cursor writes one: ASCII digits, no sign, no leading zero."""
    return 0 < len(text) <= longest and text.isascii() and text.isdigit() and (text[0] != "0" or text == "0")


def past_head(cursor: str) -> ValueError:
    """A cursor no feed of this database gave: past its newest item. Taking it would skip
    every item committed up to it, which the feed promises never to do."""
    return ValueError(f"{cursor!r} is not an outbox cursor of this database: it is past the newest item "
                      "(a cursor comes from a feed of this database)")


DELIVERY_STATUSES = ("pending", "failed", "done")


def delivery_statuses(statuses: Sequence[str]) -> str:
    """A SQL condition on deliveries.status, with the statuses as literals (from this closed set
    only), so that the partial indexes on pending and on failed items serve the query."""
    return " OR ".join(f"status = '{s}'" for s in DELIVERY_STATUSES if s in statuses) or "0 = 1"


def matches_rejection(row: Row, selection: RejectionFilter) -> bool:
    """Whether a rejections row is selected (the in-memory twin of the SQL WHERE clause)."""
    s = selection
    if s.reasons and row["reason"] not in s.reasons:
        return False
    if s.sources and row["source"] not in s.sources:
        return False
    if s.types and row["type"] not in s.types:
        return False
    if s.since is not None and sortable(row["last_seen_at"]) < sortable(s.since):
        return False
    if s.until is not None and sortable(row["last_seen_at"]) > sortable(s.until):
        return False
    if s.state == "open" and row["resolved_at"] is not None:
        return False
    if s.state == "resolved" and row["resolved_at"] is None:
        return False
    return s.truncated is None or bool(row["truncated"]) == s.truncated


class RouteReads(ABC):
    """Route reads both ports offer."""

    @abstractmethod
    def route_row(self, route_key: str) -> Row | None:
        """{route_key, state, screen, version, config_hash, created_at, updated_at}, or None."""

    @abstractmethod
    def history(self, route_key: str) -> list[Row]:
        """The key's route changes, oldest first: {from, to, event: {source, id, type}, at}."""

    @abstractmethod
    def route_keys(self, match: dict[int, Any]) -> list[str]:
        """Route keys whose JSON array holds `match[i]` at each position i, in key order."""


class Store(RouteReads):
    """The write port: what the runtime needs to process events and evaluate routes."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction: everything inside commits together, or nothing on an exception.
        Writers are serialised (the lock is taken up front). Not nestable."""

    def lock_keys(self, route_keys: Iterable[str | None]) -> None:
        """Inside a transaction, before its first write: the route keys it will write (None
        entries are skipped). A backend shared by many processes that does not serialise whole
        transactions (PostgreSQL) locks them here, in a fixed order, so that events of one key
        apply one at a time everywhere and two batches cannot deadlock; one whose transactions
        are already serialised (SQLite's BEGIN IMMEDIATE, the memory store) does nothing and
        never iterates `route_keys`."""

    def prefetch_claims(self, envelopes: Sequence[tuple[str, str]], identities: Sequence[tuple[str, str]],
                        digests: Sequence[str]) -> None:
        """Inside a transaction, right after `lock_keys`: the claims its events may make, so that
        a backend can learn at once which exist already. `envelopes` are the (source, id) of the
        batch's envelopes, `identities` the (type, identity) of their facts, `digests` the
        sha256 of each input rejected before the transaction.

        Each claim (`claim_envelope`, `add_fact`, `record_rejection`) otherwise answers with
        its own statement; for a backend across a socket (PostgreSQL) that is a round trip per
        event, which one lookup per batch saves. It changes no answer: a backend that answers
        later from what it read here must make sure at its commit that nobody claimed the same
        meanwhile, and raise `StoreConflict` if somebody did (the batch then runs again). One
        whose claims are local calls already (SQLite, the memory store) does nothing here."""

    @abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """Inside a transaction: undo only this block's writes on an exception (which propagates)."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the per-event hot path --------------------------------------------------------------

    @abstractmethod
    def find_envelope(self, source: str, event_id: str) -> str | None:
        """The canonical body remembered for (source, id), or None."""

    @abstractmethod
    def claim_envelope(self, source: str, event_id: str, body: str, config_hash: str) -> bool:
        """Remember an envelope; False when its (source, id) was already seen."""

    @abstractmethod
    def forget(self, fact_seq: int | None, source: str, event_id: str) -> None:
        """Undo `claim_envelope` and `add_fact` for an event whose rules failed."""

    @abstractmethod
    def has_identity(self, event_type: str, identity: str) -> bool: ...

    @abstractmethod
    def add_fact(self, row: tuple[Any, ...]) -> int | None:
        """Store a fact (a `FactRow`); its seq, or None when a fact of its type with its
        identity exists already (a same-fact duplicate)."""

    @abstractmethod
    def insert_fact(self, row: tuple[Any, ...]) -> int:
        """Store a fact (a `FactRow`) known to be new; its seq."""

    @abstractmethod
    def facts_for_key(self, route_key: str) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) of the key's facts, in seq order."""

    @abstractmethod
    def facts_with_identity(self, route_key: str) -> list[tuple[str, dict[str, Any], str | None]]:
        """(type, data, identity) of the key's facts, in seq order."""

    @abstractmethod
    def route_state(self, route_key: str) -> tuple[str, str | None] | None:
        """(state, screen) of the key's route, or None."""

    @abstractmethod
    def create_route(self, route_key: str, state: str, config_hash: str, at: str) -> None:
        """A new route in `state`, version 0, no screen."""

    @abstractmethod
    def fix_route(self, route_key: str, state: str, screen: str | None, config_hash: str, at: str) -> None:
        """Record a route's new state and screen (version + 1), creating it (version 1) if new."""

    @abstractmethod
    def append_history(self, route_key: str, before: str, after: str, cause: dict[str, Any], fact_seq: int,
                       config_hash: str, at: str) -> None: ...

    @abstractmethod
    def add_actions(self, route_key: str, fact_seq: int, actions: list[dict[str, Any]], consumed: frozenset[str],
                    config_hash: str, at: str) -> None:
        """Record the actions in order; those whose type is in `consumed` as applied."""

    @abstractmethod
    def record_rejection(self, row: dict[str, Any]) -> int:
        """Keep a rejected input (raw_sha256, raw, raw_size, truncated, reason, errors, source, id,
        type, config_hash, at); the same bytes again update the one entry (reason, errors,
        config_hash, last seen, reopened). Returns its seq."""

    @abstractmethod
    def record_input(self, row: tuple[Any, ...]) -> int:
        """Log one input (an `InputRow`); its seq."""

    @abstractmethod
    def record_evaluation(self, route_key: str, evaluated_at: str, config_hash: str, at: str) -> int: ...

    # -- the quarantine ------------------------------------------------------------------------

    @abstractmethod
    def resolve_rejection(self, seq: int, input_seq: int, at: str) -> None:
        """Take a rejection out of the quarantine: the input `input_seq` admitted its bytes."""

    @abstractmethod
    def purge_rejections(self, seqs: list[int]) -> int:
        """Delete these rejections (their bytes); the input log keeps its rows. Returns how many went."""

    @abstractmethod
    def add_outbox(self, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        """Append outbox items (route_key, id, type, body: CloudEvent JSON, recorded_at), in the
        caller's transaction: an item is visible exactly when the event that made it committed."""

    @abstractmethod
    def set_cursor(self, consumer: str, cursor: str, at: str) -> None:
        """Remember how far `consumer` has acknowledged the outbox (a cursor `outbox_after` gave)."""

    # -- push delivery (the deliverer's state; a consumer's pull cursor is apart) ------------------

    @abstractmethod
    def take_lease(self, consumer: str, owner: str, now: float, until: float) -> bool:
        """Take or renew the consumer's delivery lease for `owner` until `until` (Unix seconds):
        True when no other owner holds it past `now`. Only the holder delivers the consumer."""

    @abstractmethod
    def enqueue_deliveries(self, consumer: str, rows: Sequence[tuple[str, str, str, str]], cursor: str,
                           at: str) -> None:
        """Add outbox items (id, type, subject, body) to the consumer's deliveries, pending, in
        order (an id already there is skipped), and remember `cursor` as how far they were taken."""

    @abstractmethod
    def update_delivery(self, consumer: str, item_id: str, status: str, attempts: int, next_at: float,
                        last_status: int | None, last_answer: str, at: str) -> None:
        """Record an attempt: status pending (next attempt at `next_at`), done or failed."""

    @abstractmethod
    def retry_deliveries(self, consumer: str | None, item_id: str | None, at: str) -> int:
        """Failed deliveries (of one consumer and/or one id, None: any) become pending again; how many."""

    @abstractmethod
    def set_disabled(self, consumer: str, reason: str | None, at: str) -> None:
        """Disable delivery to the consumer (a reason), or enable it again (None)."""


class HistoryReader(RouteReads):
    """The read port: the recorded history, the quarantine, a key's story, route summaries."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """Every read inside sees one consistent state, even while others write."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def inputs(self) -> Iterator[Row]:
        """The input log, every column, in seq order."""

    @abstractmethod
    def evaluations(self) -> Iterator[Row]:
        """The evaluations, every column, in seq order."""

    @abstractmethod
    def history_size(self) -> int:
        """How many inputs and evaluations are recorded."""

    @abstractmethod
    def input_bytes(self, row: Row) -> bytes | Kept | None:
        """What an input-log row received, as far as the store kept it: an accepted or duplicate
        input's canonical envelope (UTF-8), a rejected one's `Kept` bytes; None when gone."""

    @abstractmethod
    def rejections(self, selection: RejectionFilter, *, raw: bool = False) -> Iterator[Row]:
        """The selected rejections in seq order: seq, reason, errors (JSON text), source, id, type,
        raw_size, raw_sha256, truncated, first_seen_at, last_seen_at, config_hash, resolved_at,
        resolved_by_input, and with `raw` the kept bytes."""

    @abstractmethod
    def rejection_raw(self, seq: int) -> bytes | None:
        """A rejection's kept bytes, or None when it is gone (purged)."""

    @abstractmethod
    def key_story(self, route_key: str, *, body_texts: Sequence[str] = (),
                  raw_texts: Sequence[bytes] = ()) -> KeyStory:
        """Everything about one route key (see `KeyStory`). A duplicate input is a candidate when
        its envelope holds every one of `body_texts`; a rejected one when its bytes hold every
        one of `raw_texts`, or a backslash, or a NUL byte (an escape may spell a value)."""

    @abstractmethod
    def route_states(self) -> dict[str, tuple[str, str | None]]:
        """Every route: route key -> (state, screen)."""

    @abstractmethod
    def route_counts(self) -> dict[str, int]:
        """How many routes sit in each state."""

    @abstractmethod
    def latest_results(self, event_type: str, field: str) -> dict[str, Any]:
        """Route key -> the `field` of its last fact (by seq) of `event_type` that has it."""

    @abstractmethod
    def config_hashes(self) -> list[str]:
        """The config hashes the input log was recorded under, in order of first use."""

    @abstractmethod
    def outbox_after(self, cursor: str, types: frozenset[str], limit: int) -> tuple[list[str], str]:
        """The next outbox items of these types after `cursor` ("" is the beginning), at most
        `limit`, in commit order, as CloudEvent JSON; and the cursor past them.

        The cursor is opaque to callers and never skips an item: everything before it has
        committed (a backend with several writers must make sure of that). Raises ValueError
        for a cursor this store never gave."""

    @abstractmethod
    def cursor_of(self, consumer: str) -> str:
        """The cursor `consumer` acknowledged last ("" when it never did)."""

    @abstractmethod
    def outbox_backlog(self, cursor: str, types: frozenset[str]) -> int:
        """How many items of these types lie after `cursor`."""

    @abstractmethod
    def delivery_consumer(self, consumer: str) -> Row | None:
        """The consumer's delivery state: cursor, disabled_at, disabled_reason, lease_owner, lease_until."""

    @abstractmethod
    def deliveries(self, consumer: str | None, statuses: Sequence[str], limit: int) -> list[Row]:
        """Deliveries in these statuses (of one consumer, None: all), in order, at most `limit`: seq,
        consumer, id, type, subject, body, status, attempts, next_at, last_status, last_answer, updated_at."""

    @abstractmethod
    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """(consumer, status) -> how many deliveries."""
