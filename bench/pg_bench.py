"""PostgreSQL beside SQLite: `Engine.process_many` in 1, 2 and 4 worker processes on one
PostgreSQL database, each worker on its share of the route keys, against one SQLite process;
in batches of 500 events per commit and one event per commit. Records throughput, and the CPU
the workers and the database server used (from /proc), so what limits a 2-core machine shows.

    python bench/pg_bench.py            # writes bench/pg-results.json and docs/pg-bench.png;
                                        # docs/PERFORMANCE-postgres.md is written from them by hand
    python bench/pg_bench.py --quick    # a smoke check: small runs, writes nothing

PostgreSQL runs in a throw-away cluster (bench/pg_cluster.py) with fsync and synchronous
commit on, as SQLite runs with synchronous=NORMAL (the CLI's default; WAL: a commit is durable
against a process crash, not a power cut). Each run gets a fresh database. Workers start
together at a barrier; the rate is all events over the time from the barrier to the last
worker's end (connection and config loading excluded: they are paid once per process).
In batches, one worker (with the whole server) and SQLite are also run on CPU 0 only: see ONE_CORE.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from pg_cluster import Cluster  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(ppid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _machine_busy() -> tuple[float, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


def _pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # a backend that exited meanwhile
            pass


def _worker(db: str, lines: list[bytes], batch: int, ready: Any, go: Any, done: Any, leave: Any, out: Any,
            one_core: bool = False) -> None:
    from engine import Engine

    if one_core:
        os.sched_setaffinity(0, {0})
    with Engine.open(config=None, db=db) as eng:
        ready.wait()
        go.wait()
        cpu0 = sum(os.times()[:2])
        start = time.monotonic()
        eng.process_many(lines, batch_size=batch)
        end = time.monotonic()
        cpu = sum(os.times()[:2]) - cpu0
        out.put((start, end, cpu))
        done.wait()
        leave.wait()  # the connection stays open until the database's CPU was read


def run(db: str, shares: list[list[bytes]], batch: int, postmaster: int | None, *,
        one_core: bool = False) -> dict[str, Any]:
    """One run. `one_core`: the worker and the whole PostgreSQL server on CPU 0 only (see main)."""
    ctx = mp.get_context("fork")
    n = len(shares)
    ready, go, done, leave = (ctx.Barrier(n + 1) for _ in range(4))
    out = ctx.Queue()
    everything = set(range(os.cpu_count() or 1))
    if one_core and postmaster:
        _pin(_children(postmaster) + [postmaster], {0})  # backends forked later inherit it
    procs = [ctx.Process(target=_worker, args=(db, s, batch, ready, go, done, leave, out, one_core)) for s in shares]
    for p in procs:
        p.start()
    ready.wait()
    backends = {pid: _cpu_of(pid) for pid in (_children(postmaster) + [postmaster] if postmaster else [])}
    busy0 = _machine_busy()
    go.wait()
    done.wait()
    busy1 = _machine_busy()
    if postmaster:
        db_cpu = sum(_cpu_of(pid) - backends.get(pid, 0.0) for pid in _children(postmaster) + [postmaster])
    else:
        db_cpu = 0.0
    leave.wait()
    timings = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    if one_core and postmaster:
        _pin(_children(postmaster) + [postmaster], everything)
    events = sum(len(s) for s in shares)
    wall = max(t[1] for t in timings) - min(t[0] for t in timings)
    return {"workers": n, "one_core": one_core, "batch": batch, "events": events, "seconds": round(wall, 3),
            "rate": round(events / wall, 1), "worker_cpu_s": round(sum(t[2] for t in timings), 2),
            "db_cpu_s": round(db_cpu, 2), "machine_busy_s": round(busy1[0] - busy0[0], 2),
            "machine_capacity_s": round(busy1[1] - busy0[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from pg_proof import key_of, stream

    keys_batch, keys_single = (400, 100) if args.quick else (4000, 600)
    reps = 1 if args.quick else 2
    results: list[dict[str, Any]] = []

    def shares_of(events: list[dict[str, Any]], n: int) -> list[list[bytes]]:
        keys = sorted({key_of(e) for e in events})
        index = {k: i % n for i, k in enumerate(keys)}
        return [[json.dumps(e).encode() for e in events if index[key_of(e)] == i] for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp, Cluster(fsync=True) as pg:
        for label, keys, batch in (("batch", keys_batch, 500), ("per-event", keys_single, 1)):
            events = stream(keys, seed=3)
            for rep in range(reps):
                row = run(str(Path(tmp) / f"sqlite-{label}-{rep}.db"), shares_of(events, 1), batch, None)
                results.append({"backend": "sqlite", "mode": label, **row})
                print(json.dumps(results[-1]), flush=True)
                for n in (1, 2, 4):
                    row = run(pg.create_database(), shares_of(events, n), batch, pg.postmaster_pid())
                    results.append({"backend": "postgresql", "mode": label, **row})
                    print(json.dumps(results[-1]), flush=True)
                if label == "batch":  # one worker, and SQLite, on one core: see ONE_CORE
                    row = run(str(Path(tmp) / f"sqlite-{label}-{rep}-one-core.db"), shares_of(events, 1), batch, None,
                              one_core=True)
                    results.append({"backend": "sqlite", "mode": label, **row})
                    print(json.dumps(results[-1]), flush=True)
                    row = run(pg.create_database(), shares_of(events, 1), batch, pg.postmaster_pid(), one_core=True)
                    results.append({"backend": "postgresql", "mode": label, **row})
                    print(json.dumps(results[-1]), flush=True)
    if args.quick:
        return
    meta = {"machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (ROOT / "bench" / "pg-results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1) + "\n")
    plot(results, ROOT / "docs" / "pg-bench.png")
    print(json.dumps(summary(results), indent=1))


ONE_CORE = """A worker and its server backend take turns: each waits while the other works. On
this machine (a virtual one) a process woken on the other, idle CPU costs the host's time, which
shows as steal in /proc/stat: a one-worker run spread over both CPUs spent more time stolen than
working. So one worker with the whole PostgreSQL server is also run on CPU 0 only, the same one
core that SQLite's single process has (and SQLite is run there too): the like-for-like figure."""


