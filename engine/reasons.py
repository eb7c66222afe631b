"""The stable vocabulary of outcomes: statuses, reasons, and the rejection carrier.

Reasons are a small closed set that callers may switch on; each error inside a rejection
carries a finer `code` and a JSON Pointer `path` to the field at fault.
"""

from __future__ import annotations

from typing import Any

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"

REJECTION_REASONS = (
    "too_large",
    "malformed_json",
    "invalid_envelope",
    "unknown_event",
    "unauthorized_emitter",
    "invalid_payload",
    "id_conflict",
    "rule_failed",
)
DUPLICATE_REASONS = ("same_envelope", "same_fact")


def error(path: str, code: str, message: str) -> dict[str, Any]:
    return {"path": path, "message": message, "code": code}


class Rejected(Exception):
    """Raised inside the pipeline to stop one event; it never leaves `Engine.process`."""

    def __init__(self, reason: str, errors: list[dict[str, Any]], partial: dict[str, Any] | None = None):
        assert reason in REJECTION_REASONS, reason
        super().__init__(reason)
        self.reason = reason
        self.errors = errors
        self.partial = partial  # the parsed event, when it parsed: where id, type and source come from

    def kept(self) -> Rejected:
        """This rejection without its traceback and chained exceptions, to be kept as a value.

        A kept exception would keep the frames it passed through, and with them the whole
        batch being processed, alive in a reference cycle until the collector runs.
        """
        self.__traceback__ = self.__context__ = self.__cause__ = None
        return self
