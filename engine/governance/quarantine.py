"""The quarantine: stored rejections, listed, re-run under the current config, or purged.

A rejection keeps its input's bytes, so after a fix (an emitter approved, a payload field
added to the contract) it can go through the pipeline again, exactly as `process` would
take it: input log, dedupe, rules and route behave the same. One that is admitted
(accepted, or a duplicate of what is now a fact) leaves the quarantine: it is marked
resolved, with the input that admitted it, and kept. One rejected again stays, with its
new reason. Nothing is deleted except by an explicit purge.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..reasons import REJECTED, REJECTION_REASONS, error
from ..runtime.envelope import KEEP_HEAD_BYTES
from ..store.base import REJECTION_STATES, RejectionFilter, Row

if TYPE_CHECKING:
    from ..runtime.pipeline import Item
    from ..runtime.pipeline import Pipeline as Engine

STATES = REJECTION_STATES
ORIGIN = "rejection:"  # the input-log origin of a reprocessed rejection: rejection:<seq>


@dataclass(frozen=True)
class Selection:
    """Which rejections a command works on; each given filter narrows, values of one filter are or-ed.

    `since`/`until` bound `last_seen_at` (inclusive; RFC 3339). `state`: open (in the
    quarantine, the default), resolved (admitted by a reprocess), or all.
    """

    reasons: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    state: str = "open"

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise UsageError(f"state must be one of {list(STATES)}, not {self.state!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _time(value))
        for name in ("reasons", "sources", "types"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value or ()))
        unknown = [r for r in self.reasons if r not in REJECTION_REASONS]
        if unknown:  # a misspelt reason would select nothing, silently
            raise UsageError(f"unknown rejection reason(s) {unknown}; the reasons are {list(REJECTION_REASONS)}")

    @property
    def narrowed(self) -> bool:
        """Whether a filter was given (so that a purge does not take everything by accident)."""
        return bool(self.reasons or self.sources or self.types or self.since or self.until
                    or self.state == "resolved")

    def filter(self, **narrower: Any) -> RejectionFilter:
        """What the store selects for this selection (`narrower`: state, truncated)."""
        return RejectionFilter(reasons=self.reasons, sources=self.sources, types=self.types, since=self.since,
                               until=self.until, **{"state": self.state, **narrower})


def _time(value: str) -> str:
    from ..timefmt import normalise_time

    try:
        return normalise_time(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def iter_rejections(engine: Engine, selection: Selection, *, raw: bool = True) -> Iterator[dict[str, Any]]:
    """The selected rejections, oldest first (by seq), as plain data.

    With `raw`, each carries its kept bytes: `raw` as text when they are valid UTF-8
    (`raw_encoding` "utf-8"), else base64 (`raw_encoding` "base64"). A truncated
    (too_large) one holds only its first 64 KiB; `raw_size` and `sha256` are of the whole.
    """
    for row in engine.store.rejections(selection.filter(), raw=raw):
        yield _entry(row)


def _entry(row: Row) -> dict[str, Any]:
    entry = {
        "seq": row["seq"], "reason": row["reason"], "errors": json.loads(row["errors"]),
        "source": row["source"], "id": row["id"], "type": row["type"],
        "raw_size": row["raw_size"], "sha256": row["raw_sha256"], "truncated": bool(row["truncated"]),
        "first_seen_at": row["first_seen_at"], "last_seen_at": row["last_seen_at"],
        "config_hash": row["config_hash"],
        "resolved_at": row["resolved_at"], "resolved_by_input": row["resolved_by_input"],
    }
    if "raw" in row:
        entry["raw"], entry["raw_encoding"] = _text(bytes(row["raw"]))
    return entry


def _text(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def iter_reprocess(engine: Engine, selection: Selection, *, batch_size: int = 500) -> Iterator[list[dict[str, Any]]]:
    """Re-run the selected open rejections through `engine`, in batches, oldest first.

    Yields lists of results, each a `process` result with `rejection` (the seq) first,
    once its batch has committed. Truncated (too_large) rejections kept only their head:
    they cannot be re-run, come first as results with status rejected, reason too_large
    and an error coded `not_reprocessable`, and are left as they are.
    """
    store = engine.store
    left = [_left(_entry(row)) for row in store.rejections(selection.filter(state="open", truncated=True))]
    if left:
        yield left
    todo = [row["seq"] for row in store.rejections(selection.filter(state="open", truncated=False))]
    done: list[int] = []

    def items() -> Iterator[Item]:
        for seq in todo:
            raw = store.rejection_raw(seq)
            if raw is not None:  # purged meanwhile by another process
                yield raw, f"{ORIGIN}{seq}", None

    def settle(item: Item, result: dict[str, Any], input_seq: int) -> None:
        seq = int(str(item[1])[len(ORIGIN):])
        done.append(seq)
        if result["status"] != REJECTED:
            engine.store.resolve_rejection(seq, input_seq, engine.clock())

    for results in engine.iter_batches(items(), batch_size, settle=settle):
        yield [{"rejection": seq, **r} for seq, r in zip(done, results, strict=True)]
        done.clear()


def _left(entry: dict[str, Any]) -> dict[str, Any]:
    message = (f"only the first {KEEP_HEAD_BYTES} of {entry['raw_size']} bytes were kept: it cannot be reprocessed; "
               "it stays in the quarantine (resend the event, or purge it)")
    return {"rejection": entry["seq"], "line": None, "id": entry["id"], "type": entry["type"], "status": REJECTED,
            "reason": entry["reason"], "errors": [error("", "not_reprocessable", message)],
            "emitted": [], "actions": [], "route": None}


def reprocess(engine: Engine, selection: Selection, *, batch_size: int = 500) -> list[dict[str, Any]]:
    """`iter_reprocess`, all at once."""
    return [r for batch in iter_reprocess(engine, selection, batch_size=batch_size) for r in batch]


def purge(engine: Engine, selection: Selection, *, everything: bool = False) -> int:
    """Delete the selected rejections and return how many went; the input log keeps its rows.

    A purge must be explicit: it needs a narrowing filter (a reason, source, type, time
    bound, or state "resolved"), or `everything=True` with no filter (every rejection in
    `selection.state`). Purged bytes are gone: replay reports such inputs as unavailable.
    """
    if everything and selection.narrowed:
        raise UsageError("purge: give filters or everything (--all), not both")
    if not everything and not selection.narrowed:
        raise UsageError("purge needs a filter (reason, emitter, type, since, until, or state resolved), "
                         "or everything (--all) to purge every rejection in the chosen state")
    with engine.store.transaction():
        seqs = [row["seq"] for row in engine.store.rejections(selection.filter())]
        return engine.store.purge_rejections(seqs)