def best(results: list[dict[str, Any]], backend: str, mode: str, workers: int,
         one_core: bool = False) -> dict[str, Any]:
    rows = [r for r in results if r["backend"] == backend and r["mode"] == mode and r["workers"] == workers
            and r.get("one_core", False) == one_core]
    return max(rows, key=lambda r: r["rate"])


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    sqlite = best(results, "sqlite", "batch", 1)["rate"]
    pg = {n: best(results, "postgresql", "batch", n)["rate"] for n in (1, 2, 4)}
    sqlite_one = best(results, "sqlite", "batch", 1, one_core=True)["rate"]
    pg_one = best(results, "postgresql", "batch", 1, one_core=True)["rate"]
    return {"sqlite_batch": sqlite, "pg_batch": pg, "pg1_over_sqlite": round(pg[1] / sqlite, 2),
            "one_core": {"sqlite_batch": sqlite_one, "pg1_batch": pg_one,
                         "pg1_over_sqlite": round(pg_one / sqlite_one, 2)},
            "pg2_over_pg1": round(pg[2] / pg[1], 2), "pg2_over_pg1_one_core": round(pg[2] / pg_one, 2),
            "pg4_over_pg1": round(pg[4] / pg[1], 2)}


def plot(results: list[dict[str, Any]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("batch", "per-event"), strict=True):
        workers = [1, 2, 4]
        ax.plot(workers, [best(results, "postgresql", mode, n)["rate"] for n in workers], "o-", label="PostgreSQL")
        ax.axhline(best(results, "sqlite", mode, 1)["rate"], color="grey", linestyle="--", label="SQLite, 1 process")
        if any(r.get("one_core") and r["mode"] == mode for r in results):
            ax.plot([1], [best(results, "postgresql", mode, 1, one_core=True)["rate"]], "s",
                    label="PostgreSQL, 1 worker and the server on one core")
        ax.set_title(f"{mode} ({'500 events' if mode == 'batch' else '1 event'} per commit)")
        ax.set_xlabel("worker processes")
        ax.set_ylabel("events/s")
        ax.set_xticks(workers)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle("webinar-flows process_many on one 2-core machine (database and workers share it)")
    fig.tight_layout()
    fig.savefig(target, dpi=90)


if __name__ == "__main__":
    main()
