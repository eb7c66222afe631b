"""The public facade: `Engine` opens a config and a database and carries the governance tools.

The runtime `Pipeline` processes events over a loaded config and an open store; this layer
is where a path or URL becomes a store and a directory becomes a `Config`, and where the
governance tools (quarantine, explain) hang off the engine for callers who embed it.
"""

from __future__ import annotations

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
        if not isinstance(config, Config):
            config = load_config(config if config is not None else bundled_config())
        store = open_store(db, synchronous=synchronous, create=create)
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

    def _consumer(self, name: str) -> Any:
        spec = self.config.consumers.get(name)
        if spec is None:
            declared = ", ".join(sorted(self.config.consumers)) or "none"
            raise UnknownConsumer(f"no consumer {name!r} in the config's consumers.yaml (declared: {declared})")
        return spec


class UnknownConsumer(EngineError):
    """A consumer the config does not declare."""
