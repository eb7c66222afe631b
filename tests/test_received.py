"""`Received`: what a transport that authenticates its sender hands the engine."""

from __future__ import annotations

import json
from typing import Any

from engine import Engine, Received

from conftest import TRACKER, completed


def _stored_rejection(eng: Engine) -> tuple[bytes, str, list[dict[str, Any]]]:
    (rejection,) = eng.rejections()
    raw = eng.store.conn.execute("SELECT raw FROM rejections").fetchone()[0]
    return raw, rejection["reason"], rejection["errors"]


def test_an_event_from_the_senders_emitter_is_processed_as_usual(engine: Engine) -> None:
    (result,) = engine.process_many([Received(completed(), emitter=TRACKER)])
    assert result["status"] == "accepted"


def test_a_source_other_than_the_senders_emitter_is_unauthorized(engine: Engine) -> None:
    event = completed(source="attendance-classifier")
    (result,) = engine.process_many([Received(json.dumps(event).encode(), emitter=TRACKER)])
    assert (result["status"], result["reason"]) == ("rejected", "unauthorized_emitter")
    assert result["errors"][0]["path"] == "/source"
    raw, reason, _ = _stored_rejection(engine)
    assert reason == "unauthorized_emitter" and json.loads(raw) == event


def test_a_refusal_is_stored_with_the_bytes_that_arrived(engine: Engine) -> None:
    errors = [{"path": "/id", "code": "required", "message": "the ce-id header is missing"}]
    body = b'{"lead_id": "l1"}'
    received = Received({"type": "client_webinar_completed", "source": TRACKER}, emitter=TRACKER,
                        refusal=("invalid_envelope", errors), raw=body)
    (result,) = engine.process_many([received])
    assert (result["status"], result["reason"], result["errors"]) == ("rejected", "invalid_envelope", errors)
    assert result["type"] == "client_webinar_completed"
    assert _stored_rejection(engine) == (body, "invalid_envelope", errors)


def test_received_events_share_one_batch_with_plain_ones(engine: Engine) -> None:
    first, again = completed(id="e1"), completed(id="e1")
    results = engine.process_many([Received(first, emitter=TRACKER), again])
    assert [(r["status"], r["reason"]) for r in results] == [("accepted", None), ("duplicate", "same_envelope")]
