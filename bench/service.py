"""The service benchmark: `webinar-flows serve` under concurrent signed posts.

    python bench/service.py            # full run (about ten minutes: 3 repetitions), rewrites
                                       # docs/service-performance.md and bench/service-results.json
    python bench/service.py --quick    # a smoke check: short runs, writes nothing

What it measures, each configuration on a fresh database and a fresh server process:
- group commit (the default, up to 500 events per transaction) against one commit per
  request (`serve --commit-events 1`), 32 concurrent connections each posting one signed
  structured event at a time, with `--synchronous FULL` (the default: an fsync per commit) and NORMAL (no fsync
  per commit);
- the same at 256 connections (FULL);
- batched mode, 100 events per request, at 32 and 256 connections;
- the engine alone on the same events: `Engine.process_many` in-process, 500 per commit.

Figures: acknowledged events/s and requests/s, latency p50/p99 of requests answered 200,
non-200 answers by status (a 503 is the full queue refusing work: it is counted, not retried),
the server's CPU (from /proc/PID/stat; its event loop thread apart from the others, the writer
chief among them), the whole machine's busy CPU (from /proc/stat) and its load average, so a
noisy machine shows in the figures instead of hiding in them.

The load comes from two client processes, each an asyncio event loop (uvloop when installed)
with one keep-alive socket per simulated sender. Every request is signed and serialised to the
bytes that go on the wire before the clock starts; a sender writes one, reads the whole answer,
checks its status, counts a 200 and its events, and only then writes the next. The client does
as little Python work per request as it can, because it shares the two cores with the server:
the goal is the server's rate, not the client's. Server and clients still share the machine:
the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import stream  # noqa: E402
from engine import Engine  # noqa: E402
from service.keys import new_secret  # noqa: E402

CLI = str(Path(sys.executable).parent / "webinar-flows")
DOC = ROOT / "docs" / "service-performance.md"
TRACKER = "client-webinar-tracker-v2"
CLIENT_PROCESSES = 2


# -- events and requests -------------------------------------------------------------------

def tracker_events(count: int, seed: int) -> list[bytes]:
    """Valid tracker events from the seeded generator (redeliveries kept: they are real traffic)."""
    out: list[bytes] = []
    leads = max(10, count // 5)
    for line in stream(int(count * 1.4) + 100, leads, seed=seed):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("source") == TRACKER:
            out.append(line.encode())
            if len(out) == count:
                break
    return out


def _lead(line: bytes) -> str:
    return json.loads(line)["data"].get("lead_id") or ""


def per_connection(lines: list[bytes], connections: int, batch: int) -> list[list[tuple[bytes, int]]]:
    """Each connection's bodies, a lead's events all on one connection and in order."""
    queues: list[list[bytes]] = [[] for _ in range(connections)]
    for line in lines:
        queues[zlib.crc32(_lead(line).encode()) % connections].append(line)
    out = []
    for queue in queues:
        if batch == 1:
            out.append([(line, 1) for line in queue])
        else:
            out.append([(b"[" + b",".join(queue[i:i + batch]) + b"]", len(queue[i:i + batch]))
                        for i in range(0, len(queue), batch)])
    return out


def sign(key: bytes, body: bytes, n: int) -> dict[str, str]:
    msg_id, ts = f"msg_bench_{os.getpid()}_{n}", str(int(time.time()))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + base64.b64encode(mac).decode()}


# -- the load: a few client processes, each an event loop with one keep-alive socket per sender --

def _requests(port: int, path: str, key: bytes, content_type: str, queue: list[tuple[bytes, int]],
              base: int) -> list[tuple[bytes, int]]:
    """Each request as the bytes that go on the wire (head and body), signed beforehand."""
    out = []
    for j, (body, n) in enumerate(queue):
        h = sign(key, body, base + j)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nwebhook-id: {h['webhook-id']}\r\n"
                f"webhook-timestamp: {h['webhook-timestamp']}\r\nwebhook-signature: {h['webhook-signature']}\r\n\r\n")
        out.append((head.encode() + body, n))
    return out


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one whole response; its status and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep = b"connection: close" not in lower
    at = lower.find(b"content-length:")
    if at >= 0:
        length = int(lower[at + 15:lower.index(b"\r\n", at)])
        if length:
            await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        keep = False
    return status, keep


async def _sender(port: int, requests: list[tuple[bytes, int]], stop_at: float, latencies: list[float],
                  statuses: dict[int, int], events: list[int]) -> None:
    """One simulated sender: its requests back to back on one keep-alive connection, each
    answer read whole and its status checked before the next request goes."""
    connection = None
    for wire, n in requests:
        if time.time() >= stop_at:
            break
        t0 = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(wire)
            status, keep = await asyncio.wait_for(_answer(reader), 60)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, keep = 0, False
        elapsed = time.perf_counter() - t0
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies.append(elapsed)
            events[0] += n
        if not keep and connection is not None:
            connection[1].close()
            connection = None
    if connection is not None:
        connection[1].close()


def _client(port: int, path: str, key: bytes, content_type: str, queues: list[list[tuple[bytes, int]]],
            start_at: float, seconds: float, out: mp.Queue, base: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    prepared = [_requests(port, path, key, content_type, queue, base + i * 1_000_000) for i, queue in enumerate(queues)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    events = [0]
    while time.time() < start_at:
        time.sleep(0.001)
    cpu = time.process_time()

    async def main() -> None:
        await asyncio.gather(*(_sender(port, requests, start_at + seconds, latencies, statuses, events)
                               for requests in prepared))

    asyncio.run(main())
    out.put({"latencies": latencies, "statuses": statuses, "events": events[0], "cpu": time.process_time() - cpu})


def _cpu_ticks(pid: int | None = None) -> float:
    """Seconds of CPU: a process's (utime + stime) or the whole machine's busy time."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[i] for i in (0, 1, 2, 5, 6)) / hz  # user, nice, system, irq, softirq


