"""Writes examples/events.jsonl: a small, realistic stream for `make run`.

Two webinars, a dozen leads, every event type of the contract (including those the
default config rejects: no emitter yet, or an internal service's output sent from
outside), tracker redeliveries, and a few broken lines. Deterministic: rerun it and the
file is byte-identical.
"""

import json
from pathlib import Path

TRACKER = "client-webinar-tracker-v2"
W1, W2 = "webinar-2026-02", "webinar-2026-03"
lines: list[str] = []
n = 0


def emit(type_, data, source=TRACKER, id_=None, time=None):
    global n
    n += 1
    event = {"specversion": "1.0", "id": id_ or f"trk-{n:04d}", "source": source, "type": type_,
             "time": time or data.get("timestamp") or data.get("completed_at") or "2026-02-10T18:00:00Z",
             "datacontenttype": "application/json", "data": data}
    lines.append(json.dumps(event, separators=(",", ":")))
    return event


def entered(lead, web, ts):
    data = {"webinar_id": web, "timestamp": ts}
    if lead:
        data["lead_id"] = lead
    return emit("client_webinar_entered", data)


def completed(lead, web, session, ts):
    return emit("client_webinar_completed", {"lead_id": lead, "webinar_id": web, "webinar_type": "live",
                                             "session_id": session, "completed_at": ts})


def form(lead, web, session, ts, answers):
    return emit("client_webinar_form_submitted", {"lead_id": lead, "webinar_id": web, "webinar_type": "live",
                                                  "session_id": session, "submitted_at": ts,
                                                  "form_id": "post-webinar-feedback", "form_payload": answers})


# Planned events with no approved emitter yet: rejected (unauthorized_emitter) by the default config.
emit("client_webinar_registered", {"lead_id": "lead-001", "webinar_id": W1, "webinar_type": "live",
                                   "slot_id": "slot-18h", "registered_at": "2026-02-01T09:00:00Z",
                                   "source": "landing-page"}, source="registration-form")
for i in range(1, 9):
    entered(f"lead-{i:03d}", W1, f"2026-02-10T18:0{i}:00Z")
entered(None, W1, "2026-02-10T18:05:30Z")  # the tracker had no lead id yet: stored, no route
emit("client_webinar_left", {"lead_id": "lead-004", "webinar_id": W1, "webinar_type": "live",
                             "session_id": "sess-004", "left_at": "2026-02-10T18:40:00Z",
                             "leave_reason": "network_loss"}, source="registration-form")
first = completed("lead-001", W1, "sess-001", "2026-02-10T19:30:00Z")
lines.append(json.dumps(first, separators=(",", ":")))  # redelivery of the same envelope
completed("lead-001", W1, "sess-001", "2026-02-10T19:30:00Z")  # same fact, new id: same_fact
for i in (2, 3, 5):
    completed(f"lead-{i:03d}", W1, f"sess-{i:03d}", f"2026-02-10T19:3{i}:00Z")
form("lead-001", W1, "sess-001", "2026-02-10T19:45:00Z", {"rating": 5, "would_recommend": True})
form("lead-002", W1, "sess-002", "2026-02-10T19:47:00Z", {"rating": 4, "comment": "More Q&A please"})
entered("lead-009", W2, "2026-03-03T17:00:00+01:00")
entered("lead-009", W2, "2026-03-03T16:00:00Z")  # the same instant written differently: same_fact
completed("lead-009", W2, "sess-109", "2026-03-03T17:55:00Z")
completed("lead-010", W2, "sess-110", "2026-03-03T17:56:00Z")  # completed without a recorded entry
# An internal service's output sent from outside: refused.
emit("client_webinar_attendance_classified", {"lead_id": "lead-006", "webinar_id": W1, "attended": True,
                                              "timestamp": "2026-02-10T20:00:00Z"}, source="attendance-classifier")
emit("post_webinar_route", {"lead_id": "lead-006", "webinar_id": W1, "attended": True,
                            "timestamp": "2026-02-10T20:00:00Z", "status": "attended"})
# Broken input, as a tracker on thousands of sites will send.
emit("client_webinar_completed", {"lead_id": "lead-007", "webinar_id": W1, "webinar_type": "webinar",
                                  "session_id": "sess-007", "completed_at": "yesterday"}, time="2026-02-10T19:40:00Z")
emit("client_webinar_completed", {"lead_id": "lead-008", "webinar_id": W1, "session_id": "sess-008"})
emit("client_webinar_exited", {"lead_id": "lead-008", "webinar_id": W1})
lines.append('{"specversion":"1.0","id":"trk-broken","source":"client-webinar-tracker-v2","type":"client_webinar_entered",')
lines.append("")
lines.append('{"specversion":"1.0","id":"trk-0099","source":"client-webinar-tracker-v2","type":"client_webinar_entered","data":{"webinar_id":"other"}}')
lines.append(json.dumps({"id": "no-specversion", "source": TRACKER, "type": "client_webinar_entered",
                         "data": {"lead_id": "lead-008", "webinar_id": W1, "timestamp": "2026-02-10T18:08:00Z"}}))

Path(__file__).with_name("events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
