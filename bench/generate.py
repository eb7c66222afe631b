"""A seeded generator of realistic event streams, for benchmarks and reliability tests.

Each (lead, webinar) route gets a plausible life: entered, sometimes left and back,
usually completed, often a form. Every event type of the default contract appears,
including those the default config refuses (no emitter yet, or an internal service's
output sent from outside). About 2% of lines are redeliveries of an earlier line and
0.5% are invalid. The same seed and size always give the same bytes.

    python bench/generate.py --events 100000 --leads 10000 --seed 7 > stream.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator

TRACKER = "client-webinar-tracker-v2"


def _ts(rng: random.Random, day: int, minute: int) -> str:
    return f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T{(17 + minute // 60) % 24:02d}:{minute % 60:02d}:{rng.randrange(60):02d}Z"


def _route_life(rng: random.Random, lead: str, webinar: str, day: int, n: int) -> list[dict]:
    """The events of one route, in order."""
    events: list[dict] = []
    session = f"s-{lead}-{webinar}"
    base = {"lead_id": lead, "webinar_id": webinar}
    live = {"webinar_type": rng.choice(["live", "auto"])}

    def ev(type_: str, data: dict, source: str = TRACKER) -> None:
        events.append({"specversion": "1.0", "id": f"{n:x}-{len(events)}-{rng.getrandbits(48):012x}",
                       "source": source, "type": type_, "data": data})

    roll = rng.random()
    if roll < 0.05:
        ev("client_webinar_registered", {**base, **live, "registered_at": _ts(rng, day, 0), "source": "landing"},
           source="registration-page")
    ev("client_webinar_entered", {**base, "timestamp": _ts(rng, day, 1)})
    if rng.random() < 0.03:
        ev("client_webinar_entered", {"webinar_id": webinar, "timestamp": _ts(rng, day, 2)})
    if rng.random() < 0.05:
        ev("client_webinar_left", {**base, **live, "session_id": session, "left_at": _ts(rng, day, 20),
                                   "leave_reason": "network_loss"}, source="registration-page")
    if rng.random() < 0.75:
        ev("client_webinar_completed", {**base, **live, "session_id": session, "completed_at": _ts(rng, day, 55)})
        if rng.random() < 0.6:
            ev("client_webinar_form_submitted", {**base, **live, "session_id": session, "submitted_at": _ts(rng, day, 70),
                                                 "form_id": "feedback", "form_payload": {"rating": rng.randrange(1, 6)}})
    if rng.random() < 0.01:
        ev("client_webinar_attendance_classified", {**base, "attended": True, "timestamp": _ts(rng, day, 80)},
           source="attendance-classifier")
    if rng.random() < 0.01:
        ev("post_webinar_route", {**base, "attended": True, "timestamp": _ts(rng, day, 80), "status": "attended"})
    return events


def _invalid(rng: random.Random, n: int) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return '{"specversion":"1.0","id":"broken-%d",' % n
    if kind == 1:
        return json.dumps({"specversion": "1.0", "id": f"bad-{n}", "source": TRACKER, "type": "client_webinar_completed",
                           "data": {"lead_id": f"lead-{n}", "webinar_id": "w", "webinar_type": "webinar",
                                    "session_id": "s", "completed_at": "yesterday"}})
    if kind == 2:
        return json.dumps({"specversion": "1.0", "id": f"bad-{n}", "source": TRACKER, "type": "client_webinar_exited",
                           "data": {}})
    return json.dumps({"id": f"bad-{n}", "source": TRACKER, "type": "client_webinar_entered", "data": {}})


def stream(events: int, leads: int, *, webinars: int | None = None, seed: int = 7) -> Iterator[str]:
    """Yield `events` JSON lines over about `leads` leads, interleaved across routes."""
    rng = random.Random(seed)
    webinars = webinars or max(1, leads // 50)
    active: list[list[str]] = []
    sent: list[str] = []
    n = made = 0
    while made < events:
        if not active or (len(active) < 64 and rng.random() < 0.3):
            lead = f"lead-{rng.randrange(leads):07d}"
            webinar = f"webinar-{rng.randrange(webinars):04d}"
            life = [json.dumps(e, separators=(",", ":")) for e in _route_life(rng, lead, webinar, n % 300, n)]
            active.append(life[::-1])
            n += 1
        roll = rng.random()
        if roll < 0.005:
            line = _invalid(rng, made)
        elif roll < 0.025 and sent:
            line = sent[rng.randrange(max(0, len(sent) - 500), len(sent))]
        else:
            pick = rng.randrange(len(active))
            line = active[pick].pop()
            if not active[pick]:
                active[pick] = active[-1]
                active.pop()
            sent.append(line)
            if len(sent) > 2000:
                del sent[:1000]
        made += 1
        yield line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--leads", type=int, default=1_000)
    parser.add_argument("--webinars", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    out = sys.stdout
    for line in stream(args.events, args.leads, webinars=args.webinars, seed=args.seed):
        out.write(line + "\n")


if __name__ == "__main__":
    main()