def _steal_ticks() -> float:
    """Seconds the machine's virtual CPUs were ready but the host ran something else (steal):
    not any process's, so it is neither the server's nor "other processes"."""
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(values[7]) if len(values) > 7 else 0) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """A process's child processes (the writer process of `serve`), from /proc; the tests use it too."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _server_ticks(pid: int) -> tuple[float, float]:
    """Seconds of CPU of the server: its own process, and its child processes (the writer's)."""
    children = 0.0
    for child in child_pids(pid):
        try:
            children += _cpu_ticks(child)
        except OSError:  # it exited between the listing and the read
            pass
    return _cpu_ticks(pid), children


def _loop_thread_ticks(pid: int) -> float:
    """Seconds of CPU of a process's main thread (the event loop's; the writer is another thread)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_healthy(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("serve did not become healthy")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(workdir: Path, name: str, lines: list[bytes], *, connections: int, batch: int, seconds: float,
               serve_args: list[str]) -> dict:
    """One configuration: a fresh server and database, `connections` senders for `seconds`."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    keys = workdir / "keys.toml"
    keys.write_text(f'[keys.bench]\nemitter = "{TRACKER}"\nsecrets = ["{secret}"]\nbatch = true\nrate = 1000000\n')
    keys.chmod(0o600)
    port = _free_port()
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--keys", str(keys),
                             "--db", str(workdir / "service.db"), "--max-connections", "2048", *serve_args],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        _wait_healthy(port, proc)
        key = base64.b64decode(secret[len("whsec_"):])
        queues = per_connection(lines, connections, batch)
        content_type = "application/cloudevents-batch+json" if batch > 1 else "application/cloudevents+json"
        out: mp.Queue = mp.Queue()
        start_at = time.time() + 2.0 + connections * 0.004  # time for the clients to sign everything
        workers = [mp.Process(target=_client, args=(port, "/v1/ingest/bench", key, content_type,
                                                   queues[i::CLIENT_PROCESSES], start_at, seconds, out, i * 100_000_000))
                   for i in range(CLIENT_PROCESSES)]
        for w in workers:
            w.start()
        while time.time() < start_at:
            time.sleep(0.001)
        loop_cpu = _loop_thread_ticks(proc.pid)
        (server_cpu, child_cpu), machine_cpu, wall = _server_ticks(proc.pid), _cpu_ticks(), time.perf_counter()
        steal = _steal_ticks()
        load_before = os.getloadavg()[0]
        parts = [out.get(timeout=seconds + 120) for _ in workers]
        wall = time.perf_counter() - wall
        server_after, child_after = _server_ticks(proc.pid)
        server_cpu, child_cpu, machine_cpu = server_after - server_cpu, child_after - child_cpu, _cpu_ticks() - machine_cpu
        steal = _steal_ticks() - steal
        loop_cpu = _loop_thread_ticks(proc.pid) - loop_cpu
        server_cpu += child_cpu
        for w in workers:
            w.join(timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    latencies = sorted(x for p in parts for x in p["latencies"])
    statuses: dict[str, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    events = sum(p["events"] for p in parts)
    if any(k not in ("200", "400", "503") for k in statuses):  # a server error or a dropped connection
        errors = [line for line in (workdir / "serve.log").read_text(errors="replace").splitlines()
                  if not line.startswith('{"time"')]
        print(f"{name}: unexpected answers {statuses}; the server's log:\n" + "\n".join(errors[-40:]),
              file=sys.stderr)
    if not latencies:
        raise RuntimeError(f"{name}: no request answered 200 ({statuses}); see {workdir / 'serve.log'}")
    cores = os.cpu_count() or 1
    client_cpu = sum(p["cpu"] for p in parts)
    foreign = max(0.0, machine_cpu - server_cpu - client_cpu)
    return {
        "name": name, "connections": connections, "events_per_request": batch, "serve_args": serve_args,
        "seconds": round(wall, 2), "events_per_s": round(events / wall), "requests_per_s": round(len(latencies) / wall),
        "p50_ms": round(_pct(latencies, 50) * 1000, 2), "p99_ms": round(_pct(latencies, 99) * 1000, 2),
        "statuses": statuses, "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "server_cpu_us_per_event": round(1e6 * server_cpu / max(1, events), 1),
        "loop_thread_cpu_us_per_event": round(1e6 * loop_cpu / max(1, events), 1),
        "writer_process_cpu_us_per_event": round(1e6 * child_cpu / max(1, events), 1),
        "other_threads_cpu_us_per_event": round(1e6 * (server_cpu - child_cpu - loop_cpu) / max(1, events), 1),
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "foreign_cpu_pct_of_machine": round(100 * foreign / wall / cores, 1),
        "steal_pct_of_machine": round(100 * steal / wall / cores, 1),
        "machine_busy_pct": round(100 * machine_cpu / wall / cores, 1), "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def _pct(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def median_run(results: list[dict]) -> dict:
    """One configuration over its repetitions: the median of each figure, statuses summed,
    the worst foreign CPU and each figure's range kept beside it."""
    out = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in results]
            out[key] = statistics.median(values)
            out[f"{key}_range"] = (min(values), max(values))
    if "statuses" in out:
        statuses: dict[str, int] = {}
        for r in results:
            for k, v in r["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        out["statuses"] = statuses
    for worst in ("foreign_cpu_pct_of_machine", "steal_pct_of_machine"):
        if worst in out:
            out[worst] = max(r.get(worst, 0.0) for r in results)
    out["reps"] = len(results)
    return out


def engine_rate(workdir: Path, lines: list[bytes], synchronous: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / f"engine-{synchronous}.db"
    machine_cpu, wall = _cpu_ticks(), time.perf_counter()
    with Engine.open(config=None, db=db, synchronous=synchronous) as engine:
        started, cpu = time.perf_counter(), time.process_time()
        engine.process_many(lines, batch_size=500)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    wall = time.perf_counter() - wall
    return {"name": f"engine process_many, 500 per commit, {synchronous}", "events": len(lines),
            "events_per_s": round(len(lines) / elapsed), "cpu_us_per_event": round(1e6 * cpu / len(lines), 1),
            "machine_busy_pct": round(100 * (_cpu_ticks() - machine_cpu) / wall / (os.cpu_count() or 1), 1)}


# -- the whole run ---------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, write nothing (a smoke check)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per configuration")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions; configurations alternate within each, the median is kept (default 3)")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    workdir = Path(tempfile.mkdtemp(prefix="wf-bench-service-"))
    machine = {"python": platform.python_version(), "cores": os.cpu_count(), "platform": platform.platform(),
               "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(machine), flush=True)
    n = 25_000 if args.quick else 120_000
    single = tracker_events(n, seed=11)
    batched = tracker_events(n * 3, seed=12)
    plans = [
        ("group commit, 32 conns, FULL", single, 32, 1, []),
        ("group commit, 32 conns, FULL, writer in a thread", single, 32, 1, ["--writer", "thread"]),
        ("one commit per request, 32 conns, FULL", single, 32, 1, ["--commit-events", "1"]),
        ("group commit, 32 conns, NORMAL", single, 32, 1, ["--synchronous", "NORMAL"]),
        ("one commit per request, 32 conns, NORMAL", single, 32, 1, ["--commit-events", "1", "--synchronous", "NORMAL"]),
        ("group commit, 256 conns, FULL", single, 256, 1, []),
        ("one commit per request, 256 conns, FULL", single, 256, 1, ["--commit-events", "1"]),
        ("batched 100/request, group commit, 32 conns, FULL", batched, 32, 100, []),
        ("batched 100/request, group commit, 256 conns, FULL", batched, 256, 100, []),
    ]
    if args.quick:
        plans = [plans[0], plans[1], plans[2], plans[7]]
    every: dict[str, list[dict]] = {name: [] for name, *_ in plans}
    engine_runs: dict[str, list[dict]] = {}
    try:
        for rep in range(reps):
            # The engine first, then the configurations starting with group commit at 32 connections:
            # the two sides of goal (b) run back to back, so a machine whose speed drifts (a shared
            # host) bends both alike.
            for sync in ("NORMAL", "FULL"):
                e = engine_rate(workdir / f"engine-{rep}", single[:n if args.quick else 60_000], sync)
                engine_runs.setdefault(e["name"], []).append(e)
                print(json.dumps({"rep": rep, **e}), flush=True)
            for i, (name, lines, conns, batch, serve_args) in enumerate(plans):
                result = run_config(workdir / f"run-{rep}-{i}", name, lines, connections=conns, batch=batch,
                                    seconds=seconds, serve_args=serve_args)
                every[name].append(result)
                print(json.dumps({"rep": rep, **result}), flush=True)
        runs = [median_run(results) for results in every.values()]
        engine = [median_run(results) for results in engine_runs.values()]
        machine["reps"] = reps
        machine["seconds_per_run"] = seconds
        machine["per_rep"] = every
        machine["engine_per_rep"] = engine_runs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.quick:
        print("quick run: nothing written", file=sys.stderr)
        return
    (ROOT / "bench" / "service-results.json").write_text(json.dumps({"machine": machine, "runs": runs,
                                                                      "engine": engine}, indent=1) + "\n")
    DOC.write_text(render(machine, runs, engine))
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


def render(machine: dict, runs: list[dict], engine: list[dict]) -> str:
    per_rep = machine.get("per_rep", {})

    def ratio(a: str, b: str, field: str = "events_per_s") -> str:
        """The median of the ratios within each repetition (both sides ran minutes apart at most)."""
        if a not in per_rep or b not in per_rep:
            return "n/a"
        ratios = sorted(x[field] / y[field] for x, y in zip(per_rep[a], per_rep[b], strict=True) if y[field])
        if not ratios:
            return "n/a"
        return f"{statistics.median(ratios):.2f}× (reps: {', '.join(f'{r:.2f}' for r in ratios)})"

    engine_per_rep = machine.get("engine_per_rep", {})

    def engine_ratio(a: str, synchronous: str) -> str:
        """A configuration's events/s over process_many's in the same repetition, the median over repetitions."""
        engine_name = f"engine process_many, 500 per commit, {synchronous}"
        if a not in per_rep or engine_name not in engine_per_rep:
            return "n/a"
        ratios = sorted(x["events_per_s"] / y["events_per_s"]
                        for x, y in zip(per_rep[a], engine_per_rep[engine_name], strict=False) if y["events_per_s"])
        if not ratios:
            return "n/a"
        return f"{statistics.median(ratios):.2f}× (reps: {', '.join(f'{r:.2f}' for r in ratios)})"

    def cpu_ratio(cheap: list[dict], costly: list[dict], cheap_field: str, costly_field: str) -> str:
        ratios = sorted(y[costly_field] / x[cheap_field] for x, y in zip(cheap, costly, strict=False) if x[cheap_field])
        if not ratios:
            return "n/a"
        return f"{statistics.median(ratios):.2f}× (reps: {', '.join(f'{r:.2f}' for r in ratios)})"

    def cpu_goal_a(synchronous: str) -> str:
        group, one = (per_rep.get(f"{kind}, 32 conns, {synchronous}", [])
                      for kind in ("group commit", "one commit per request"))
        return cpu_ratio(group, one, "server_cpu_us_per_event", "server_cpu_us_per_event")

    def cpu_goal_b(synchronous: str) -> str:
        group = per_rep.get(f"group commit, 32 conns, {synchronous}", [])
        engine_reps = engine_per_rep.get(f"engine process_many, 500 per commit, {synchronous}", [])
        return cpu_ratio(group, engine_reps, "server_cpu_us_per_event", "cpu_us_per_event")

    def median_of(text: str) -> float | None:
        return float(text.split("×")[0]) if "×" in text else None

    goal_a = ratio("group commit, 32 conns, NORMAL", "one commit per request, 32 conns, NORMAL")
    goal_a_full = ratio("group commit, 32 conns, FULL", "one commit per request, 32 conns, FULL")
    goal_b = engine_ratio("group commit, 32 conns, NORMAL", "NORMAL")
    goal_b_full = engine_ratio("group commit, 32 conns, FULL", "FULL")
    goal_b_mixed = engine_ratio("group commit, 32 conns, FULL", "NORMAL")

    def verdict_of(text: str, goal: float) -> str:
        value = median_of(text)
        return "n/a" if value is None else ("**met**" if value >= goal else "not met")

    rows = [("| configuration | events/s | requests/s | p50 ms | p99 ms | non-200 answers | server CPU % | "
             "server CPU µs/event (loop thread + writer process + other threads) | clients CPU % | other processes, % of machine | "
             "load 1m before → after |"),
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        other = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()) if k != "200")
        split = (f" ({r['loop_thread_cpu_us_per_event']} + {r.get('writer_process_cpu_us_per_event', 0.0)} + "
                 f"{r['other_threads_cpu_us_per_event']})"
                 if "loop_thread_cpu_us_per_event" in r else "")
        rows.append(f"| {r['name']} | {r['events_per_s']:,} | {r['requests_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
                    f"{other or 'none'} | {r['server_cpu_pct']} | {r['server_cpu_us_per_event']}{split} | "
                    f"{r['client_cpu_pct']} | {r['foreign_cpu_pct_of_machine']} | "
                    f"{r['load_avg_1m_before']} → {r['load_avg_1m_after']} |")
    engine_rows = [f"| {e['name']} | {e['events']:,} | {e['events_per_s']:,} | {e['cpu_us_per_event']} | "
                   f"{e['machine_busy_pct']} |" for e in engine]
    worst = max((r["foreign_cpu_pct_of_machine"] for r in runs), default=0.0)
    verdict = (f"**Other processes took up to {worst}% of the machine during these runs: the absolute figures are "
               f"contaminated.** The per-event server CPU column and the ratios within one run are the more "
               f"reliable figures; rerun on a quiet machine for absolute ones." if worst > 10 else
               f"Other processes took at most {worst}% of the machine during these runs (a quiet machine).")
    steal = max((r.get("steal_pct_of_machine", 0.0) for r in runs), default=0.0)
    verdict += (f" The host took up to {steal}% of the machine as steal (its virtual CPUs waiting for the host: "
                f"counted neither as the server's nor as other processes').")
    return f"""# Service performance: `webinar-flows serve`

Figures from `python bench/service.py` (`bench/service.py` says how it measures). Each row is one
fresh server process and database; clients are {CLIENT_PROCESSES} processes on the same machine, each
connection posting signed requests back to back on one keep-alive connection; latency is per request
answered 200, measured by the client. Server and clients share {machine['cores']} cores, so the
"machine busy" column is the share of the whole machine in use: near 100% means the figures are bounded
by the machine, not by the server alone.

Machine: {machine['platform']}, Python {machine['python']}, {machine['cores']} cores; load average
(1, 5, 15 min) {machine['load_avg_at_start']} at the start, {machine['load_avg_at_end']} at the end.
{machine.get('reps', 1)} repetitions of {machine.get('seconds_per_run')} s per configuration, the configurations
alternating within each; a figure is the median of its repetitions, a ratio the median of the
ratios within each repetition; "other processes" is the worst repetition's.

{verdict}

<!-- bench-service:start -->
Against the goals of issue 10 (32 connections, signed single events; each ratio is taken within
one repetition, both sides measured minutes apart at most, and the median over repetitions kept):

| goal | ratio | goal | verdict |
|---|---|---|---|
| (a) group commit ÷ one commit per request, FULL (the default) | {goal_a_full} | 2.5× | {verdict_of(goal_a_full, 2.5)} |
| (a) group commit ÷ one commit per request, NORMAL | {goal_a} | 2.5× | {verdict_of(goal_a, 2.5)} |
| (b) group commit, FULL (the default) ÷ engine process_many, NORMAL (the CLI's default) | {goal_b_mixed} | 0.5× | {verdict_of(goal_b_mixed, 0.5)} |
| (b) group commit ÷ engine process_many, both FULL | {goal_b_full} | 0.5× | {verdict_of(goal_b_full, 0.5)} |
| (b) group commit ÷ engine process_many, both NORMAL | {goal_b} | 0.5× | {verdict_of(goal_b, 0.5)} |

The same ratios from CPU time instead of wall-clock rates: what one event costs in CPU (the
server's process, its threads and its writer process added up), so less bent by other processes
taking the machine than a rate is. They are costs, not rates: with the writer in a process of its
own the server runs on two cores, and its rate is bounded by the busier of the event loop thread
and the writer process, not by their sum; under FULL an fsync is waiting, not CPU, so there the
CPU ratio also understates what group commit saves:

| goal | from CPU per event | goal |
|---|---|---|
| (a) server CPU per event, one commit per request ÷ group commit, NORMAL | {cpu_goal_a("NORMAL")} | 2.5× |
| (a) the same, FULL | {cpu_goal_a("FULL")} | 2.5× |
| (b) process_many's CPU per event ÷ the server's under group commit, NORMAL | {cpu_goal_b("NORMAL")} | 0.5× |
| (b) the same, FULL | {cpu_goal_b("FULL")} | 0.5× |

| other ratios | value |
|---|---|
| group commit ÷ one commit per request, 256 conns, FULL (events/s) | {ratio("group commit, 256 conns, FULL", "one commit per request, 256 conns, FULL")} |
| group commit, 32 conns, FULL: writer in its own process (the default) ÷ writer in a thread (events/s) | {ratio("group commit, 32 conns, FULL", "group commit, 32 conns, FULL, writer in a thread")} |
| batched 100/request at 32 conns, FULL ÷ engine process_many, NORMAL (events/s) | {engine_ratio("batched 100/request, group commit, 32 conns, FULL", "NORMAL")} |

{chr(10).join(rows)}

The engine alone on the same single events (in-process, no HTTP, no signature):

| run | events | events/s | CPU µs/event | machine busy % |
|---|---|---|---|---|
{chr(10).join(engine_rows)}
<!-- bench-service:end -->

How to read it:
- "one commit per request" is the same server started with `--commit-events 1`: the writer then takes
  one request per transaction, which is what a server without group commit does.
- A 400 in "non-200 answers" is one of the generator's deliberately invalid events (about 0.5% of its
  lines are): the service stores it as a rejection and says so; it is not an error of the server.
- A 503 in "non-200 answers" is the writer's queue (default 5,000 events) refusing work under the
  offered load, with `Retry-After`; the bench counts it and does not retry it. With 256 connections
  × 100 events per request far more is offered than the queue holds, so 503s are expected there.
- "other processes" is the machine's busy CPU (from /proc/stat) minus the server's and the clients'
  own CPU, as a share of all cores: anything above ~10% means another job competed for the machine.
- "server CPU µs/event" divides the server's CPU time by the events it acknowledged: it shows what
  group commit saves per event even when the machine is shared.
- Under `NORMAL` a commit does not fsync in WAL mode, so one commit costs little and group
  commit buys less than under `FULL`, where each commit is an fsync.
- "loop thread + writer process + other threads": the server's event loop thread does the HTTP work
  (parsing, signature, body, hand-off to the writer, the answer, the log line, the metrics); the
  writer process (`serve --writer process`, the default) runs the engine: validation, rules, SQL,
  the commit; the other threads are chiefly the server's writer thread, which sends each request's
  events to the writer process as they are queued, and the thread that receives the process's
  answers and settles the requests. With `--writer thread` the engine runs on the writer
  thread, in the server process: the writer process column is 0, and as one GIL serves both, the
  process runs at most one core's worth of Python and its rate is about 1 / (the columns added
  up) per event.

## Where a request's time goes, and what was changed (December 2026)

Before: about 1.1-1.2 ms of server CPU per single-event request (0.8-0.9 ms of it in the loop
thread) against about 0.25 ms per event inside `process_many`. A py-spy profile of the server under
load (32 connections) showed the time in uvicorn's pure-Python h11 parser, Starlette's router,
`Request`, `Response` and exception middleware around every request, a logging record and a write to
stderr per request, `labels()` per metric per request, one thread-safe wake-up of the event loop per
request from the writer, and socket writes during which the writer thread took the GIL. Changes,
each measured by alternating before and after within one run on the shared machine (the load
average was 1 to 8 while measuring, so compare within a row; server CPU per event, lower is better):

| change | before → after |
|---|---|
| httptools and uvloop instead of h11 and asyncio (`service/server.py`) | 1,093 and 1,005 → 728 and 792 µs/event |
| `POST /v1/ingest` as plain ASGI in front of the router; the writer settles a transaction's requests with one call into the loop; the log lines of one loop turn in one write; cached metric children (`service/app.py`, `writer.py`, `accesslog.py`, `metrics.py`) | 728-792 → 430-550 µs/event |
| an answer's head and body in one socket write (`service/server.py`) | loop thread 264 and 233 → 233 and 238 µs/event |
| all of it: the service code before against after, the same engine, 3 repetitions | 1,181, 1,455, 814 → 549, 681, 418 µs/event; loop thread 779, 888, 538 → 238, 291, 186; 436, 396, 644 → 1,147, 729, 1,206 events/s |
| tried and dropped: `sys.setswitchinterval` 1 ms and 20 ms instead of 5 ms | 463 and 585 → 510 and 599 (1 ms), 623 and 644 (20 ms): no gain |
| tried and dropped: `gc.freeze()` and a generation-0 threshold of 50,000 | 463 and 585 → 483 and 586: no gain |

What is left in the loop thread (a native profile): the socket write of each answer (a system call
that also delivers to the client on loopback) about a sixth, uvloop's polling and reads about a
fifth, and hand-overs of the GIL with the writer thread, which waits for the GIL about a fifth of
its own time; the Python of the request itself is now the smaller part.

Goal (a) under `NORMAL`: the engine alone gains only about 1.7× from 500-event transactions
over one-event transactions (4,529 against 2,629 events/s in one run; under `FULL`, 5,784
against 1,398, 4.1×), because without an fsync a commit costs little. Group commit's other gain
is outside the engine: one wake-up of the event loop per transaction instead of one per request,
which the loop thread's CPU per event under `--commit-events 1` shows.

Goal (a) after the pipe: "one commit per request" is the same server with `--commit-events 1`, so
the pipe made it faster too (906 → 1,456 events/s under FULL): its writer process no longer waits
for the server between transactions either. On this disk an fdatasync costs about 60 µs (strace),
so what group commit saves is the cost of a transaction in the writer process (the message, BEGIN
and COMMIT, the WAL pages a lone event dirties): 508 against 255 µs of its CPU per event, 2.0×,
and the measured ratio follows (2.02× at 32 connections, 2.20× at 256). Where a commit's fsync
costs milliseconds the ratio would be far higher; that was not measured here.

Several server processes (`serve --workers N`) were considered and not built: each would have
its own writer, the writers would take turns on SQLite's write lock (BEGIN IMMEDIATE, whose busy
handler sleeps in steps of milliseconds while the other holds it) and each transaction would hold
fewer events. What was built instead keeps one writer and moves only its engine out of the server
process (`service/engine_process.py`): the event loop keeps a core for HTTP and the engine gets
the other, while the queue, the group commit, the metrics and the rate buckets stay where they
were. The row "writer in a thread" above is the arrangement before it (`--writer thread`).

The pipe (later the same day). With one transaction's message out at a time, the writer process
waited between transactions while the server took its answer (a thread waking for the GIL),
settled it, took the queue and pickled the next message: at 32 connections it sat idle about a
sixth of the time even on a loaded machine. Now the server's writer thread sends each turn of
the loop's requests at once, a second thread settles the answers, and the process starts each
transaction with every message waiting in its pipe (`service/writer.py`); the thread is woken
once per turn of the event loop instead of once per request. Group commit, 32 connections, FULL,
the same engine, three alternating repetitions on a quiet machine (no steal; the host's speed
drifted between repetitions, so compare within a column):

| server | events/s (rep 1, 2, 3) | server CPU µs/event (rep 1, 2, 3) |
|---|---|---|
| one message at a time (before) | 2,998, 3,401, 2,683 | 416, 370, 461 |
| the pipe, a wake-up per request | 3,443, 3,383, 2,699 | 383, 390, 510 |
| the pipe, a wake-up per turn of the loop (now) | 3,479, 3,742, 2,413 | 361, 342, 516 |

A gain of about a tenth in two repetitions of three and none in the third. Timestamps taken in
both processes (one run, 32 connections) then showed where the writer process still waited: a
request queued by the loop reached the pipe 1.2 ms later at the median (3.2 ms at the 90th
percentile), because the woken writer thread first waited for the GIL that the busy loop thread
held, and every answer woke the writer thread for nothing; the process sat idle 29% of the time.
Now the loop's thread sends a turn's requests itself when the pipe takes them at once (a
non-blocking send of at most 32 KiB; the writer thread only sends what is left, and jobs), and an
answer wakes nobody but a stopping writer. Beside the step before, three alternating repetitions
on a host whose speed drifted by a third between runs: 3,031, 2,256, 2,258 → 2,426, 2,384, 2,705
events/s; the writer process's share of a core (events/s × its CPU per event) went from 0.66-0.68
to 0.68-0.71. The rest of the wait is the round trip of each request through the event loop,
which costs about as much CPU per request (~150-230 µs: uvloop's reads and polling, the socket
write of the answer, the HTTP parse, the signature) as the engine per event: at 32 closed-loop
connections the loop and the writer process take turns more than they overlap, and neither core
is saturated (the machine stays about 72% busy).

The ceiling of goal (a) on this machine (measured late on 3 December, a shared host). The engine
alone, in one process, `synchronous=FULL`, on the benchmark's tracker events, in transactions of
22 events (the mean group at 32 connections, from `webinar_flows_commit_batch_size`) against one
event per transaction: 6,120 against 2,241, 6,474 against 2,383 and 6,386 against 2,334 events/s,
**2.73×**. With one event per transaction FULL adds about 185 µs of wall time to each (446 against
262 µs per event under NORMAL): the fdatasync of the WAL's new frames and of the file's growth,
not the 60 µs of a bare fdatasync measured before. So a server that fed its writer process
perfectly would reach about 2.7× at this group size. The service reaches about 85% of the engine's
rate with one commit per request and about 73% with group commit, where the writer process is busy
92% of the time (a sampling profile counting idle time) and runs the same transactions about a
tenth slower than in one process (it shares the two cores with the event loop and the load's
clients). Four runs of 8 s that evening: 2.51×, 2.15×, 2.33×, 2.12×. What raises the ceiling is a
lower cost per event in the engine, the cost per transaction staying what it is on both sides: a
fifth less per event would put it near 3.1×. That is issue 12's work (fewer index pages per
event, less Python per event), not the server's.
"""


if __name__ == "__main__":
    main()
