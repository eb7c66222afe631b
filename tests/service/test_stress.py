"""`webinar-flows serve` under load and signals (slow: about a minute and a half on a quiet 2-core
machine, up to four minutes on a busy one: a restart costs seconds when the CPU is shared).

(a) At least 20 SIGKILLs while a few threads post signed events (structured and batched),
    re-sending anything that got no 200, the server restarted on the same database each time.
    Afterwards every acknowledged event is stored exactly once, and the database equals a clean
    run of the same events through `Engine.process_many` on a fresh database (facts, derived
    events, routes, histories, actions: tests/dbstate.py).
(b) SIGTERM under load: exit status 0 within 10 s, and every event answered 200 is stored.
The held-back writer (queue full: 503 with Retry-After, /readyz 503, recovery with nothing
lost) is test_service_lifecycle.py's
test_a_held_writer_fills_the_queue_then_503_and_not_ready_then_recovers_losing_nothing.

Every loop is bounded in count and in time; servers listen on 127.0.0.1 and are stopped by PID.
Set WF_STRESS_REPORT=FILE to collect the figures (kills, events acknowledged, ...) as JSON lines.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from dbstate import snapshot
from serverkit import TRACKER, KeySpec, Server, signed, start_server

from engine import Engine

pytestmark = pytest.mark.slow

KILLS = 20
THREADS = 3
BATCH = 5  # the batched thread's events per request
REPORT = os.environ.get("WF_STRESS_REPORT")  # a file to append the figures to (JSON lines), for the docs


def stream(tag: str, leads: int) -> list[dict]:
    """Per lead: entered, then completed (the route goes new -> in_webinar -> completed)."""
    out = []
    for i in range(leads):
        lead = f"{tag}-lead-{i:05d}"
        out.append({"specversion": "1.0", "id": f"{tag}-{i:05d}-in", "source": TRACKER,
                    "type": "client_webinar_entered", "time": "2026-02-10T18:00:00Z",
                    "datacontenttype": "application/json",
                    "data": {"lead_id": lead, "webinar_id": "w-stress", "timestamp": "2026-02-10T18:00:00Z"}})
        out.append({"specversion": "1.0", "id": f"{tag}-{i:05d}-done", "source": TRACKER,
                    "type": "client_webinar_completed", "time": "2026-02-10T19:00:00Z",
                    "datacontenttype": "application/json",
                    "data": {"lead_id": lead, "webinar_id": "w-stress", "webinar_type": "live",
                             "session_id": f"s-{i}", "completed_at": "2026-02-10T19:00:00Z"}})
    return out


@dataclass
class Sender:
    """One thread posting its own events in order, each request re-sent until it gets a 200."""

    server: Server
    key_id: str
    events: list[dict]
    batch: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    deadline: float = 0.0
    sent: int = 0  # events answered 200 (a prefix of `events`)
    acked: dict[str, str] = field(default_factory=dict)  # event id -> status of its 200
    no_answer: int = 0  # requests that got no HTTP answer (connection refused, reset, timeout)
    statuses: Counter = field(default_factory=Counter)
    error: str | None = None

    def requests(self):
        for start in range(0, len(self.events), self.batch):
            chunk = self.events[start:start + self.batch]
            if self.batch == 1:
                yield chunk, json.dumps(chunk[0]).encode(), "application/cloudevents+json"
            else:
                yield chunk, json.dumps(chunk).encode(), "application/cloudevents-batch+json"

    def run(self) -> None:
        try:
            with httpx.Client(timeout=10.0) as client:
                for chunk, body, content_type in self.requests():
                    if self.stop.is_set() or not self._deliver(client, chunk, body, content_type):
                        return
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _deliver(self, client: httpx.Client, chunk: list[dict], body: bytes, content_type: str) -> bool:
        while time.monotonic() < self.deadline:
            headers = signed(self.server.secret(self.key_id), {"content-type": content_type}, body)
            try:
                response = client.post(self.server.ingest_url(self.key_id), headers=headers, content=body)
            except httpx.HTTPError:
                self.no_answer += 1
                time.sleep(0.02)
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                results = response.json()["results"]
                assert len(results) == len(chunk)
                for event, result in zip(chunk, results, strict=True):
                    assert result["id"] == event["id"]
                    self.acked[event["id"]] = result["status"]
                self.sent += len(chunk)
                return True
            if response.status_code in (429, 503) or response.status_code >= 500:
                time.sleep(0.02)
                continue
            self.error = f"HTTP {response.status_code}: {response.text[:300]}"
            return False
        self.error = self.error or "deadline passed"
        return False


def senders_for(server: Server, tag: str, leads: int, deadline: float) -> list[Sender]:
    out = []
    for n in range(THREADS):
        batch = BATCH if n == 0 else 1  # one thread in batched mode, the others structured
        out.append(Sender(server, "bulk" if batch > 1 else f"site-{n}", stream(f"{tag}{n}", leads), batch,
                          deadline=deadline))
    return out


KEYS = (KeySpec("bulk", batch=True, rate=100000), *(KeySpec(f"site-{n}", rate=100000) for n in range(1, THREADS)))


def stored_once(db: Path, ids: list[str]) -> Counter:
    """How many non-derived facts each event id has (read straight from the file, read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = Counter(dict(conn.execute(
            "SELECT id, COUNT(*) FROM facts WHERE derived = 0 AND source = ? GROUP BY id", (TRACKER,)).fetchall()))
    finally:
        conn.close()
    return Counter({i: counts.get(i, 0) for i in ids})


def report(name: str, **figures: object) -> None:
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    if REPORT:
        with open(REPORT, "a") as out:
            out.write(json.dumps({"test": name, **figures}) + "\n")


def test_sigkill_under_load_loses_nothing_acknowledged_and_applies_nothing_twice(tmp_path: Path) -> None:
    server = start_server(tmp_path / "kill", keys=KEYS)
    started = time.monotonic()
    deadline = started + 210  # about 70 s on a quiet 2-core machine; restarts dominate, and slow down under load
    senders = senders_for(server, "k", leads=6000, deadline=deadline)
    threads = [threading.Thread(target=s.run, name=f"sender-{i}") for i, s in enumerate(senders)]
    kills, acked_before_kill = 0, []
    try:
        for t in threads:
            t.start()
        rng = random.Random(7)
        while kills < KILLS and time.monotonic() < deadline - 40:
            # kill only under load: wait (bounded) until this run has acknowledged something
            before = sum(s.sent for s in senders)
            wait_until = time.monotonic() + 5
            while sum(s.sent for s in senders) < before + 10 and time.monotonic() < wait_until:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            acked_before_kill.append(sum(s.sent for s in senders) - before)
            server.kill()
            kills += 1
            server.start()
        for s in senders:
            s.stop.set()  # each finishes the request it is on (until a 200), then stops
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a sender did not finish in time"
        exit_status = server.stop()
    finally:
        for s in senders:
            s.stop.set()
        server.kill()
    errors = [s.error for s in senders if s.error]
    assert not errors, errors
    assert kills >= KILLS, f"only {kills} kills in the time allowed"

    sent = [e for s in senders for e in s.events[:s.sent]]
    acked = {k: v for s in senders for k, v in s.acked.items()}
    assert len(acked) == len(sent) and set(acked) == {e["id"] for e in sent}
    assert set(acked.values()) <= {"accepted", "duplicate"}, Counter(acked.values())
    # every acknowledged event is stored, and exactly once
    counts = stored_once(server.db, list(acked))
    missing = [i for i, c in counts.items() if c == 0]
    twice = [i for i, c in counts.items() if c > 1]
    assert not missing and not twice, (missing[:5], twice[:5])

    # the same events through the engine on a fresh database: the same final state
    clean = tmp_path / "clean.db"
    with Engine.open(config=None, db=clean) as engine:
        results = engine.process_many([json.dumps(e).encode() for e in sent], batch_size=500)
    assert Counter(r["status"] for r in results) == Counter({"accepted": len(sent)})
    served_state, clean_state = snapshot(server.db), snapshot(clean)
    for table in ("facts", "routes", "route_history", "actions", "envelopes", "rejections"):
        assert served_state[table] == clean_state[table], table
    assert len(served_state["routes"]) == sum(min(s.sent, len(s.events)) // 2 + (s.sent % 2) for s in senders)

    no_answer = sum(s.no_answer for s in senders)
    lost_answers = sum(v == "duplicate" for v in acked.values())  # committed, answer cut by a kill, re-sent
    assert no_answer > 0, "no request was ever cut off: the kills did not land under load"
    report("sigkill", kills=kills, events_acknowledged=len(sent), requests_without_answer=no_answer,
           committed_but_answer_lost=lost_answers, statuses=dict(sum((s.statuses for s in senders), Counter())),
           final_stop_exit=exit_status, seconds=round(time.monotonic() - started, 1),
           min_acks_between_kills=min(acked_before_kill), routes=len(served_state["routes"]))


def test_sigterm_under_load_exits_0_within_10s_and_keeps_every_200(tmp_path: Path) -> None:
    server = start_server(tmp_path / "term", keys=KEYS)
    deadline = time.monotonic() + 60
    senders = senders_for(server, "t", leads=100000, deadline=deadline)
    for s in senders:
        s.deadline = deadline
    threads = [threading.Thread(target=s.run, name=f"sender-{i}") for i, s in enumerate(senders)]
    try:
        for t in threads:
            t.start()
        wait_until = time.monotonic() + 10
        while sum(s.sent for s in senders) < 300 and time.monotonic() < wait_until:
            time.sleep(0.01)
        under_load = sum(s.sent for s in senders)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            status = server.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            raise AssertionError("serve did not exit within 10 s of SIGTERM") from None
        took = time.monotonic() - signalled
        # the senders now get refused connections: stop them (a bounded wait)
        for s in senders:
            s.stop.set()
            s.deadline = time.monotonic() + 2
        for t in threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in threads)
    finally:
        for s in senders:
            s.stop.set()
        server.kill()
    assert under_load >= 300, "the load never got going"
    assert status == 0, f"exit status {status}\n{server.output()[-2000:]}"
    assert took < 10
    acked = [i for s in senders for i in s.acked]
    counts = stored_once(server.db, acked)
    assert [i for i, c in counts.items() if c != 1] == []
    report("sigterm", exit_status=status, seconds_to_exit=round(took, 2), events_acknowledged=len(acked),
           statuses=dict(sum((s.statuses for s in senders), Counter())))

