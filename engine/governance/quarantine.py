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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .history import Row, rows, sortable, with_instants
from ..runtime.envelope import KEEP_HEAD_BYTES
from ..reasons import REJECTED, error

if TYPE_CHECKING:
    from ..runtime.pipeline import Engine, Item

STATES = ("open", "resolved", "all")
ORIGIN = "rejection:"  # the input-log origin of a reprocessed rejection: rejection:<seq>
_COLUMNS = ("seq, reason, errors, source, id, type, raw_size, raw_sha256, truncated, first_seen_at, last_seen_at,"
            " config_hash, resolved_at, resolved_by_input")


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

    @property
    def narrowed(self) -> bool:
        """Whether a filter was given (so that a purge does not take everything by accident)."""
        return bool(self.reasons or self.sources or self.types or self.since or self.until
                    or self.state == "resolved")

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, values in (("reason", self.reasons), ("source", self.sources), ("type", self.types)):
            if values:
                clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += values
        if self.since:
            clauses.append("wf_instant(last_seen_at) >= ?")
            params.append(sortable(self.since))
        if self.until:
            clauses.append("wf_instant(last_seen_at) <= ?")
            params.append(sortable(self.until))
        if self.state != "all":
            clauses.append("resolved_at IS NULL" if self.state == "open" else "resolved_at IS NOT NULL")
        return " AND ".join(clauses) or "1", params


def _time(value: str) -> str:
    from ..runtime.pipeline import normalise_time

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
    where, params = selection.where()
    columns = _COLUMNS + (", raw" if raw else "")
    sql = f"SELECT {columns} FROM rejections WHERE {where} ORDER BY seq"  # noqa: S608
    for row in rows(with_instants(engine.store.conn), sql, params):
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
    where, params = replace(selection, state="open").where()
    conn = with_instants(engine.store.conn)
    left = [_left(_entry(row)) for row in rows(conn, f"SELECT {_COLUMNS} FROM rejections WHERE {where}"  # noqa: S608
                                                     " AND truncated ORDER BY seq", params)]
    if left:
        yield left
    todo = [r[0] for r in conn.execute(f"SELECT seq FROM rejections WHERE {where} AND NOT truncated"  # noqa: S608
                                       " ORDER BY seq", params)]
    done: list[int] = []

    def items() -> Iterator[Item]:
        for seq in todo:
            raw = conn.execute("SELECT raw FROM rejections WHERE seq = ?", (seq,)).fetchone()
            if raw is not None:  # purged meanwhile by another process
                yield bytes(raw[0]), f"{ORIGIN}{seq}", None

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
                         "or --all to purge every rejection in the chosen state")
    where, params = selection.where()
    with engine.store.transaction():
        sql = f"SELECT seq FROM rejections WHERE {where}"  # noqa: S608
        seqs = [r[0] for r in with_instants(engine.store.conn).execute(sql, params)]
        return engine.store.purge_rejections(seqs)
