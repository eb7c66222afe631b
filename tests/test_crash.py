"""Crash safety: SIGKILL `webinar-flows process` at random moments, rerun, compare.

Why a rerun is always safe (see engine/runtime/pipeline.py for the commit boundaries):
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
The harness checks exactly that. Each kill lands once the run has committed part of the input
(it waits for the run's own rows in the input log, then a fraction of a batch more); after
it: `PRAGMA integrity_check`, whole batches only (0 < rows < total, a multiple of the batch
size), the input log row for row (the lines committed before are logged again as duplicates
or the same rejections, the rest as in the uninterrupted run), every printed result held by
that log, and no orphan rows. After the rerun: the final state and the whole input log.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.generate import stream
from dbstate import integrity, snapshot
from dbstate import rows
from test_faults import ORPHANS

CLI = str(Path(sys.executable).parent / "webinar-flows")
EVENTS = 20_000
# One batch size per database, fixed so that every size is used whatever the kills do.
BATCH_SIZES = (1, 50, 500, 50, 500)
KILLS_PER_DATABASE = 4
# The input log: what each line of the input became, in the order it was logged.
INPUT_LOG = "SELECT line, status, reason, source, id, type FROM inputs ORDER BY seq"


@dataclass(frozen=True)
class Baseline:
    state: dict[str, list[tuple[Any, ...]]]
    log: list[tuple[Any, ...]]  # the uninterrupted run's input log: line i is row i-1
    seconds: float


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "stream.jsonl"
    path.write_text("".join(line + "\n" for line in stream(EVENTS, 2_000, seed=11)))
    return path


@pytest.fixture(scope="module")
def baseline(events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    db = tmp_path_factory.mktemp("baseline") / "base.db"
    started = time.monotonic()
    done = subprocess.run([CLI, "process", str(events_file), "--db", str(db)], capture_output=True, check=True)
    elapsed = time.monotonic() - started
    assert len(done.stdout.splitlines()) == EVENTS
    log = rows(db, INPUT_LOG)
    assert [row[0] for row in log] == list(range(1, EVENTS + 1))
    return Baseline(snapshot(db), log, elapsed)


def _logged(db: Path) -> int | None:
    """Input-log rows of a database another process is writing, read without writing; None
    before the schema is there. It waits for the WAL file, so that the read cannot race the
    first connection's switch to WAL mode."""
    if not Path(f"{db}-wal").exists():
        return None
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM inputs").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _kill_after(cmd: list[str], db: Path, out: Path, before: int, target: int, linger: float,
                limit: float) -> bool:
    """Run `cmd`; once it has logged `target` inputs of its own (on top of `before`), wait
    `linger` s, so that the kill lands inside a later batch, and SIGKILL it. False when the
    process ended first."""
    deadline = time.monotonic() + limit
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                logged = _logged(db)
                if logged is not None and logged - before >= target:
                    time.sleep(linger)
                    if proc.poll() is not None:
                        break
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return True
                assert time.monotonic() < deadline, f"{target} inputs not logged within {limit:.0f} s"
                time.sleep(0.005)
            return False
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _orphans(db: Path) -> dict[str, int]:
    """test_faults' orphan-row counts, run on an in-memory copy with indexes for them: on the
    database itself they would scan the input log once per fact."""
    disk, copy = sqlite3.connect(db), sqlite3.connect(":memory:")
    try:
        disk.backup(copy)
        copy.executescript("CREATE INDEX by_fact ON stored_inputs (fact_seq);"  # the input log behind the view
                           " CREATE INDEX by_rejection ON stored_inputs (rejection_seq);"
                           " CREATE INDEX by_envelope ON stored_inputs (source, id);")
        return {name: copy.execute(sql).fetchone()[0] for name, sql in ORPHANS.items()}
    finally:
        disk.close()
        copy.close()


def _claims(out: Path) -> list[dict]:
    """Complete result lines the killed process printed (a torn last line is not a claim)."""
    raw = out.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines()]


