"""The harness of the PostgreSQL proofs (tests/test_postgres_proofs.py, bench/pg_workers.py):
a stream of events over many route keys, `webinar-flows process` workers run as users run them,
SIGKILLs at random moments, a PostgreSQL restart, and the comparison of what a database holds
with a single-process SQLite run of the same stream.

Every comparison reads the tables with SQL (sqlite3 on the reference, psycopg on PostgreSQL):
the test trusts the data, not the mechanism.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import completed, entered, form_submitted, left, registered

WF = shutil.which("webinar-flows", path=str(Path(sys.executable).parent)) or "webinar-flows"


def stream(keys: int, seed: int = 7) -> list[dict[str, Any]]:
    """Events over `keys` route keys, each key's in its own order, keys interleaved at random;
    with resends (same_envelope) and the same fact under another id (same_fact)."""
    rng = random.Random(seed)
    per_key: list[list[dict[str, Any]]] = []
    for k in range(keys):
        lead, web = f"lead-{k:05d}", f"web-{k % 7}"
        mine = [registered(lead, web, id=f"r-{k}"), entered(lead, web, id=f"e-{k}"),
                completed(lead, web, id=f"c-{k}"), form_submitted(lead, web, id=f"f-{k}")]
        if k % 3 == 0:
            mine.insert(3, left(lead, web, id=f"l-{k}"))
        if k % 4 == 0:  # the same fact again under a new id
            mine.insert(rng.randrange(2, len(mine) + 1), entered(lead, web, id=f"e2-{k}"))
        if k % 5 == 0:  # a resend of one event, byte for byte
            mine.insert(rng.randrange(1, len(mine) + 1), dict(mine[rng.randrange(len(mine))]))
        per_key.append(mine)
    out: list[dict[str, Any]] = []
    cursors = [0] * keys
    live = list(range(keys))
    while live:
        i = rng.randrange(len(live))
        k = live[i]
        out.append(per_key[k][cursors[k]])
        cursors[k] += 1
        if cursors[k] == len(per_key[k]):
            live[i] = live[-1]
            live.pop()
    return out


def key_of(event: dict[str, Any]) -> str:
    return f'{event["data"]["lead_id"]}/{event["data"]["webinar_id"]}'


def write_lines(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in events))
    return path


def reference(events: list[dict[str, Any]], path: Path, batch_size: int = 20) -> Path:
    """The single-process SQLite run of the stream."""
    from engine import Engine

    with Engine.open(config=None, db=path) as eng:
        eng.process_many(events, batch_size=batch_size)
    return path


def worker(share: Path, db: str, out: Path, batch_size: int = 20) -> subprocess.Popen:
    with open(out, "ab") as stdout, open(out.with_suffix(".err"), "ab") as stderr:
        return subprocess.Popen([WF, "process", str(share), "--db", db, "--batch-size", str(batch_size)],
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)


def pg_restart() -> float:
    """Restart the test cluster (`pg_ctl restart -m fast`); the seconds it took."""
    data, bindir = os.environ["WEBINAR_FLOWS_TEST_PG_DATA"], os.environ.get("WEBINAR_FLOWS_TEST_PG_BIN",
                                                                             "/usr/lib/postgresql/15/bin")
    # -l: the restarted server must not inherit a pipe of ours (we would wait for its end)
    command = [f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "-l", f"{data}/restart.log", "restart"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    started = time.monotonic()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    return time.monotonic() - started


def _pg_ctl(*args: str) -> None:
    data, bindir = os.environ["WEBINAR_FLOWS_TEST_PG_DATA"], os.environ.get("WEBINAR_FLOWS_TEST_PG_BIN",
                                                                             "/usr/lib/postgresql/15/bin")
    command = [f"{bindir}/pg_ctl", "-D", data, "-w", *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def pg_stop() -> list[str]:
    """Stop the test cluster (fast: sessions are ended); what `pg_start` needs to start it the same."""
    import shlex

    opts = shlex.split(Path(os.environ["WEBINAR_FLOWS_TEST_PG_DATA"], "postmaster.opts").read_text())
    _pg_ctl("-m", "fast", "stop")
    return opts[3:]  # after the binary, -D and the directory: the -c settings it was started with


def pg_start(options: list[str]) -> None:
    import shlex

    data = os.environ["WEBINAR_FLOWS_TEST_PG_DATA"]
    _pg_ctl("-l", f"{data}/restart.log", "-o", " ".join(shlex.quote(o) for o in options), "start")


def can_restart() -> bool:
    return bool(os.environ.get("WEBINAR_FLOWS_TEST_PG_DATA"))


# -- what a database holds ---------------------------------------------------------------------------

QUERIES = {
    "routes": "SELECT route_key, state, screen, version FROM routes",
    "history": "SELECT route_key, from_state, to_state, event_source, event_id, event_type FROM route_history"
               " ORDER BY seq",
    "facts": "SELECT source, id, type, route_key, identity, data, derived, rule_id FROM facts",
    "accepted": "SELECT source, id FROM inputs WHERE status = 'accepted'",
    "envelopes": "SELECT source, id, body FROM envelopes",
    "actions": "SELECT route_key, position, type, body FROM actions ORDER BY seq",
    "outbox": "SELECT id, type FROM outbox",
}


def holdings(db: str | Path) -> dict[str, Any]:
    """Routes, each key's history and actions in order, and the multisets of facts, accepted
    inputs, envelopes and outbox items."""
    if isinstance(db, str) and db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            rows = {name: [tuple(r) for r in conn.execute(sql).fetchall()] for name, sql in QUERIES.items()}
    else:
        conn = sqlite3.connect(db)
        try:
            rows = {name: [tuple(r) for r in conn.execute(sql).fetchall()] for name, sql in QUERIES.items()}
        finally:
            conn.close()
    history: dict[str, list[tuple]] = {}
    for key, *rest in rows["history"]:
        history.setdefault(key, []).append(tuple(rest))
    actions: dict[str, list[tuple]] = {}
    for key, *rest in rows["actions"]:
        actions.setdefault(key, []).append(tuple(rest))
    return {"routes": {r[0]: r[1:] for r in rows["routes"]}, "history": history, "actions": actions,
            "facts": Counter(rows["facts"]), "accepted": Counter(rows["accepted"]),
            "envelopes": Counter(rows["envelopes"]), "outbox": Counter(rows["outbox"])}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    found = []
    for part in a:
        if a[part] != b[part]:
            if isinstance(a[part], dict):
                keys = sorted(set(a[part]) | set(b[part]), key=str)
                bad = [k for k in keys if a[part].get(k) != b[part].get(k)]
                found.append(f"{part}: {len(bad)} differ, e.g. {bad[:3]}: {[a[part].get(k) for k in bad[:1]]} vs "
                             f"{[b[part].get(k) for k in bad[:1]]}")
            else:
                found.append(f"{part}: differs")
    return found


def applied_twice(h: dict[str, Any]) -> list[Any]:
    """Anything accepted or stored more than once."""
    return ([k for k, n in h["accepted"].items() if n > 1] + [k for k, n in h["facts"].items() if n > 1]
            + [k for k, n in h["outbox"].items() if n > 1])


def result_lines_ok(out: Path) -> list[str]:
    """Each run of a worker printed whole batches of result lines in line order (a killed run
    stops at a batch boundary, a new run starts again at line 1); no traceback anywhere."""
    problems = []
    expected = 1
    for raw in out.read_bytes().splitlines():
        try:
            line = json.loads(raw)["line"]
        except ValueError:  # a line the SIGKILL cut in half (its batch had committed)
            continue
        if line == 1:
            expected = 1
        if line != expected:
            problems.append(f"{out.name}: line {line} where {expected} was due")
            expected = line
        expected += 1
    err = out.with_suffix(".err").read_text(errors="replace")
    if "Traceback" in err:
        problems.append(f"{out.name}: a traceback on stderr")
    return problems


def kill(proc: subprocess.Popen) -> bool:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return True
    return False
