"""The recorded history of a database: its inputs and evaluations in order, and each input's bytes.

The input log (`inputs`, by seq) says what came in and what became of it; `evaluations`
says when an explicit evaluation ran. Replay and explanation walk both as one timeline.
The two logs share no sequence, so they are interleaved by their recording time; within
each log the seq order is kept, and an input and an evaluation recorded at the same
instant are taken input first. Everything is read through the store's `HistoryReader`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from ..runtime.envelope import Oversized
from ..store.base import HistoryReader, Kept, Row
from ..timefmt import moment, sortable

INPUT, EVALUATION = "input", "evaluation"

__all__ = ["EVALUATION", "INPUT", "Row", "input_bytes", "sortable", "timeline"]


def timeline(inputs: Iterable[Row], evaluations: Iterable[Row]) -> Iterator[tuple[str, Row]]:
    """Inputs and evaluations (each in seq order) as one sequence, by recording time."""
    keyed_inputs = ((moment(r["recorded_at"]), 0, r["seq"], INPUT, r) for r in inputs)
    keyed_evaluations = ((moment(r["recorded_at"]), 1, r["seq"], EVALUATION, r) for r in evaluations)
    for _, _, _, kind, row in heapq.merge(keyed_inputs, keyed_evaluations, key=lambda k: k[:3]):
        yield kind, row


def input_bytes(reader: HistoryReader, row: Row) -> bytes | Oversized | None:
    """What an input row received, as far as the database kept it; None when it is gone.

    An accepted or duplicate input is the envelope remembered for its (source, id), a
    rejection its raw bytes (a truncated one as `Oversized`, so it is too large again).
    Accepted and duplicate bodies are canonical JSON, which processes exactly as the bytes
    that were received.
    """
    found = reader.input_bytes(row)
    if isinstance(found, Kept):
        return Oversized(found.size, found.sha256, found.raw) if found.truncated else found.raw
    return found