class Killed:
    """A database under kills and reruns of one input, and the input log it must then hold.

    Every run presents the input from its first line. A line committed by an earlier run is
    logged again, as a duplicate (or the same rejection); a line no earlier run committed is
    logged as in the uninterrupted run. A kill between commits leaves the run's log a prefix
    of whole batches.
    """

    def __init__(self, db: Path, batch_size: int, baseline: Baseline, *, numbered: bool = True):
        self.db, self.batch_size, self.baseline, self.numbered = db, batch_size, baseline, numbered
        self.log: list[tuple[Any, ...]] = []  # what the database must hold
        self.done = 0  # lines 1..done are committed

    def _run_log(self, n: int) -> list[tuple[Any, ...]]:
        out = []
        for i, (line, status, reason, *rest) in enumerate(self.baseline.log[:n]):
            if i < self.done:
                status, reason = ("rejected", reason) if status == "rejected" else ("duplicate", "same_envelope")
            out.append((line if self.numbered else None, status, reason, *rest))
        return out

    def check_kill(self, out: Path | None) -> list[str]:
        """What is wrong with the database after a kill: empty when every check holds."""
        if integrity(self.db) != "ok":
            return [f"integrity_check: {integrity(self.db)}"]
        problems = []
        log = rows(self.db, INPUT_LOG)
        n = len(log) - len(self.log)
        if not 0 < n < EVENTS:
            problems.append(f"not a kill mid-run: the run logged {n} of {EVENTS} inputs")
        if n % self.batch_size:
            problems.append(f"the run logged {n} inputs, not whole batches of {self.batch_size}")
        expected = self.log + self._run_log(max(n, 0))
        if log != expected:
            first = next((i for i, (a, b) in enumerate(zip(log, expected)) if a != b), min(len(log), len(expected)))
            problems.append(f"input log differs from row {first + 1}: {log[first:first + 1]} "
                            f"instead of {expected[first:first + 1]}")
        if out is not None:
            run = log[len(self.log):]
            claims = [(c["line"], c["status"], c["reason"], c["id"], c["type"]) for c in _claims(out)]
            held = [(r[0], r[1], r[2], r[4], r[5]) for r in run[:len(claims)]]
            if claims != held:
                problems.append(f"the output claims {len(claims)} results the input log does not hold as printed")
        problems += [f"{name}: {count}" for name, count in _orphans(self.db).items() if count]
        self.log, self.done = expected, max(self.done, n)
        return problems

    def check_finish(self) -> list[str]:
        """What is wrong after a run to the end: the state and input log of an uninterrupted run."""
        problems = []
        if integrity(self.db) != "ok":
            problems.append(f"integrity_check: {integrity(self.db)}")
        if snapshot(self.db) != self.baseline.state:
            problems.append("the final state differs from the uninterrupted run")
        expected = self.log + self._run_log(EVENTS)
        if rows(self.db, INPUT_LOG) != expected:
            problems.append("the input log differs from the uninterrupted run's and its reruns")
        self.log, self.done = expected, EVENTS
        return problems


