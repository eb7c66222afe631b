"""The benchmark: the engine beside the floor pipelines, on the same input, in one run.

Every goal is a ratio measured in one process run, engine and floors alternating, so all
sides of a ratio share the same noise. Each measurement is repeated and the median kept.
The yardstick is the tight floor (bench/floor.py `Floor`); the floor as written until issue 12
(`LooseFloor`) runs beside it as a second column. Before a ratio is kept, engine and tight floor
must agree on the outcome: counts, routes (state and screen), rejections (bytes and reason) and
the outbox (the same items per route key, in order, equal but for their `time`).

    python bench/run.py            # or: make bench        (full sizes, several minutes)
    python bench/run.py --quick    # small sizes, for a smoke check

It prints every goal's ratio against its target, writes bench/results.json, rewrites the
figures block of docs/PERFORMANCE.md and draws docs/perf-growth.png.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.floor import Floor, LooseFloor  # noqa: E402
from bench.generate import stream  # noqa: E402
from engine import Engine  # noqa: E402
from engine.config.locate import bundled_config  # noqa: E402
from engine.store import open_reader  # noqa: E402
from engine.store.base import RejectionFilter  # noqa: E402

CLI = str(Path(sys.executable).parent / "webinar-flows")
DOC = ROOT / "docs" / "PERFORMANCE.md"
PLOT = ROOT / "docs" / "perf-growth.png"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
GOALS = {  # name: (target, higher is better)
    "batch": (0.6, True), "batch_cli": (0.6, True), "per_event": (0.7, True), "large_db": (0.8, True),
    "memory_mib": (100.0, False), "evaluate": (0.5, True), "startup_s": (0.3, False), "service": (0.5, True),
}
# The outbox item types of the default config: its derived events and the three action kinds.
ITEM_TYPES = frozenset({"client_webinar_attendance_classified", "post_webinar_route",
                        "action.route", "action.screen", "action.reminder"})
SERVICE_RESULTS = ROOT / "bench" / "service-results.json"
SERVICE_RUN, SERVICE_BASE = "group commit, 32 conns, FULL", "engine process_many, 500 per commit, NORMAL"
STATUSES = ("accepted", "duplicate", "rejected")
Outcome = dict  # counts, routes, and for the engine and the tight floor: rejections, outbox


def lines_of(events: int, leads: int, seed: int = 7, webinars: int | None = None) -> list[bytes]:
    return [line.encode() for line in stream(events, leads, seed=seed, webinars=webinars)]


def outbox_digest(items: Iterable[dict]) -> dict[str, tuple[list[tuple[str, str]], str]]:
    """Per route key (the item's subject): its items' (id, type) in order, and a digest of their
    bodies without `time` (when each side committed), so whole outboxes compare in little memory."""
    ids: dict[str, list[tuple[str, str]]] = {}
    bodies: dict[str, Any] = {}
    for item in items:
        item.pop("time", None)
        subject = item["subject"]
        ids.setdefault(subject, []).append((item["id"], item["type"]))
        bodies.setdefault(subject, hashlib.sha1(usedforsecurity=False)).update(
            orjson.dumps(item, option=orjson.OPT_SORT_KEYS) + b"\n")
    return {k: (v, bodies[k].hexdigest()) for k, v in ids.items()}


def engine_outcome(db: Path, counts: dict[str, int] | None = None) -> Outcome:
    """What the engine's database holds, read through the engine's own reader (not its tables)."""
    reader = open_reader(db)
    try:
        if counts is None:
            counts = dict.fromkeys(STATUSES, 0)
            for row in reader.inputs():
                counts[row["status"]] += 1

        def items() -> Iterator[dict]:
            cursor = ""
            while True:
                bodies, cursor = reader.outbox_after(cursor, ITEM_TYPES, 10_000)
                if not bodies:
                    return
                yield from (orjson.loads(b) for b in bodies)

        return {"counts": counts, "routes": reader.route_states(), "outbox": outbox_digest(items()),
                "rejections": {bytes(r["raw"]): r["reason"] for r in reader.rejections(RejectionFilter(), raw=True)}}
    finally:
        reader.close()


def time_engine(lines: list[bytes], db: Path, batch: int, *, outcome: bool = True) -> tuple[float, Outcome]:
    with Engine.open(db=db) as eng:
        started = time.perf_counter()
        results = eng.process_many(lines, batch_size=batch)
        elapsed = time.perf_counter() - started
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    return len(lines) / elapsed, engine_outcome(db, counts) if outcome else {"counts": counts}


def time_cli(lines: list[bytes], db: Path, batch: int) -> tuple[float, Outcome]:
    """`webinar-flows process FILE --batch-size N > /dev/null` as a user runs it: wall clock from
    start to exit, so start-up, reading the file and writing every result line count."""
    source = db.with_suffix(".jsonl")
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    started = time.perf_counter()
    subprocess.run([CLI, "process", str(source), "--db", str(db), "--batch-size", str(batch)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - started
    source.unlink()
    return len(lines) / elapsed, engine_outcome(db)


def time_floor(lines: list[bytes], db: Path, batch: int) -> tuple[float, Outcome]:
    """The tight floor (the yardstick)."""
    floor = Floor(db, bundled_config())
    started = time.perf_counter()
    counts = floor.run(lines, batch)
    elapsed = time.perf_counter() - started
    out = {"counts": dict(counts), "routes": floor.routes(), "outbox": outbox_digest(floor.outbox()),
           "rejections": floor.rejections()}
    floor.close()
    return len(lines) / elapsed, out


def time_loose(lines: list[bytes], db: Path, batch: int) -> tuple[float, Outcome]:
    """The floor as written until issue 12 (no outbox; its derived ids are not the engine's)."""
    floor = LooseFloor(db, bundled_config())
    started = time.perf_counter()
    counts = floor.run(lines, batch)
    elapsed = time.perf_counter() - started
    out = {"counts": dict(counts), "routes": floor.routes()}
    floor.close()
    return len(lines) / elapsed, out


def disagreement(engine: Outcome, floor: Outcome) -> str | None:
    """Where a floor's outcome differs from the engine's, on what that floor records; None: agreed."""
    for part in ("counts", "routes", "rejections"):
        if part in floor and engine[part] != floor[part]:
            if part == "counts":
                return f"counts {engine[part]} vs {floor[part]}"
            only = set(engine[part].items()) ^ set(floor[part].items())
            return f"{part}: {len(only)} entries differ, e.g. {sorted(map(repr, only))[:2]}"
    if "outbox" in floor:
        e, f = engine["outbox"], floor["outbox"]
        sizes = (sum(len(v[0]) for v in e.values()), sum(len(v[0]) for v in f.values()))
        if sizes[0] != sizes[1]:
            return f"outbox: {sizes[0]} items vs {sizes[1]}"
        for subject in sorted(set(e) | set(f)):
            if e.get(subject) != f.get(subject):
                what = "ids or types" if (e.get(subject) or ([],))[0] != (f.get(subject) or ([],))[0] else "bodies"
                return f"outbox of {subject}: {what} differ: {e.get(subject)} vs {f.get(subject)}"
    return None


SIDES: dict[str, Callable[[list[bytes], Path, int], tuple[float, Outcome]]] = {
    "floor": time_floor, "loose": time_loose}


def alternate(lines: list[bytes], batch: int, reps: int, tmp: Path, label: str,
              engine: Callable[..., tuple[float, Outcome]] = time_engine) -> dict:
    """Engine, tight floor and loose floor in turn, `reps` times, the order rotating; the floors'
    outcomes must agree with the engine's; median rates and ratios."""
    rates: dict[str, list[float]] = {"engine": [], "floor": [], "loose": []}
    ratios: dict[str, list[float]] = {"floor": [], "loose": []}
    order = [("engine", engine), *SIDES.items()]
    for rep in range(reps):
        got = {}
        for name, fn in order[rep % 3:] + order[:rep % 3]:
            db = tmp / f"{label}-{name}-{rep}.db"
            got[name] = fn(lines, db, batch)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        for name in SIDES:
            problem = disagreement(got["engine"][1], got[name][1])
            if problem:
                raise SystemExit(f"{label}: engine and {name} floor disagree: {problem}")
        for name in rates:
            rates[name].append(got[name][0])
        for name in ratios:
            ratios[name].append(got["engine"][0] / got[name][0])
        print(f"  {label} rep {rep + 1}: engine {got['engine'][0]:,.0f}/s, floor {got['floor'][0]:,.0f}/s "
              f"(ratio {ratios['floor'][-1]:.2f}), floor as written so far {got['loose'][0]:,.0f}/s "
              f"(ratio {ratios['loose'][-1]:.2f})", flush=True)
    return {"engine_per_s": statistics.median(rates["engine"]), "floor_per_s": statistics.median(rates["floor"]),
            "loose_per_s": statistics.median(rates["loose"]), "ratio": statistics.median(ratios["floor"]),
            "loose_ratio": statistics.median(ratios["loose"]), "reps": reps, "events": len(lines),
            "per_rep": {"rates": rates, "ratios": ratios}}


def populate(db: Path, leads: int) -> None:
    """A database that already holds `leads` routes, with their facts and accepted inputs (whose
    rows hold the envelopes), in the store's schema-6 tables (a time as microseconds since 1970,
    the config hash as its id in `configs`)."""
    with Engine.open(db=db):
        pass
    conn = sqlite3.connect(db)
    conn.executescript(f"""
        BEGIN;
        INSERT OR IGNORE INTO configs (hash) VALUES ('pre');
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {leads - 1})
        INSERT INTO stored_facts (source, id, type, route_key, identity, data, derived, config, recorded_at)
        SELECT 'client-webinar-tracker-v2', 'pre-' || i, 'client_webinar_entered',
               '["old-' || i || '","old-webinar"]', '["old-' || i || '","old-webinar","2025-01-01T00:00:00Z"]',
               '{{}}', 0, (SELECT id FROM configs WHERE hash = 'pre'), 1735689600000000 FROM n;
        INSERT INTO stored_inputs (status, source, id, type, fact_seq, config, recorded_at, body)
        SELECT 'accepted', source, id, type, seq, config, recorded_at, '{{}}' FROM stored_facts WHERE id LIKE 'pre-%';
        INSERT INTO stored_routes (route_key, state, screen, version, config, created_at, updated_at)
        SELECT route_key, 'in_webinar', 'webinar_room', 1, config, recorded_at, recorded_at FROM stored_facts
        WHERE id LIKE 'pre-%';
        COMMIT;
    """)
    conn.close()


def large_db(lines: list[bytes], leads: int, reps: int, tmp: Path, batch: int) -> dict:
    seed_db = tmp / "seed.db"
    populate(seed_db, leads)
    empty, full = [], []
    for rep in range(reps):
        for name, rates in (("empty", empty), ("full", full)):
            db = tmp / f"large-{name}-{rep}.db"
            if name == "full":
                shutil.copy(seed_db, db)
            rate, _ = time_engine(lines, db, batch, outcome=False)
            rates.append(rate)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        print(f"  large_db rep {rep + 1}: empty {empty[-1]:,.0f}/s, {leads:,} leads stored {full[-1]:,.0f}/s",
              flush=True)
    return {"empty_per_s": statistics.median(empty), "full_per_s": statistics.median(full), "leads": leads,
            "ratio": statistics.median(f / e for f, e in zip(full, empty, strict=True))}


def memory(events: int, tmp: Path) -> dict:
    path = tmp / "memory.jsonl"
    with path.open("w") as out:
        for line in stream(events, events, seed=3, webinars=1000):
            out.write(line + "\n")
    started = time.perf_counter()
    child = subprocess.Popen([CLI, "process", str(path), "--db", str(tmp / "memory.db"), "--batch-size", "1000"],
                             stdout=subprocess.DEVNULL)
    peak_kib = 0
    while child.poll() is None:
        # The child's own high-water mark: ru_maxrss of children would report this (larger)
        # benchmark process's peak too, since Linux keeps it across fork and exec.
        peak_kib = max(peak_kib, _hwm_kib(child.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"memory run failed with exit {child.returncode}")
    print(f"  memory: {events:,} events over ~{events:,} leads, peak RSS {peak_kib / 1024:.0f} MiB, "
          f"{events / elapsed:,.0f}/s", flush=True)
    return {"peak_mib": peak_kib / 1024, "events": events, "events_per_s": events / elapsed}


def _hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def evaluate(leads: int, reps: int, tmp: Path, batch_rate: float) -> dict:
    db = tmp / "evaluate.db"
    entries = [json.dumps({"specversion": "1.0", "id": f"ev-{i}", "source": "client-webinar-tracker-v2",
                           "type": "client_webinar_entered",
                           "data": {"lead_id": f"lead-{i}", "webinar_id": "big-webinar",
                                    "timestamp": "2026-03-01T18:00:00Z"}}).encode() for i in range(leads)]
    with Engine.open(db=db) as eng:
        eng.process_many(entries, batch_size=1000)
    rates = []
    for rep in range(reps):
        with Engine.open(db=db) as eng:
            started = time.perf_counter()
            out = eng.evaluate(webinar_id="big-webinar", at=f"2026-03-0{2 + rep}T00:00:00Z")
            rates.append(len(out) / (time.perf_counter() - started))
        print(f"  evaluate rep {rep + 1}: {rates[-1]:,.0f} leads/s", flush=True)
    rate = statistics.median(rates)
    return {"leads": leads, "leads_per_s": rate, "batch_events_per_s": batch_rate, "ratio": rate / batch_rate}


def startup(reps: int) -> dict:
    """`validate` and `Engine.open` in new interpreters, with the project's bytecode compiled first, as
    an installed package has it: where PYTHONDONTWRITEBYTECODE is set (some CI images and sandboxes),
    every run would otherwise compile each source changed since its .pyc was written (about 3 ms
    each), and the figure would measure the compiler."""
    for package in ("engine", "cli"):
        spec = importlib.util.find_spec(package)
        for where in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(where, quiet=1)

    def once(cmd: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        return time.perf_counter() - started

    validate = statistics.median(once([CLI, "validate", "--config", str(bundled_config())]) for _ in range(reps))
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "s.db")
        code = f"from engine import Engine\nEngine.open(db={db!r}).close()"
        opened = statistics.median(once([sys.executable, "-c", code]) for _ in range(reps))
    print(f"  startup: validate {validate:.3f} s, Engine.open in a new interpreter {opened:.3f} s", flush=True)
    return {"validate_s": validate, "open_s": opened, "worst_s": max(validate, opened)}


def growth(lines: list[bytes], slices: int, tmp: Path, batch: int) -> dict:
    """Throughput per slice of a long stream as the database grows: engine, floor, loose floor."""
    size = len(lines) // slices
    out: dict[str, list[tuple[int, float]]] = {"engine": [], "floor": [], "floor as written so far": []}
    for name in out:
        db = tmp / f"growth-{name.replace(' ', '-')}.db"
        side: Any = (Engine.open(db=db) if name == "engine" else
                     Floor(db, bundled_config()) if name == "floor" else LooseFloor(db, bundled_config()))
        for i in range(slices):
            part = lines[i * size:(i + 1) * size]
            started = time.perf_counter()
            if name == "engine":
                side.process_many(part, batch_size=batch)
            else:
                side.run(part, batch)
            out[name].append(((i + 1) * size, len(part) / (time.perf_counter() - started)))
        side.close()
    return out


def plot(curves: dict[str, list[tuple[int, float]]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib not installed: no plot; pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("events already in the database")
    ax.set_ylabel("events per second (slice)")
    ax.set_title("Throughput as the database grows (batch commits)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    return True


def service_figure(path: Path = SERVICE_RESULTS) -> dict | None:
    """The serve goal's figure, read from bench/service.py's results (this run does not measure
    it): group commit at 32 connections / the engine's process_many rate on the same machine, the
    median of the per-repetition ratios when the file holds them. None when there is no figure."""
    try:
        data = json.loads(path.read_text())
        served = next(r for r in data["runs"] if r["name"] == SERVICE_RUN)
        base = next(e for e in data["engine"] if e["name"] == SERVICE_BASE)
        ratio = served["events_per_s"] / base["events_per_s"]
        machine = data.get("machine", {})
        served_reps = machine.get("per_rep", {}).get(SERVICE_RUN)
        base_reps = machine.get("engine_per_rep", {}).get(SERVICE_BASE) or machine.get("per_rep", {}).get(SERVICE_BASE)
        if served_reps and base_reps:  # as bench/service.py states it: the ratio within each repetition
            ratio = statistics.median(a["events_per_s"] / b["events_per_s"]
                                      for a, b in zip(served_reps, base_reps, strict=False) if b["events_per_s"])
        return {"ratio": ratio, "served_per_s": served["events_per_s"], "batch_per_s": base["events_per_s"],
                "measured": time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))}
    except (OSError, ValueError, KeyError, TypeError, StopIteration, ZeroDivisionError):
        return None


def service_text(service: dict | None) -> str:
    if service is None:
        return "not measured (no bench/service-results.json)"
    return (f"{service['ratio']:.2f}× ({service['served_per_s']:,.0f} vs {service['batch_per_s']:,.0f} events/s; "
            f"from bench/service-results.json of {service['measured']}, not measured by this run)")


def verdicts(results: dict) -> dict[str, tuple[float, float, bool]]:
    """Each goal this run measured: (figure, target, met). The serve goal is shown beside them
    (`render`) but judged by bench/service.py's own run, so it is not among them."""
    got = {"batch": results["batch"]["ratio"], "batch_cli": results["batch_cli"]["ratio"],
           "per_event": results["per_event"]["ratio"],
           "large_db": results["large_db"]["ratio"], "memory_mib": results["memory"]["peak_mib"],
           "evaluate": results["evaluate"]["ratio"], "startup_s": results["startup"]["worst_s"]}
    return {k: (v, GOALS[k][0], met(k, v)) for k, v in got.items()}


def met(goal: str, value: float) -> bool:
    target, higher = GOALS[goal]
    return value >= target if higher else value <= target


def render(results: dict, marks: dict) -> str:
    r = results

    def yes(ok: bool) -> str:
        return "yes" if ok else "no"

    def vs_floors(goal: str) -> tuple[str, str]:
        g = r[goal]
        return (f"{marks[goal][0]:.2f}× ({g['engine_per_s']:,.0f} vs {g['floor_per_s']:,.0f} events/s)",
                f"{g['loose_ratio']:.2f}× ({g['loose_per_s']:,.0f} events/s)")

    service = r.get("service")
    rows = [
        "| goal | measured | target | met | engine / floor as written so far |",
        "|---|---:|---:|:---:|---:|",
        f"| batch throughput, engine / floor | {vs_floors('batch')[0]} | ≥ 0.6× | {yes(marks['batch'][2])} | "
        f"{vs_floors('batch')[1]} |",
        f"| batch through `webinar-flows process` (start-up, reading, result lines included), engine / floor | "
        f"{vs_floors('batch_cli')[0]} | ≥ 0.6× | {yes(marks['batch_cli'][2])} | {vs_floors('batch_cli')[1]} |",
        f"| commit per event, engine / floor | {vs_floors('per_event')[0]} | ≥ 0.7× | {yes(marks['per_event'][2])} | "
        f"{vs_floors('per_event')[1]} |",
        f"| {r['large_db']['leads']:,} leads stored / empty database | {marks['large_db'][0]:.2f}× "
        f"({r['large_db']['full_per_s']:,.0f} vs {r['large_db']['empty_per_s']:,.0f} events/s) | ≥ 0.8× | "
        f"{yes(marks['large_db'][2])} | |",
        f"| peak RSS, {r['memory']['events']:,} events over as many leads | {marks['memory_mib'][0]:.0f} MiB | "
        f"≤ 100 MiB | {yes(marks['memory_mib'][2])} | |",
        f"| evaluate per lead / batch per event ({r['evaluate']['leads']:,} leads) | {marks['evaluate'][0]:.2f}× "
        f"({r['evaluate']['leads_per_s']:,.0f} leads/s) | ≥ 0.5× | {yes(marks['evaluate'][2])} | |",
        f"| start-up (validate; Engine.open in a new interpreter) | {r['startup']['validate_s']:.2f} s; "
        f"{r['startup']['open_s']:.2f} s | ≤ 0.3 s | {yes(marks['startup_s'][2])} | |",
        f"| `serve` with group commit at 32 connections / batch rate | {service_text(service)} | ≥ 0.5× | "
        f"{'—' if service is None else yes(met('service', service['ratio']))} | |",
    ]
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"SQLite {sqlite3.sqlite_version}")
    return (f"{START}\nMeasured {time.strftime('%Y-%m-%d')} on {machine} by `make bench` "
            f"({r['args']}). The floor is the tight floor of bench/floor.py; the last column is the floor "
            f"as written until issue 12.\n\n" + "\n".join(rows) + f"\n{END}")


def serve_only() -> int:
    """The serve row refreshed after `python bench/service.py`, which is run on its own (it takes
    minutes and measures another process); everything else stays the last full run's."""
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    results["service"] = service_figure()
    marks = verdicts(results)
    print(f"service      {service_text(results['service'])}; target ≥ 0.5×")
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + render(results, marks) + tail)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check, not the figures")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave bench/results.json and docs/ alone")
    parser.add_argument("--serve-only", action="store_true",
                        help="measure nothing: take the serve figure from a newer bench/service-results.json "
                             "into bench/results.json and the table, the other figures as the last full run left them")
    args = parser.parse_args(argv)
    if args.serve_only:
        return serve_only()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    sizes = {"batch": (10_000, 1_000) if quick else (100_000, 10_000),
             "per_event": (2_000, 200) if quick else (10_000, 1_000),
             "large_leads": 20_000 if quick else 1_000_000, "large_events": 5_000 if quick else 50_000,
             "memory": 20_000 if quick else 1_000_000, "evaluate": 5_000 if quick else 100_000}
    results: dict = {"args": f"{'--quick, ' if quick else ''}{reps} repetition(s)", "sizes": sizes}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        print("batch (commit every 1000 events):", flush=True)
        results["batch"] = alternate(lines_of(*sizes["batch"]), 1000, reps, tmp, "batch")
        print("batch through the command line (webinar-flows process, commit every 1000 events):", flush=True)
        results["batch_cli"] = alternate(lines_of(*sizes["batch"]), 1000, reps, tmp, "batch_cli", engine=time_cli)
        print("per event (commit per event):", flush=True)
        results["per_event"] = alternate(lines_of(*sizes["per_event"]), 1, reps, tmp, "per_event")
        print("large database:", flush=True)
        results["large_db"] = large_db(lines_of(sizes["large_events"], 5_000, seed=9), sizes["large_leads"], reps,
                                       tmp, 1000)
        print("memory:", flush=True)
        results["memory"] = memory(sizes["memory"], tmp)
        print("evaluate:", flush=True)
        results["evaluate"] = evaluate(sizes["evaluate"], reps, tmp, results["batch"]["engine_per_s"])
        print("start-up:", flush=True)
        results["startup"] = startup(5)
        print("growth (for the plot):", flush=True)
        results["growth"] = growth(lines_of(*sizes["batch"], seed=13), 10, tmp, 1000)
    results["service"] = service_figure()
    marks = verdicts(results)
    print("\ngoal         measured   target   met   (engine / floor as written so far)")
    for name, (value, target, ok) in marks.items():
        loose = f"   ({results[name]['loose_ratio']:.2f})" if "loose_ratio" in results.get(name, {}) else ""
        print(f"{name:<12} {value:>8.2f}   {target:>6}   {'yes' if ok else 'NO '}{loose}")
    print(f"service      {service_text(results['service'])}; target ≥ 0.5×")
    if quick:
        # At these sizes the database is small and the fixed costs of each side dominate: the
        # ratios are not the goals' (which are measured at full size), only a smoke check that
        # the benchmark runs and engine and floor agree.
        print("\n--quick: small sizes, a smoke check only; the goals are judged by the full run (make bench)")
        return 0
    if not args.no_write:
        (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        text = DOC.read_text()
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        DOC.write_text(head + render(results, marks) + tail)
        plot(results["growth"])
    return 0 if all(m[2] for m in marks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
