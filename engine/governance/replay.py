"""Replay: what a database's recorded history would have become under another config.

The live database is opened read-only and never written. Its inputs (accepted, duplicate
and rejected, in input-log order) and its evaluations (interleaved by recording time, see
`history.timeline`) run through an engine on the other config and a scratch database; then
the two are compared: each input's outcome, the latest evaluation result per route key, and
each route's state and screen.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.load import load_config
from ..errors import UsageError
from ..model import Config
from ..reasons import ACCEPTED, REJECTED
from ..runtime.envelope import DEFAULT_MAX_EVENT_BYTES, Oversized
from ..runtime.pipeline import DEFAULT_BATCH_SIZE, Item
from ..runtime.pipeline import Pipeline as Engine
from ..store import display_name, open_reader, open_store
from ..store.base import HistoryReader
from .history import EVALUATION, Row, input_bytes, timeline

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class _Tally:
    """A count and its first examples."""

    limit: int
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, example: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        """Count one; keep it as an example while there is room (a callable is called only then)."""
        self.count += 1
        if len(self.examples) < self.limit:
            self.examples.append(example() if callable(example) else example)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": self.examples}


def outcome(status: str, reason: str | None) -> str:
    """An input's outcome as one word: accepted, duplicate:same_fact, rejected:invalid_payload."""
    return status if reason is None else f"{status}:{reason}"


class _Comparison:
    """Each replayed input's outcome against the live one."""

    def __init__(self, config: Config, limit: int):
        self.config, self.limit = config, limit
        self.transitions: dict[tuple[str, str], _Tally] = {}
        self.newly_accepted: Counter[str] = Counter()  # by the live reason
        self.newly_rejected: Counter[str] = Counter()  # by the new reason
        self.unavailable = _Tally(limit)

    def add(self, row: Row, event: bytes | Oversized, result: dict[str, Any]) -> None:
        live, now = outcome(row["status"], row["reason"]), outcome(result["status"], result["reason"])
        if live == now:
            return
        if result["status"] == ACCEPTED:
            self.newly_accepted[row["reason"] or row["status"]] += 1
        if result["status"] == REJECTED and row["status"] != REJECTED:
            self.newly_rejected[result["reason"]] += 1
        self.transitions.setdefault((live, now), _Tally(self.limit)).add(
            lambda: {**_described(row, event, self.config), "live": live, "replay": now, "errors": result["errors"]})

    def report(self) -> dict[str, Any]:
        ordered = sorted(self.transitions.items(), key=lambda kv: (-kv[1].count, kv[0]))
        return {
            "changed": sum(t.count for t in self.transitions.values()),
            "newly_accepted": {"count": self.newly_accepted.total(), "by_reason": dict(self.newly_accepted)},
            "newly_rejected": {"count": self.newly_rejected.total(), "by_reason": dict(self.newly_rejected)},
            "transitions": [{"live": live, "replay": now, **t.as_dict()} for (live, now), t in ordered],
        }


def _described(row: Row, event: bytes | Oversized | None, config: Config) -> dict[str, Any]:
    """An input as an example: where it came from, what it was, and its route key if it names one."""
    example = {"input": row["seq"], "origin": row["origin"], "line": row["line"], "source": row["source"],
               "id": row["id"], "type": row["type"], "key": None}
    if isinstance(event, bytes):
        try:
            data = json.loads(event).get("data")
        except (ValueError, AttributeError, RecursionError):
            data = None
        if isinstance(data, dict) and all(f in data for f in config.route.key):
            example["key"] = {f: data[f] for f in config.route.key}
    return example


def replay(db: str | Path, config: str | Path | Config, *, scratch: str | Path | None = None,
           examples: int = 5, batch_size: int = DEFAULT_BATCH_SIZE, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
           progress: Progress | None = None) -> dict[str, Any]:
    """Replay the history of database `db` through `config` and report what would differ.

    `db` is only read. The replay writes to `scratch` (which must not exist yet; it is kept)
    or to a temporary file that is removed afterwards. `examples` bounds the examples kept
    per difference; `max_event_bytes` is the size limit of the replaying engine (use the
    live one's); `progress(done, total)` is called as the history is replayed. The
    report holds `identical` (no difference at all), `outcomes`, `classifications`,
    `routes` and `unavailable` (inputs whose bytes the database no longer holds).
    """
    if not isinstance(config, Config):
        config = load_config(config)
    live = open_reader(db)
    try:
        with (_scratch(db, scratch) as target,
              Engine(config, open_store(target), max_event_bytes=max_event_bytes) as engine):
            with live.snapshot():  # one snapshot of the history, even while others write
                counts, comparison = _run(live, engine, examples, batch_size, progress)
                live_hashes = live.config_hashes()
                classifications = _classifications(live, engine.store, config, examples)  # type: ignore[arg-type]
                routes = _routes(live, engine.store, config, examples)  # type: ignore[arg-type]
            report = {
                "db": display_name(db), "config": str(config.root), "config_hash": config.hash,
                "live_config_hashes": live_hashes,
                "scratch": str(scratch) if scratch is not None else None,
                "replayed": counts,
                "outcomes": comparison.report(),
                "classifications": classifications,
                "routes": routes,
                "unavailable": comparison.unavailable.as_dict(),
            }
    finally:
        live.close()
    report["identical"] = not (report["outcomes"]["changed"] or report["routes"]["count"]
                               or (report["classifications"] or {}).get("count") or report["unavailable"]["count"])
    return report


