"""Push delivery's bookkeeping: which outbox items a consumer with a URL is owed, which are due
now, and what an answer means for an item. The HTTP itself is the service's (service/delivery.py).

An item is taken from the outbox into the consumer's deliveries (pending, in commit order) by
the deliverer that holds the consumer's lease; only the holder sends, so each route key's items
go out from one deliverer at a time. Per route key, only the oldest pending item is ever due:
while it is retried, later items of its key wait; once it is done or failed (set aside), the
next one goes. An item is recorded done only after its 2xx, so a deliverer killed in between
sends it again, with the same id: at least once, never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..store.base import HistoryReader, Store

# Standard Webhooks' retry schedule: the waits after attempts 1, 2, ... (then the item fails).
SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_RETRY_AFTER = 36000.0  # a receiver's Retry-After is honoured up to 10 h, whatever the schedule
TAKE_ROUNDS = 10  # outbox pages of TAKE_PAGE taken per call, so one call stays short
TAKE_PAGE = 500
PENDING_WINDOW = 2000  # the oldest pending items looked at for the heads of their keys


@dataclass(frozen=True)
class Due:
    """One item to send now."""

    consumer: str
    id: str
    type: str
    subject: str
    body: str  # the structured CloudEvent, as stored
    attempts: int  # attempts made before this one


@dataclass(frozen=True)
class Answer:
    """What one attempt got: an HTTP status (None: no answer: refused, timed out, reset), a short
    description for people, and the receiver's Retry-After in seconds if it sent one."""

    status: int | None
    text: str
    retry_after: float | None = None


def verdict(status: int | None) -> str:
    """done (2xx), disable (410), fail (any other 4xx but 429), else retry (429, 5xx, 3xx, no answer)."""
    if status is not None and 200 <= status <= 299:
        return "done"
    if status == 410:
        return "disable"
    if status is not None and 400 <= status <= 499 and status != 429:
        return "fail"
    return "retry"


class Deliveries:
    """The delivery state of one store, for the consumers of `types_of` (name -> its item types)."""

    def __init__(self, store: Any, types_of: dict[str, frozenset[str]], clock: Any):
        self.store: Store = store
        self.reader: HistoryReader = store
        self.types_of = types_of
        self.clock = clock

    def lease(self, consumer: str, owner: str, now: float, seconds: float,
              dead: Callable[[str], bool] | None = None) -> bool:
        """Take or renew the lease; or take it over from a holder `dead` says has died (a
        deliverer on this host whose process is gone) without waiting for it to expire."""
        with self.store.transaction():
            if self.store.take_lease(consumer, owner, now, now + seconds):
                return True
            state = self.reader.delivery_consumer(consumer)
            holder = state["lease_owner"] if state else None
            if holder is None or dead is None or not dead(holder):
                return False
            return self.store.take_lease(consumer, owner, float("inf"), now + seconds)

    def release(self, consumer: str, owner: str, now: float) -> None:
        """Give the lease up (a deliverer stopping), if `owner` holds it."""
        with self.store.transaction():
            state = self.reader.delivery_consumer(consumer)
            if state is not None and state["lease_owner"] == owner:
                self.store.take_lease(consumer, owner, now, 0.0)

    def take(self, consumer: str, owner: str, now: float, seconds: float) -> bool:
        """Move new outbox items into the consumer's deliveries (while `owner` holds the lease);
        False when the lease is lost."""
        types = self.types_of[consumer]
        for _ in range(TAKE_ROUNDS):
            state = self.reader.delivery_consumer(consumer)
            start = state["cursor"] if state else ""
            bodies, cursor = self.reader.outbox_after(start, types, TAKE_PAGE)
            if cursor == start:
                return True
            rows = []
            for body in bodies:
                item = orjson.loads(body)
                rows.append((item["id"], item["type"], item.get("subject", ""), body))
            with self.store.transaction():
                if not self.store.take_lease(consumer, owner, now, now + seconds):
                    return False
                self.store.enqueue_deliveries(consumer, rows, cursor, self.clock())
            if len(bodies) < TAKE_PAGE:
                return True
        return True

    def due(self, consumer: str, now: float, limit: int) -> list[Due]:
        """The consumer's items to send now: the oldest pending item of each route key whose next
        attempt has come, oldest first, at most `limit`; none while the consumer is disabled."""
        state = self.reader.delivery_consumer(consumer)
        if state is not None and state["disabled_at"] is not None:
            return []
        heads: dict[str, dict[str, Any]] = {}
        for row in self.reader.deliveries(consumer, ("pending",), PENDING_WINDOW):
            heads.setdefault(row["subject"], row)
        ready = [row for row in heads.values() if row["next_at"] <= now]
        ready.sort(key=lambda row: row["seq"])
        return [Due(consumer, r["id"], r["type"], r["subject"], r["body"], r["attempts"]) for r in ready[:limit]]

    def record(self, consumer: str, owner: str, answers: Sequence[tuple[Due, Answer]], now: float, seconds: float,
               schedule: Sequence[float] = SCHEDULE) -> list[str]:
        """Record the answers to one round of sends; each item's outcome (done, retry, failed,
        disabled). Nothing is recorded when the lease was lost meanwhile: its new holder sends
        the items again."""
        outcomes = []
        at = self.clock()
        with self.store.transaction():
            if not self.store.take_lease(consumer, owner, now, now + seconds):
                return ["lost"] * len(answers)
            for due, answer in answers:
                attempts = due.attempts + 1
                kind = verdict(answer.status)
                status, next_at = "pending", now
                if kind == "done":
                    status = "done"
                elif kind == "fail":
                    status = "failed"
                elif kind == "disable":
                    self.store.set_disabled(consumer, f"{answer.text} for item {due.id}", at)
                    kind = "disabled"
                elif attempts > len(schedule):
                    status, kind = "failed", "failed"
                else:
                    wait = (schedule[attempts - 1] if answer.retry_after is None
                            else min(max(answer.retry_after, 0.0), MAX_RETRY_AFTER))
                    next_at = now + wait
                if kind == "fail":
                    kind = "failed"
                self.store.update_delivery(consumer, due.id, status, attempts, next_at, answer.status,
                                           answer.text[:500], at)
                outcomes.append(kind)
        return outcomes

    def listing(self, consumer: str | None, failed: bool, limit: int) -> list[dict[str, Any]]:
        statuses = ("failed",) if failed else ("pending", "failed", "done")
        return [{"consumer": r["consumer"], "id": r["id"], "type": r["type"], "subject": r["subject"],
                 "status": r["status"], "attempts": r["attempts"],
                 "last_status": r["last_status"], "last_answer": r["last_answer"], "updated_at": r["updated_at"]}
                for r in self.reader.deliveries(consumer, statuses, limit)]

    def state(self, consumer: str) -> dict[str, Any]:
        """A consumer's delivery at a glance: disabled (and why), items pending, failed, done, and
        how many outbox items are not taken into its deliveries yet."""
        row = self.reader.delivery_consumer(consumer) or {}
        counts = self.reader.delivery_counts()
        return {"consumer": consumer, "disabled": row.get("disabled_at") is not None,
                "disabled_reason": row.get("disabled_reason"),
                "pending": counts.get((consumer, "pending"), 0), "failed": counts.get((consumer, "failed"), 0),
                "done": counts.get((consumer, "done"), 0),
                "not_taken": self.reader.outbox_backlog(row.get("cursor", ""), self.types_of[consumer])}
