"""Crash safety: SIGKILL `webinar-flows process` at random moments, rerun, compare.

Why a rerun is always safe (see engine/pipeline.py for the commit boundaries):
- one batch is one SQLite transaction (`BEGIN IMMEDIATE … COMMIT`); every effect of its
  events — the input-log rows, facts, derived events, route rows, history, actions and
  rejections — is inside it, so a kill leaves each batch either wholly in or wholly out;
- a result line is printed only after its batch committed, so the output never claims an
  event the database lost;
- rerunning the same input re-presents every event: those already committed are found by
  their envelope `(source, id)` and answered `duplicate` without touching state; derived
  events get deterministic ids (UUIDv5 of rule and cause), so no new ids are minted; a
  rejected line updates its one rejection row (keyed by the bytes' SHA-256) to the same
  values. The rerun therefore ends in the state an uninterrupted run reaches.
The harness checks exactly that, plus `PRAGMA integrity_check` after every kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.generate import stream
from dbstate import integrity, snapshot

CLI = str(Path(sys.executable).parent / "webinar-flows")
EVENTS = 20_000
DATABASES = 5
KILLS_PER_DATABASE = 4


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "stream.jsonl"
    path.write_text("".join(line + "\n" for line in stream(EVENTS, 2_000, seed=11)))
    return path


@pytest.fixture(scope="module")
def baseline(events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, float]:
    db = tmp_path_factory.mktemp("baseline") / "base.db"
    started = time.monotonic()
    done = subprocess.run([CLI, "process", str(events_file), "--db", str(db)], capture_output=True, check=True)
    elapsed = time.monotonic() - started
    assert len(done.stdout.splitlines()) == EVENTS
    return snapshot(db), elapsed


def _committed_inputs(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM inputs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # killed before the schema was created
    finally:
        conn.close()


def _claims(out: Path) -> list[dict]:
    """Complete result lines the killed process printed (a torn last line is not a claim)."""
    raw = out.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines()]


def _kill_run(cmd: list[str], db: Path, out: Path, delay: float) -> bool:
    """Run `cmd`, SIGKILL it after `delay` s; True when it was still running (a mid-run kill)."""
    before = _committed_inputs(db)
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            mid_run = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            mid_run = True
    assert integrity(db) == "ok" if db.exists() else True
    claims = _claims(out)
    assert len(claims) <= _committed_inputs(db) - before, "output claims events the database does not hold"
    return mid_run


def test_sigkill_then_rerun_equals_uninterrupted_run(events_file: Path, baseline: tuple[dict, float],
                                                     tmp_path: Path, figure) -> None:
    expected, full = baseline
    rng = random.Random(2026)
    mid_run_kills = attempts_total = 0
    started = time.monotonic()
    for d in range(DATABASES):
        db = tmp_path / f"killed-{d}.db"
        cmd = [CLI, "process", str(events_file), "--db", str(db), "--batch-size", str(rng.choice([1, 50, 500]))]
        kills = attempts = 0
        scale = 0.9
        while kills < KILLS_PER_DATABASE and attempts < 3 * KILLS_PER_DATABASE:
            attempts += 1
            landed = _kill_run(cmd, db, tmp_path / f"out-{d}-{attempts}.jsonl", rng.uniform(0.2, full * scale))
            kills += landed
            scale = scale if landed else scale / 2  # the run finished first: aim earlier
        mid_run_kills += kills
        attempts_total += attempts
        finish = subprocess.run(cmd, capture_output=True)
        assert finish.returncode == 0, finish.stderr
        assert len(finish.stdout.splitlines()) == EVENTS
        assert integrity(db) == "ok"
        assert snapshot(db) == expected, f"database {d} differs from the uninterrupted run"
    figure("crash_events", EVENTS)
    figure("crash_databases", DATABASES)
    figure("crash_kills_mid_run", mid_run_kills)
    figure("crash_kill_attempts", attempts_total)
    figure("crash_final_state_equal", True)
    figure("crash_seconds", round(time.monotonic() - started, 1))
    figure("crash_baseline_events_per_s", round(EVENTS / full))
    assert mid_run_kills >= 20, f"only {mid_run_kills} kills landed mid-run"


API_SCRIPT = """
import sys
from engine import Engine
lines = open(sys.argv[1], 'rb').read().splitlines()
with Engine.open(db=sys.argv[2]) as eng:
    eng.process_many(lines, batch_size=int(sys.argv[3]))
"""


def test_sigkill_during_process_many_then_rerun(events_file: Path, baseline: tuple[dict, float],
                                                tmp_path: Path, figure) -> None:
    expected, full = baseline
    rng = random.Random(7)
    for batch_size in (7, 1000):
        db = tmp_path / f"api-{batch_size}.db"
        cmd = [sys.executable, "-c", API_SCRIPT, str(events_file), str(db), str(batch_size)]
        for k in range(2):
            _kill_run(cmd, db, tmp_path / "api-out.txt", rng.uniform(0.5, full * 0.8))
        subprocess.run(cmd, check=True, env={**os.environ})
        assert integrity(db) == "ok"
        assert snapshot(db) == expected
    figure("crash_api_batch_sizes", [7, 1000])
    figure("crash_api_final_state_equal", True)


# The same harness on an engine whose batch is not one transaction: every statement commits on
# its own, so a kill can leave an event half stored. If the harness could not tell, its green
# runs above would prove nothing.
NOT_ATOMIC = """
import sys
from contextlib import contextmanager
from engine import store

@contextmanager
def every_statement_commits(self):
    yield

store.SQLiteStore.transaction = every_statement_commits
from cli.main import cli
cli(sys.argv[1:], prog_name="webinar-flows")
"""


def test_negative_control_the_harness_catches_a_batch_that_is_not_atomic(events_file: Path,
                                                                        baseline: tuple[dict, float],
                                                                        tmp_path: Path, figure) -> None:
    expected, full = baseline
    rng = random.Random(41)
    caught = 0
    for d in range(2):
        db = tmp_path / f"not-atomic-{d}.db"
        cmd = [sys.executable, "-c", NOT_ATOMIC, "process", str(events_file), "--db", str(db), "--batch-size", "500"]
        for k in range(3):
            _kill_run(cmd, db, tmp_path / f"not-atomic-{d}-{k}.jsonl", rng.uniform(0.5, full * 0.9))
        finish = subprocess.run(cmd, capture_output=True)
        caught += finish.returncode != 0 or snapshot(db) != expected
    figure("crash_negative_control_caught", f"{caught} of 2")
    assert caught == 2, "the harness did not notice events half stored by a non-atomic batch"
