"""The PostgreSQL proofs of tests/test_postgres_proofs.py, bigger and with a report: process
workers on one database under SIGKILLs at random moments and PostgreSQL restarts, compared with
one SQLite process on the same stream; then two workers on interleaved halves of one stream.

    python bench/pg_workers.py                       # 4 workers, 5000 keys, 60 kills, 2 restarts
    python bench/pg_workers.py --keys 20000 --kills 200 --restarts 5 --workers 8

It starts its own throw-away cluster (bench/pg_cluster.py) and prints one JSON object: kills
landed, restarts, re-runs, seconds, and every equality checked (the run fails with exit 1 when
one does not hold).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from pg_cluster import Cluster  # noqa: E402
from pg_proof import (  # noqa: E402
    applied_twice,
    differences,
    holdings,
    key_of,
    kill,
    reference,
    result_lines_ok,
    stream,
    worker,
    write_lines,
)


def killed_workers(pg: Cluster, tmp: Path, keys: int, workers: int, kills: int, restarts: int,
                   seed: int) -> dict[str, object]:
    url = pg.create_database()
    events = stream(keys, seed=seed)
    all_keys = sorted({key_of(e) for e in events})
    share_of = {k: i % workers for i, k in enumerate(all_keys)}
    shares = [write_lines(tmp / f"share{i}.jsonl", [e for e in events if share_of[key_of(e)] == i])
              for i in range(workers)]
    outs = [tmp / f"worker{i}.out" for i in range(workers)]
    started = time.monotonic()
    expected = holdings(reference(events, tmp / "reference.db"))
    reference_seconds = time.monotonic() - started
    rng = random.Random(seed)
    procs = [worker(shares[i], url, outs[i]) for i in range(workers)]
    landed = reruns = done_restarts = 0
    restart_at = sorted(rng.sample(range(1, kills), min(restarts, kills - 1))) if kills > 1 else []
    started = time.monotonic()
    while landed < kills and time.monotonic() - started < 1800:
        time.sleep(rng.uniform(0.05, 0.6))
        i = rng.randrange(workers)
        if kill(procs[i]):
            landed += 1
        else:
            reruns += 1
        procs[i] = worker(shares[i], url, outs[i])
        while restart_at and landed >= restart_at[0]:
            restart_at.pop(0)
            pg.restart()
            done_restarts += 1
    exit_codes = []
    for i, proc in enumerate(procs):
        code = proc.wait(600)
        if code != 0:
            procs[i] = worker(shares[i], url, outs[i])
            code = procs[i].wait(600)
        exit_codes.append(code)
    seconds = time.monotonic() - started
    got = holdings(url)
    problems = differences(expected, got) + [f"applied twice: {x}" for x in applied_twice(got)[:5]]
    problems += [p for out in outs for p in result_lines_ok(out)]
    return {"proof": "killed workers", "events": len(events), "keys": keys, "workers": workers, "kills": landed,
            "pg_restarts": done_restarts, "reruns_of_finished_workers": reruns, "exit_codes": exit_codes,
            "seconds": round(seconds, 1), "reference_seconds": round(reference_seconds, 1),
            "routes": len(got["routes"]), "facts": sum(got["facts"].values()),
            "checked": ["routes", "history", "actions", "facts", "accepted", "envelopes", "outbox"],
            "problems": problems}


def interleaved(pg: Cluster, tmp: Path, keys: int, seed: int) -> dict[str, object]:
    from engine import Engine, load_config
    from engine.config.locate import bundled_config
    from engine.runtime.route import RouteMachine

    url = pg.create_database()
    events = stream(keys, seed=seed)
    halves = [write_lines(tmp / "odd.jsonl", events[0::2]), write_lines(tmp / "even.jsonl", events[1::2])]
    outs = [tmp / "a.out", tmp / "b.out"]
    procs = [worker(h, url, o, batch_size=10) for h, o in zip(halves, outs, strict=True)]
    codes = [p.wait(900) for p in procs]
    results = [json.loads(line) for out in outs for line in out.read_bytes().splitlines()]
    with Engine.open(config=None, db=tmp / "interleaved-reference.db") as eng:
        expected = Counter((r["status"], r["reason"]) for r in eng.process_many(events))
    got = holdings(url)
    config = load_config(bundled_config())
    machine = RouteMachine(config.route)
    bad = []
    for key, steps in got["history"].items():
        state = config.route.initial
        for before, after, _s, _i, event_type in steps:
            if before != state or machine.fire(before, event_type) != after:
                bad.append((key, before, event_type, after))
            state = after
    problems = [] if Counter((r["status"], r["reason"]) for r in results) == expected else ["totals differ"]
    problems += [f"transition not allowed: {b}" for b in bad[:5]] + [f"applied twice: {x}" for x in applied_twice(got)[:5]]
    return {"proof": "interleaved halves", "events": len(events), "exit_codes": codes,
            "totals": {f"{s}/{r}": n for (s, r), n in sorted(expected.items(), key=str)},
            "routes_checked": len(got["history"]), "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=60)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Cluster(fsync=True) as pg:
        reports = [killed_workers(pg, Path(tmp), args.keys, args.workers, args.kills, args.restarts, args.seed),
                   interleaved(pg, Path(tmp), max(100, args.keys // 4), args.seed + 1)]
    print(json.dumps(reports, indent=1))
    sys.exit(1 if any(r["problems"] for r in reports) else 0)


if __name__ == "__main__":
    main()
