"""Four processes writing one database at once: docs/storage.md and docs/cli/process.md ("Several processes
may use one database file at once") and "What happens to an event" (steps 7-8 commit together).

Four real `webinar-flows process` subprocesses start together on one SQLite file: two with
disjoint streams (their own leads and ids), two with overlapping ones (60% of their events are
the same, in the same relative order, interleaved differently with events of their own). Mixed
batch sizes, two of them `--batch-size 1`. Then the same with four Python processes calling
`Engine.process_many`. Whatever the interleaving:

- every process exits 0, and nothing about a locked database reaches stderr or a result;
- every input line has exactly one result, in order, and the summary matches the results;
- each shared event is accepted by exactly one process and is a duplicate for the other;
- each process's results equal a serial run of the same four streams one after another
  (for a shared line, the pair of results equals the serial pair), the `inputs` table has
  one row per input line, and the final database state (facts, routes and their
  histories, actions, rejections, envelopes; tests/dbstate.py) equals the serial one.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dbstate import integrity, snapshot

from bench.generate import stream
from engine import Engine

WF = Path(sys.executable).parent / "webinar-flows"
ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^(\d+) accepted, (\d+) duplicate, (\d+) rejected$")
EVENTS = 5000
SHARED = 3000  # of each overlapping stream's 5000 events, 60%
NAMES = ("a", "b", "c", "d")  # a, b disjoint; c, d overlapping
CLI_BATCH = {"a": 1, "b": 500, "c": 1, "d": 37}
API_BATCH = {"a": 1, "b": 250, "c": 1, "d": 64}


# -- the streams ------------------------------------------------------------------------------------------

def _prefixed(lines: list[str], tag: str) -> list[str]:
    """The lines with ids and lead ids made the stream's own (a redelivered line stays byte-identical)."""
    out = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a broken line of the generator: make it this stream's too
            out.append(line.replace('"id":"', f'"id":"{tag}:'))
            continue
        if isinstance(event.get("id"), str):
            event["id"] = f"{tag}:{event['id']}"
        data = event.get("data")
        if isinstance(data, dict) and isinstance(data.get("lead_id"), str):
            data["lead_id"] = f"{tag}-{data['lead_id']}"
        out.append(json.dumps(event, separators=(",", ":")))
    return out


def _merge(shared: list[str], own: list[str], seed: int) -> tuple[list[str], list[int]]:
    """Interleave the shared lines (in their order) with the stream's own; also where the shared ones went."""
    total = len(shared) + len(own)
    at = sorted(random.Random(seed).sample(range(total), len(shared)))
    merged, s, o, spots = [], iter(shared), iter(own), set(at)
    for i in range(total):
        merged.append(next(s) if i in spots else next(o))
    return merged, at