def test_sigkill_then_rerun_equals_uninterrupted_run(events_file: Path, baseline: Baseline,
                                                     tmp_path: Path, figure) -> None:
    rng = random.Random(2026)
    kills = attempts_total = 0
    started = time.monotonic()
    for d, batch_size in enumerate(BATCH_SIZES):
        db = Killed(tmp_path / f"killed-{d}.db", batch_size, baseline)
        cmd = [CLI, "process", str(events_file), "--db", str(db.db), "--batch-size", str(batch_size)]
        batch_seconds = baseline.seconds * batch_size / EVENTS
        landed = attempts = 0
        while landed < KILLS_PER_DATABASE and attempts < 2 * KILLS_PER_DATABASE:
            attempts += 1
            out = tmp_path / f"out-{d}-{attempts}.jsonl"
            if _kill_after(cmd, db.db, out, len(db.log), rng.randint(1, EVENTS * 17 // 20),
                           rng.uniform(0, batch_seconds), limit=3 * baseline.seconds + 30):
                landed += 1
                assert db.check_kill(out) == [], f"database {d}, kill {landed}"
            else:  # it ran to the end first
                assert db.check_finish() == [], f"database {d}, attempt {attempts}"
        kills += landed
        attempts_total += attempts
        assert landed == KILLS_PER_DATABASE, f"database {d}: {landed} kills landed mid-run"
        finish = subprocess.run(cmd, capture_output=True, timeout=3 * baseline.seconds + 30)
        assert finish.returncode == 0, finish.stderr
        assert len(finish.stdout.splitlines()) == EVENTS
        assert db.check_finish() == [], f"database {d}"
    figure("crash_events", EVENTS)
    figure("crash_databases", len(BATCH_SIZES))
    figure("crash_kills_mid_run", kills)
    figure("crash_kill_attempts", attempts_total)
    figure("crash_final_state_equal", True)
    figure("crash_seconds", round(time.monotonic() - started, 1))
    figure("crash_baseline_events_per_s", round(EVENTS / baseline.seconds))


API_SCRIPT = """
import sys
from engine import Engine
lines = open(sys.argv[1], 'rb').read().splitlines()
with Engine.open(db=sys.argv[2]) as eng:
    eng.process_many(lines, batch_size=int(sys.argv[3]))
"""


def test_sigkill_during_process_many_then_rerun(events_file: Path, baseline: Baseline,
                                                tmp_path: Path, figure) -> None:
    rng = random.Random(7)
    for batch_size in (7, 1000):
        db = Killed(tmp_path / f"api-{batch_size}.db", batch_size, baseline, numbered=False)
        cmd = [sys.executable, "-c", API_SCRIPT, str(events_file), str(db.db), str(batch_size)]
        landed = attempts = 0
        while landed < 2 and attempts < 4:
            attempts += 1
            if _kill_after(cmd, db.db, tmp_path / "api-out.txt", len(db.log), rng.randint(1, EVENTS * 4 // 5),
                           rng.uniform(0, baseline.seconds * batch_size / EVENTS), limit=3 * baseline.seconds + 30):
                landed += 1
                assert db.check_kill(None) == [], f"batch size {batch_size}, kill {landed}"
            else:  # it ran to the end first
                assert db.check_finish() == [], f"batch size {batch_size}, attempt {attempts}"
        assert landed == 2, f"batch size {batch_size}: {landed} kills landed mid-run"
        subprocess.run(cmd, check=True, timeout=3 * baseline.seconds + 30)
        assert db.check_finish() == [], f"batch size {batch_size}"
    figure("crash_api_batch_sizes", [7, 1000])
    figure("crash_api_final_state_equal", True)


# The same harness on an engine whose batch is not one transaction: every statement commits on
# its own, so a kill can leave an event half stored. If the harness could not tell, its green
# runs above would prove nothing.
NOT_ATOMIC = """
import sys
from contextlib import contextmanager
from engine.store import sqlite as store

@contextmanager
def every_statement_commits(self):
    yield

store.SQLiteStore.transaction = every_statement_commits
from cli.main import cli
cli(sys.argv[1:], prog_name="webinar-flows")
"""


def test_negative_control_the_harness_catches_a_batch_that_is_not_atomic(events_file: Path,
                                                                        baseline: Baseline,
                                                                        tmp_path: Path, figure) -> None:
    def command(db: Path) -> list[str]:
        return [sys.executable, "-c", NOT_ATOMIC, "process", str(events_file), "--db", str(db), "--batch-size", "500"]

    # Without kills the patched engine ends where the real one does, so what the harness
    # catches below comes from the kills, not from the patch.
    whole = Killed(tmp_path / "not-atomic-whole.db", 500, baseline)
    subprocess.run(command(whole.db), capture_output=True, check=True, timeout=3 * baseline.seconds + 30)
    assert whole.check_finish() == []

    rng = random.Random(41)
    caught = []
    for d in range(2):
        db = Killed(tmp_path / f"not-atomic-{d}.db", 500, baseline)
        problems, landed = [], 0
        for k in range(3):
            out = tmp_path / f"not-atomic-{d}-{k}.jsonl"
            if _kill_after(command(db.db), db.db, out, len(db.log), rng.randint(1, EVENTS * 4 // 5),
                           rng.uniform(0, baseline.seconds * 500 / EVENTS), limit=3 * baseline.seconds + 30):
                landed += 1
                problems += db.check_kill(out)
            else:
                problems += db.check_finish()
        assert landed, "no kill landed"
        finish = subprocess.run(command(db.db), capture_output=True, timeout=3 * baseline.seconds + 30)
        problems += [f"rerun exit {finish.returncode}"] if finish.returncode else db.check_finish()
        caught.append(problems)
    figure("crash_negative_control_caught", f"{sum(map(bool, caught))} of 2")
    figure("crash_negative_control_problems", sorted({p.split(":")[0][:60] for found in caught for p in found}))
    assert all(caught), "the harness did not notice events half stored by a non-atomic batch"
