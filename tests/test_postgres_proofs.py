"""The PostgreSQL proofs of issue 13, with the installed `webinar-flows` as users run it:

(a) 4 `process` workers, each fed its share of the route keys, SIGKILLed at random moments
    (each restarted on its whole share) with one PostgreSQL restart mid-run: the database then
    holds exactly what one SQLite process makes of the same stream;
(b) 2 workers fed interleaved halves of one stream (the same keys in both): exact totals, and
    every recorded route change is one the route machine allows;
(c) 2 `serve` instances on one database, a client spreading signed requests over both, either
    SIGKILLed again and again: every acknowledged event is stored exactly once.

Bounded in events, kills and seconds; bench/pg_workers.py runs (a) and (b) bigger.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pg_proof import (
    applied_twice,
    can_restart,
    differences,
    holdings,
    key_of,
    kill,
    pg_restart,
    reference,
    result_lines_ok,
    stream,
    worker,
    write_lines,
)

pytestmark = pytest.mark.slow

KILLS = 20
WORKERS = 4


def test_four_workers_with_kills_and_a_database_restart_equal_one_sqlite_process(tmp_path: Path, pg_url: str,
                                                                                  figure) -> None:
    if not can_restart():
        import os

        if os.environ.get("CI"):
            pytest.fail("$WEBINAR_FLOWS_TEST_PG_DATA is needed to restart the cluster (.ci/run sets it)")
        pytest.skip("$WEBINAR_FLOWS_TEST_PG_DATA (the test cluster's data directory) is not set")
    events = stream(1200)
    keys = sorted({key_of(e) for e in events})
    share_of = {k: i % WORKERS for i, k in enumerate(keys)}
    shares = [write_lines(tmp_path / f"share{i}.jsonl", [e for e in events if share_of[key_of(e)] == i])
              for i in range(WORKERS)]
    outs = [tmp_path / f"worker{i}.out" for i in range(WORKERS)]
    expected = holdings(reference(events, tmp_path / "reference.db"))

    rng = random.Random(13)
    procs = [worker(shares[i], pg_url, outs[i]) for i in range(WORKERS)]
    kills, restarts, reruns, restart_seconds = 0, 0, 0, 0.0
    deadline = time.monotonic() + 240
    while kills < KILLS and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 0.6))
        i = rng.randrange(WORKERS)
        if kill(procs[i]):
            kills += 1
        else:
            reruns += 1  # it had finished (or failed): run its share again, as an operator would
            assert procs[i].returncode in (0, 1), outs[i].with_suffix(".err").read_text()
        procs[i] = worker(shares[i], pg_url, outs[i])
        if kills == KILLS // 2 and restarts == 0:
            restart_seconds = pg_restart()
            restarts += 1
    assert kills >= KILLS and restarts == 1
    for i, proc in enumerate(procs):
        code = proc.wait(180)
        if code != 0:  # a run that met the restart at its start: once more, then it must succeed
            procs[i] = worker(shares[i], pg_url, outs[i])
            assert procs[i].wait(180) == 0, outs[i].with_suffix(".err").read_text()[-2000:]
    problems = [p for out in outs for p in result_lines_ok(out)]
    assert not problems, problems[:5]

    got = holdings(pg_url)
    assert not applied_twice(got)
    assert not differences(expected, got), differences(expected, got)
    assert got["facts"] == expected["facts"] and got["accepted"] == expected["accepted"]
    figure("pg_worker_kills", kills)
    figure("pg_restarts", restarts)
    figure("pg_restart_seconds", round(restart_seconds, 2))
    figure("pg_reruns_of_finished_workers", reruns)
    figure("pg_routes_compared", len(got["routes"]))
    figure("pg_facts_compared", sum(got["facts"].values()))


def test_two_workers_on_interleaved_halves_of_one_stream(tmp_path: Path, pg_url: str, figure) -> None:
    from engine import load_config
    from engine.config.locate import bundled_config
    from engine.runtime.route import RouteMachine

    events = stream(400, seed=11)
    halves = [write_lines(tmp_path / "odd.jsonl", events[0::2]), write_lines(tmp_path / "even.jsonl", events[1::2])]
    outs = [tmp_path / "a.out", tmp_path / "b.out"]
    expected = holdings(reference(events, tmp_path / "reference.db"))
    procs = [worker(h, pg_url, o, batch_size=10) for h, o in zip(halves, outs, strict=True)]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.wait(180) == 0, out.with_suffix(".err").read_text()[-2000:]
    results = [json.loads(line) for out in outs for line in out.read_bytes().splitlines()]
    assert len(results) == len(events)
    reference_statuses = Counter()
    from engine import Engine

    with Engine.open(config=None, db=tmp_path / "again.db") as eng:
        reference_statuses = Counter((r["status"], r["reason"]) for r in eng.process_many(events))
    assert Counter((r["status"], r["reason"]) for r in results) == reference_statuses  # exact totals

    got = holdings(pg_url)
    assert not applied_twice(got)
    # which of two copies of one fact (another id, the same identity) came first depends on the
    # interleaving: the facts are equal but for that id, and as many were accepted
    assert Counter(f[2:] for f in got["facts"].elements()) == Counter(f[2:] for f in expected["facts"].elements())
    assert sum(got["accepted"].values()) == sum(expected["accepted"].values())
    assert got["envelopes"] == expected["envelopes"]
    config = load_config(bundled_config())
    machine = RouteMachine(config.route)
    for key, steps in got["history"].items():
        state = config.route.initial
        for before, after, _source, _id, event_type in steps:
            assert before == state, (key, steps)  # each change starts where the last one ended
            assert machine.fire(before, event_type) == after, (key, before, event_type, after)
            state = after
        assert got["routes"][key][0] == state
    figure("pg_interleaved_events", len(events))
    figure("pg_interleaved_routes_checked", len(got["history"]))


def test_two_servers_on_one_database_under_kills_store_each_acknowledged_event_once(tmp_path: Path,
                                                                                     pg_url: str, figure) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "service"))
    import httpx
    from serverkit import DEFAULT_KEYS, post, start_server, stored_exactly_once, structured

    from conftest import entered

    servers = [start_server(tmp_path / name, keys=DEFAULT_KEYS, db=pg_url) for name in ("one", "two")]  # type: ignore[arg-type]
    acked: list[bytes] = []
    acked_ids: list[str] = []
    stop = threading.Event()
    errors: list[str] = []

    def client() -> None:
        rng = random.Random(5)
        n = 0
        with httpx.Client(timeout=10) as http:
            while not stop.is_set() and n < 5000:
                event = entered(lead=f"lead-{n % 300}", webinar=f"w{n % 3}", id=f"sv-{n}",
                                ts=f"2026-02-01T18:{n // 60 % 60:02d}:{n % 60:02d}Z")
                headers, body = structured(event)
                for _attempt in range(40):  # until one server acknowledges it
                    server = servers[rng.randrange(2)]
                    try:
                        response = post(server, "site-b", headers, body, client=http)
                    except httpx.HTTPError:
                        time.sleep(0.05)
                        continue
                    if response.status_code == 200:
                        acked.append(body)
                        acked_ids.append(event["id"])
                        break
                    if response.status_code not in (503, 429):
                        errors.append(f"{response.status_code} {response.text[:200]}")
                        break
                    time.sleep(0.05)
                n += 1

    thread = threading.Thread(target=client)
    thread.start()
    kills = 0
    rng = random.Random(17)
    deadline = time.monotonic() + 180
    try:
        while kills < 10 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(rng.uniform(0.3, 1.0))
            servers[rng.randrange(2)].restart()  # SIGKILL, then a new process on the same port and database
            kills += 1
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(60)
        for server in servers:
            server.stop()
    assert kills >= 10 and not errors, errors[:3]
    assert len(acked) > 50
    import psycopg

    with psycopg.connect(pg_url) as conn:
        accepted = Counter(r[0] for r in conn.execute("SELECT id FROM inputs WHERE status = 'accepted'"))
    assert all(accepted[i] == 1 for i in acked_ids), [i for i in acked_ids if accepted[i] != 1][:5]
    assert max(accepted.values()) == 1
    assert stored_exactly_once(pg_url, acked)  # type: ignore[arg-type]
    figure("pg_serve_kills", kills)
    figure("pg_serve_acknowledged", len(acked))