def build_streams() -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Four streams of 5000 lines; c and d share 3000 lines (their positions in each are returned)."""
    shared = _prefixed(list(stream(SHARED, 400, seed=303)), "S")
    streams = {
        "a": _prefixed(list(stream(EVENTS, 700, seed=101)), "A"),
        "b": _prefixed(list(stream(EVENTS, 700, seed=202)), "B"),
    }
    positions = {}
    for name, seed in (("c", 404), ("d", 505)):
        own = _prefixed(list(stream(EVENTS - SHARED, 300, seed=seed)), name.upper())
        streams[name], positions[name] = _merge(shared, own, seed)
    assert all(len(s) == EVENTS for s in streams.values())
    assert [streams["c"][i] for i in positions["c"]] == [streams["d"][i] for i in positions["d"]] == shared
    return streams, positions


# -- helpers ----------------------------------------------------------------------------------------------

def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}


def summary(stderr: str) -> tuple[int, int, int]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr holds more than the summary: {stderr[-2000:]}"
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    return int(match[1]), int(match[2]), int(match[3])


def serial_run(db: Path, streams: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """The reference: the four streams one after another into a fresh database."""
    with Engine.open(db=db) as eng:
        return {name: eng.process_many([line.encode() for line in streams[name]], first_line=1) for name in NAMES}


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _key(result: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "line"}, sort_keys=True)


def check_against_serial(db: Path, results: dict[str, list[dict[str, Any]]], streams: dict[str, list[str]],
                         positions: dict[str, list[int]], serial_db: Path,
                         serial: dict[str, list[dict[str, Any]]]) -> None:
    # one result per input line, in order, with the shape of a result
    for name in NAMES:
        assert [r["line"] for r in results[name]] == list(range(1, EVENTS + 1)), name
        for r in results[name]:
            assert not any("locked" in e["message"] or "busy" in e["message"] for e in r["errors"]), r
    # the disjoint streams, and the own lines of the overlapping ones, come out exactly as in the serial run
    for name in ("a", "b"):
        assert results[name] == serial[name], name
    shared_c, shared_d = positions["c"], positions["d"]
    for name in ("c", "d"):
        spots = set(positions[name])
        own = [i for i in range(EVENTS) if i not in spots]
        assert [results[name][i] for i in own] == [serial[name][i] for i in own], name
    # a shared line: the pair of outcomes equals the serial pair (each accepted event accepted exactly once)
    accepted_once = 0
    for i_c, i_d in zip(shared_c, shared_d, strict=True):
        got = sorted([_key(results["c"][i_c]), _key(results["d"][i_d])])
        want = sorted([_key(serial["c"][i_c]), _key(serial["d"][i_d])])
        assert got == want, (streams["c"][i_c], results["c"][i_c], results["d"][i_d])
        pair = sorted([results["c"][i_c]["status"], results["d"][i_d]["status"]])
        if serial["c"][i_c]["status"] == "accepted":
            assert pair == ["accepted", "duplicate"], streams["c"][i_c]
            other = results["d"][i_d] if results["c"][i_c]["status"] == "accepted" else results["c"][i_c]
            assert other["reason"] == "same_envelope"
            accepted_once += 1
    assert accepted_once > SHARED // 2
    # totals
    for name in NAMES:
        assert Counter(r["status"] for r in results[name]).total() == EVENTS
    got_totals = Counter(r["status"] for name in NAMES for r in results[name])
    want_totals = Counter(r["status"] for name in NAMES for r in serial[name])
    assert got_totals == want_totals
    # the database: one input row per line, and the same final state as the serial run
    assert _rows(db, "SELECT count(*) FROM inputs") == [(len(NAMES) * EVENTS,)]
    assert _rows(db, "SELECT status, count(*) FROM inputs GROUP BY status ORDER BY status") == sorted(
        got_totals.items())
    assert _rows(db, "SELECT count(*) FROM inputs WHERE status = 'rejected' AND rejection_seq IS NULL") == [(0,)]
    assert integrity(db) == "ok"
    got, want = snapshot(db), snapshot(serial_db)
    for table in want:
        assert got[table] == want[table], f"{table} differs from the serial run"


def check_interleaved(db: Path, must_overlap: str = "ABCD") -> int:
    """The four really wrote at the same time: the stretch of input rows of each process in
    `must_overlap` overlaps another process's. Returns how many times the writer changed along
    the input log."""
    rows = _rows(db, "SELECT seq, id FROM inputs WHERE id IS NOT NULL AND substr(id, 2, 1) = ':' ORDER BY seq")
    spans: dict[str, list[int]] = {}
    writers = []
    for seq, event_id in rows:
        tag = event_id[0]
        if tag in "ABCD":
            spans.setdefault(tag, [seq, seq])[1] = seq
            writers.append(tag)
    assert set(spans) == set("ABCD")

    def overlap(x: str, y: str) -> bool:
        return max(spans[x][0], spans[y][0]) < min(spans[x][1], spans[y][1])

    # Start-up skew on a loaded machine can let one process finish before another begins, so
    # each must overlap at least one other, not every other.
    for x in must_overlap:
        assert any(overlap(x, y) for y in "ABCD" if y != x), (x, spans)
    switches = sum(1 for p, q in zip(writers, writers[1:]) if p != q)
    return switches


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The streams and their serial run, built once for the module."""
    streams, positions = build_streams()
    serial_db = tmp_path_factory.mktemp("serial") / "serial.db"
    return {"streams": streams, "positions": positions, "serial_db": serial_db,
            "serial": serial_run(serial_db, streams)}


def write_streams(tmp_path: Path, streams: dict[str, list[str]], count: int = EVENTS) -> None:
    for name in NAMES:
        (tmp_path / f"{name}.jsonl").write_text("\n".join(streams[name][:count]) + "\n", encoding="utf-8")


# -- four console scripts at once -------------------------------------------------------------------------

