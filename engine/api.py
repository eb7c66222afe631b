"""The public facade: `Engine` opens a config and a database and carries the governance tools.

The runtime `Pipeline` processes events over a loaded config and an open store; this layer
is where a path or URL becomes a store and a directory becomes a `Config`, and where the
governance tools (quarantine, explain) hang off the engine for callers who embed it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .config import bundled_config, load_config
from .errors import EngineError, UsageError
from .model import Config
from .runtime.envelope import DEFAULT_MAX_EVENT_BYTES
from .runtime.pipeline import DEFAULT_BATCH_SIZE, Pipeline
from .store import open_store


class Engine(Pipeline):
    """The embedding API: open once, then process events, evaluate and read routes."""

    @classmethod
    def open(cls, config: str | Path | Config | None = None, db: str | Path = "webinar-flows.db", *,
             max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, synchronous: str = "NORMAL",
             clock: Callable[[], str] | None = None, create: bool = True) -> Engine:
        """Load `config` (None: the bundled default) and open the database `db`.

        `create=False` is for readers: a database that does not exist is then a StoreError
        instead of a new empty one that would answer every question with "nothing".
        """
        _check_open_arguments(config, db, max_event_bytes, synchronous)
        if not isinstance(config, Config):
            config = load_config(config if config is not None else bundled_config())
        store = open_store(db, synchronous=synchronous.upper(), create=create)
        return cls(config, store, max_event_bytes=max_event_bytes, clock=clock)

    def __enter__(self) -> Engine:
        return self

    # -- the quarantine and a lead's story (governance/quarantine.py, governance/explain.py) --

    def rejections(self, **selection: Any) -> list[dict[str, Any]]:
        """Stored rejections, oldest first; filters as `quarantine.Selection` (reasons, sources,
        types, since, until, state)."""
        from .governance.quarantine import Selection, iter_rejections

        return list(iter_rejections(self, Selection(**selection)))

    def reprocess(self, *, batch_size: int = DEFAULT_BATCH_SIZE, **selection: Any) -> list[dict[str, Any]]:
        """Re-run the selected open rejections under this config; one result per rejection."""
        from .governance.quarantine import Selection, reprocess

        return reprocess(self, Selection(**selection), batch_size=batch_size)

    def purge_rejections(self, *, everything: bool = False, **selection: Any) -> int:
        """Delete the selected rejections (a filter, or everything=True, is required); returns the count."""
        from .governance.quarantine import Selection, purge

        return purge(self, Selection(**selection), everything=everything)

    def explain(self, **key: Any) -> dict[str, Any] | None:
        """The story of one route key: inputs, rules fired or not and why, route changes; None if unknown."""
        from .governance.explain import explain

        return explain(self, **key)

    # -- the outbox as a feed (runtime/outbox.py writes it) ---------------------------------

    def feed(self, consumer: str, limit: int = 100, *, cursor: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """The consumer's next items after its acknowledged cursor (or after `cursor`), at most
        `limit`, and the cursor past them. The stored cursor does not move: `ack` moves it."""
        types = self._consumer(consumer).types
        if limit < 1:
            raise UsageError("limit must be at least 1")
        start = self.store.cursor_of(consumer) if cursor is None else cursor
        try:
            bodies, after = self.store.outbox_after(start, types, limit)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return [orjson.loads(body) for body in bodies], after

    def ack(self, consumer: str, cursor: str) -> None:
        """Move the consumer's stored cursor to `cursor` (one `feed` gave; "" is the beginning)."""
        self._consumer(consumer)
        try:
            with self.store.transaction():
                self.store.set_cursor(consumer, cursor, self.clock())
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def backlog(self, consumer: str) -> int:
        """How many items the consumer has not acknowledged yet."""
        spec = self._consumer(consumer)
        return self.store.outbox_backlog(self.store.cursor_of(consumer), spec.types)

    # -- push delivery (runtime/delivery.py keeps the books; service/delivery.py speaks HTTP) ----

    def _deliveries(self) -> Any:
        from .runtime.delivery import Deliveries

        return Deliveries(self.store, {n: c.types for n, c in self.config.consumers.items()}, self.clock)

    def delivery_round(self, consumer: str, owner: str, now: float, *, lease_seconds: float = 60.0,
                       limit: int = 64, dead: Callable[[str], bool] | None = None) -> list[Any]:
        """For the deliverer `owner`: take or renew the consumer's lease (taking it over from a
        holder `dead(holder)` says has died), move new outbox items into its deliveries and return
        the items to send now (`Due`); [] when another deliverer holds it."""
        self._consumer(consumer)
        deliveries = self._deliveries()
        if not deliveries.lease(consumer, owner, now, lease_seconds, dead) or not deliveries.take(
                consumer, owner, now, lease_seconds):
            return []
        return deliveries.due(consumer, now, limit)

    def delivery_release(self, consumer: str, owner: str, now: float) -> None:
        """Give up the consumer's lease, so another deliverer takes over at once."""
        self._deliveries().release(consumer, owner, now)

    def delivery_answers(self, consumer: str, owner: str, answers: list[tuple[Any, Any]], now: float, *,
                         lease_seconds: float = 60.0, schedule: tuple[float, ...] | None = None) -> list[str]:
        """Record what each sent item got (`(Due, delivery.Answer)` pairs); each one's outcome:
        done, retry, failed, disabled (a 410), or lost (the lease went to another deliverer)."""
        from .runtime.delivery import SCHEDULE

        return self._deliveries().record(consumer, owner, answers, now, lease_seconds,
                                         SCHEDULE if schedule is None else schedule)

    def deliveries(self, consumer: str | None = None, *, failed: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        """Push deliveries in order (only failed ones with `failed`): id, consumer, type, subject,
        status (pending, done, failed), attempts, last_status, last_answer, updated_at."""
        if consumer is not None:
            self._consumer(consumer)
        return self._deliveries().listing(consumer, failed, limit)

    def delivery_state(self, consumer: str) -> dict[str, Any]:
        """A push consumer's state: disabled (and why), pending, failed, done, not_taken."""
        self._consumer(consumer)
        return self._deliveries().state(consumer)

    def retry_deliveries(self, item_id: str | None = None, consumer: str | None = None) -> int:
        """Send failed items again (one id, one consumer's, or every one); how many were failed."""
        if consumer is not None:
            self._consumer(consumer)
        with self.store.transaction():
            return self.store.retry_deliveries(consumer, item_id, self.clock())

    def enable_consumer(self, consumer: str) -> bool:
        """Deliver to a consumer a 410 disabled, again; False when it was not disabled (nothing
        changes), so that a mistaken name or a pull-only consumer is not reported as enabled."""
        self._consumer(consumer)
        with self.store.transaction():
            state = self.store.delivery_consumer(consumer)
            if state is None or state["disabled_at"] is None:
                return False
            self.store.set_disabled(consumer, None, self.clock())
        return True

    def _consumer(self, name: str) -> Any:
        return consumer_of(self.config, name)


SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def _check_open_arguments(config: Any, db: Any, max_event_bytes: Any, synchronous: Any) -> None:
    """What `Engine.open` was given, checked before anything is opened: a wrong type or value is a
    UsageError here, not a file named "None" or a failure at the first event."""
    if not (config is None or isinstance(config, str | os.PathLike | Config)):
        raise UsageError(f"config must be a directory path, a Config or None, not {type(config).__name__}")
    if not isinstance(db, str | os.PathLike):
        raise UsageError(f"db must be a SQLite file path or a postgresql:// URL, not {type(db).__name__}")
    if isinstance(max_event_bytes, bool) or not isinstance(max_event_bytes, int) or max_event_bytes < 1:
        raise UsageError(f"max_event_bytes must be a whole number of bytes, at least 1, not {max_event_bytes!r}")
    if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS:
        raise UsageError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")


def consumer_of(config: Config, name: str) -> Any:
    """The consumer `name` of consumers.yaml; UnknownConsumer when the config does not declare it
    (a command checks this before it opens the database, so the message names the consumer)."""
    spec = config.consumers.get(name)
    if spec is None:
        declared = ", ".join(sorted(config.consumers)) or "none"
        raise UnknownConsumer(f"no consumer {name!r} in the config's consumers.yaml (declared: {declared})")
    return spec


class UnknownConsumer(EngineError):
    """A consumer the config does not declare."""