@contextmanager
def _scratch(live: str | Path, scratch: str | Path | None) -> Iterator[Path]:
    if scratch is not None:
        path = Path(scratch)
        if path.exists():
            raise UsageError(f"{scratch}: the scratch database exists already; name a new file")
        if path.resolve() == Path(live).resolve():
            raise UsageError("the scratch database cannot be the live one")
        yield path
        return
    folder = tempfile.mkdtemp(prefix="webinar-flows-replay-")
    try:
        yield Path(folder) / "replay.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(live: HistoryReader, engine: Engine, examples: int, batch_size: int,
         progress: Progress | None) -> tuple[dict[str, int], _Comparison]:
    total = live.history_size()
    comparison = _Comparison(engine.config, examples)
    counts = {"inputs": 0, "evaluations": 0, "unavailable": 0}
    pending: list[tuple[Row, bytes | Oversized]] = []

    def flush() -> None:
        items: list[Item] = [(event, row["origin"], row["line"]) for row, event in pending]
        results = [r for batch in engine.iter_batches(items, batch_size) for r in batch]
        for (row, event), result in zip(pending, results, strict=True):
            comparison.add(row, event, result)
        counts["inputs"] += len(pending)
        pending.clear()
        if progress is not None:
            progress(sum(counts.values()), total)

    for kind, row in timeline(live.inputs(), live.evaluations()):
        if kind == EVALUATION:
            flush()
            _evaluate(engine, row, counts, comparison)
            continue
        event = input_bytes(live, row)
        if event is None:
            counts["unavailable"] += 1
            comparison.unavailable.add(_described(row, None, engine.config))
            continue
        pending.append((row, event))
        if len(pending) >= batch_size:
            flush()
    flush()
    return counts, comparison


def _evaluate(engine: Engine, row: Row, counts: dict[str, int], comparison: _Comparison) -> None:
    try:
        key = engine.config.route.route_key.decode(row["route_key"])
    except ValueError:  # the other config's route key has another shape
        counts["unavailable"] += 1
        comparison.unavailable.add({"evaluation": row["seq"], "route_key": row["route_key"]})
        return
    engine.evaluate(at=row["evaluated_at"], **key)
    counts["evaluations"] += 1


def _key_view(config: Config, route_key: str) -> dict[str, Any]:
    try:
        return config.route.route_key.decode(route_key)
    except ValueError:
        return {"route_key": route_key}


def _classifications(live: HistoryReader, scratch: HistoryReader, config: Config,
                     examples: int) -> dict[str, Any] | None:
    """Route keys whose latest evaluation result (the config's `evaluation_result`) differs."""
    er = config.evaluation_result
    if er is None:
        return None
    before, after = live.latest_results(er.event, er.field), scratch.latest_results(er.event, er.field)
    tally = _Tally(examples)
    for route_key in sorted(set(before) | set(after)):
        if before.get(route_key) != after.get(route_key) or (route_key in before) != (route_key in after):
            tally.add({"key": _key_view(config, route_key), "live": before.get(route_key),
                       "replay": after.get(route_key)})
    return {"event": er.event, "field": er.field, **tally.as_dict()}


def _routes(live: HistoryReader, scratch: HistoryReader, config: Config, examples: int) -> dict[str, Any]:
    """Route keys whose route (state and screen) differs, or exists on one side only."""
    before = {k: {"state": s, "screen": sc} for k, (s, sc) in live.route_states().items()}
    after = {k: {"state": s, "screen": sc} for k, (s, sc) in scratch.route_states().items()}
    tally = _Tally(examples)
    for route_key in sorted(set(before) | set(after)):
        if before.get(route_key) != after.get(route_key):
            tally.add({"key": _key_view(config, route_key), "live": before.get(route_key),
                       "replay": after.get(route_key)})
    return tally.as_dict()