@pytest.mark.slow
def test_four_cli_processes_write_one_database_at_once(tmp_path, figure, reference):
    streams, positions = reference["streams"], reference["positions"]
    write_streams(tmp_path, streams)
    db = tmp_path / "shared.db"
    first = subprocess.run([str(WF), "process", "-", "--db", str(db)], input=b"", cwd=tmp_path, capture_output=True,
                           env=clean_env(), timeout=60, check=False)
    assert first.returncode == 0, first.stderr

    started = time.monotonic()
    procs = {}
    for name in NAMES:
        out, err = (tmp_path / f"{name}.out").open("wb"), (tmp_path / f"{name}.err").open("wb")
        procs[name] = (subprocess.Popen([str(WF), "process", f"{name}.jsonl", "--db", str(db),
                                         "--batch-size", str(CLI_BATCH[name])],
                                        cwd=tmp_path, stdout=out, stderr=err, env=clean_env()), out, err)
    codes = {}
    for name, (proc, out, err) in procs.items():
        try:
            codes[name] = proc.wait(timeout=180)
        finally:
            out.close()
            err.close()
    seconds = time.monotonic() - started

    stderr = {name: (tmp_path / f"{name}.err").read_text("utf-8") for name in NAMES}
    stdout = {name: (tmp_path / f"{name}.out").read_text("utf-8") for name in NAMES}
    locked = sum(text.count("locked") for text in list(stderr.values()) + list(stdout.values()))
    figure("concurrency_processes", len(NAMES))
    figure("concurrency_events", len(NAMES) * EVENTS)
    figure("concurrency_locked_errors", locked)
    figure("concurrency_seconds", round(seconds, 2))
    assert codes == dict.fromkeys(NAMES, 0), stderr
    assert locked == 0
    for name in NAMES:
        assert "Traceback" not in stderr[name] and "rror" not in stderr[name], stderr[name]

    results = {name: [json.loads(line) for line in stdout[name].splitlines() if line.strip()] for name in NAMES}
    for name in NAMES:  # the summary agrees with the result lines
        statuses = Counter(r["status"] for r in results[name])
        assert summary(stderr[name]) == (statuses["accepted"], statuses["duplicate"], statuses["rejected"])
        assert sum(statuses.values()) == EVENTS

    # the --batch-size 1 runs (a, c) last long enough to overlap all others whatever the start-up lag
    switches = check_interleaved(db, must_overlap="AC")
    assert switches >= 20, "the four runs hardly overlapped"
    check_against_serial(db, results, streams, positions, reference["serial_db"], reference["serial"])


# -- four Python processes calling Engine.process_many at once ------------------------------------------------

_CHILD = """
import json, sys, time
from pathlib import Path
from engine import Engine

name, db, batch, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
lines = Path(name + ".jsonl").read_bytes().split(b"\\n")[:-1]
with Engine.open(db=db) as eng:
    Path(name + ".ready").touch()
    while not go.exists():
        time.sleep(0.005)
    results = eng.process_many(lines, batch_size=batch, first_line=1)
Path(name + ".results").write_text(json.dumps(results), encoding="utf-8")
"""


@pytest.mark.slow
def test_four_api_processes_process_many_at_once(tmp_path, figure, reference):
    streams, positions = reference["streams"], reference["positions"]
    write_streams(tmp_path, streams)
    db = tmp_path / "api.db"
    Engine.open(db=db).close()
    go = tmp_path / "go"
    env = {**clean_env(), "PYTHONPATH": str(ROOT)}
    procs = {name: subprocess.Popen([sys.executable, "-c", _CHILD, name, str(db), str(API_BATCH[name]), str(go)],
                                    cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for name in NAMES}
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{name}.ready").exists() for name in NAMES):  # all opened: start them together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), "a child died"
        time.sleep(0.01)
    started = time.monotonic()
    go.touch()
    outputs = {name: proc.communicate(timeout=180) for name, proc in procs.items()}
    seconds = time.monotonic() - started
    for name, (out, err) in outputs.items():
        assert procs[name].returncode == 0, err.decode()[-3000:]
        assert out == b"" and err == b"", (name, err.decode()[-3000:])
    figure("concurrency_api_seconds", round(seconds, 2))

    results = {name: json.loads((tmp_path / f"{name}.results").read_text("utf-8")) for name in NAMES}
    assert check_interleaved(db) >= 20
    check_against_serial(db, results, streams, positions, reference["serial_db"], reference["serial"])


# -- four processes starting on a database file that does not exist yet -----------------------------------------

@pytest.mark.slow
def test_four_cli_processes_create_a_new_database_at_once(tmp_path, reference):
    write_streams(tmp_path, reference["streams"], 100)
    for round_ in range(3):
        db = tmp_path / f"new-{round_}.db"
        procs = {name: subprocess.Popen([str(WF), "process", f"{name}.jsonl", "--db", str(db), "--batch-size", "1"],
                                        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
                 for name in NAMES}
        outputs = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
        for name, (out, err) in outputs.items():
            assert procs[name].returncode == 0, (round_, name, err.decode()[-2000:])
            assert b"locked" not in err and b"Traceback" not in err
            assert len(out.splitlines()) == 100
        assert _rows(db, "SELECT count(*) FROM inputs") == [(400,)]
        assert integrity(db) == "ok"
