"""The outbox as a feed (docs/consuming.md: what a consumer receives, and the feed):
exactly a consumer's kinds and types, cursors per consumer, `--reset` repeating the same ids,
commit order per route key, `--follow` and its SIGTERM, and a property test of random
interleavings of processing, feeding and acking, on SQLite and on the memory store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_consumers_config import with_consumers

from engine import Engine, EngineError, UsageError, load_config
from engine.model import Config
from engine.store.memory import MemoryStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.generate import stream

WF = Path(sys.executable).with_name("webinar-flows")
EVERYTHING = """consumers:
  reminder-sender:
    receives:
      actions: [reminder]
      events: [post_webinar_route]
  screen-mirror:
    receives:
      actions: [route, screen]
  attendance-reporter:
    receives:
      events: [client_webinar_attendance_classified, post_webinar_route]
  everything:
    receives:
      actions: [route, screen, reminder]
      events: [client_webinar_attendance_classified, post_webinar_route]
"""


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_consumers(tmp_path_factory.mktemp("outbox") / "config", EVERYTHING)


@pytest.fixture(scope="module")
def config(config_dir: Path) -> Config:
    return load_config(config_dir)


def lines(n: int, leads: int, seed: int = 5) -> list[bytes]:
    return [line.encode() for line in stream(n, leads, webinars=2, seed=seed)]


def expected(results: list[dict[str, Any]], types: frozenset[str]) -> dict[str, list[tuple[str, str | None]]]:
    """Per subject, the (type, id) a consumer of `types` must receive, from `process`'s own results:
    commit order; within one event derived events first, then actions (an action's id is None:
    the outbox gives it)."""
    per_key: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for r in results:
        if r["status"] != "accepted":
            continue
        for e in r["emitted"]:
            if e["type"] in types:
                per_key[f"{e['data']['lead_id']}/{e['data']['webinar_id']}"].append((e["type"], e["id"]))
        for a in r["actions"]:
            if "action." + a["type"] in types:
                per_key[f"{r['route']['lead_id']}/{r['route']['webinar_id']}"].append(("action." + a["type"], None))
    return dict(per_key)


def by_key(items: list[dict[str, Any]]) -> dict[str, list[tuple[str, str | None]]]:
    per_key: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for item in items:
        per_key[item["subject"]].append((item["type"], item["id"]))
    return dict(per_key)


def same_order(got: dict[str, list[tuple[str, str | None]]], want: dict[str, list[tuple[str, str | None]]]) -> None:
    assert set(got) == set(want)
    for key, seq in want.items():
        assert [t for t, _ in got[key]] == [t for t, _ in seq], key
        assert all(w is None or g == w for (_, g), (_, w) in zip(got[key], seq, strict=True)), key


def drain(engine: Engine, consumer: str, limit: int = 7) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(100_000):
        items, cursor = engine.feed(consumer, limit)
        engine.ack(consumer, cursor)
        out += items
        if len(items) < limit:
            return out
    raise AssertionError("the feed never ended")


@pytest.fixture(params=["sqlite", "memory"])
def make_engine(request: pytest.FixtureRequest, tmp_path: Path, config: Config) -> Any:
    engines: list[Engine] = []

    def make() -> Engine:
        engine = Engine(config, MemoryStore()) if request.param == "memory" else Engine.open(config, tmp_path / "o.db")
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


# ---------------------------------------------------------------- what a consumer receives

def test_each_consumer_receives_exactly_its_kinds_and_types_in_key_order(make_engine: Any, config: Config) -> None:
    engine = make_engine()
    results = engine.process_many(lines(600, 30))
    every = drain(engine, "everything", limit=10_000)
    assert {i["type"] for i in every} == set(config.consumers["everything"].types)
    assert len({i["id"] for i in every}) == len(every)  # every item its own id
    engine.ack("everything", "")
    for name, spec in config.consumers.items():
        got = drain(engine, name)
        assert {i["type"] for i in got} <= set(spec.types)
        same_order(by_key(got), expected(results, spec.types))
        for item in got:
            assert item["specversion"] == "1.0" and item["time"] and item["subject"].count("/") == 1
            if item["type"].startswith("action."):
                assert item["source"] == "scenario" and item["data"]["type"] == item["type"][len("action."):]


def test_cursors_are_per_consumer_and_reset_repeats_the_same_ids(make_engine: Any) -> None:
    engine = make_engine()
    engine.process_many(lines(300, 10))
    first, cursor = engine.feed("screen-mirror", 5)
    engine.ack("screen-mirror", cursor)
    assert engine.feed("reminder-sender", 3)[0] == engine.feed("reminder-sender", 3)[0]  # feed never moves it
    rest = drain(engine, "screen-mirror")
    assert engine.backlog("screen-mirror") == 0
    everything = drain(engine, "reminder-sender")
    assert everything and engine.backlog("reminder-sender") == 0
    engine.ack("screen-mirror", "")  # --reset
    again = drain(engine, "screen-mirror", limit=1000)
    assert [i["id"] for i in again] == [i["id"] for i in first + rest]
    assert again == first + rest
    assert drain(engine, "reminder-sender") == []  # the other consumer did not move


def test_an_items_time_is_its_transactions_commit_time(make_engine: Any) -> None:
    engine = make_engine()
    events = lines(400, 20)
    engine.process_many(events[:200], batch_size=200)  # one transaction
    in_one = engine.backlog("everything")
    engine.process_many(events[200:], batch_size=1)  # a transaction per event
    times = [item["time"] for item in drain(engine, "everything", limit=10_000)]
    assert in_one > 10 and len(set(times[:in_one])) == 1
    assert len(set(times[in_one:])) > 10


@pytest.mark.parametrize("backend", ["sqlite", "memory", "postgres"])
def test_a_cursor_no_feed_gave_is_refused_and_skips_nothing(backend: str, config: Config, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    """A cursor past the newest item would skip every item committed up to it: ack and feed
    refuse it, as they refuse a malformed one, and the stored cursor stays where it was."""
    if backend == "memory":
        engine = Engine(config, MemoryStore())
    else:
        engine = Engine.open(config, request.getfixturevalue("pg_url") if backend == "postgres" else tmp_path / "c.db")
    with engine:
        with pytest.raises(UsageError, match="past the newest item"):  # an empty outbox: only "" is a cursor
            engine.ack("screen-mirror", "3" if backend != "postgres" else "3.3")
        engine.process_many(lines(120, 6))
        first, head = engine.feed("screen-mirror", 1000)
        assert first
        if backend != "postgres":
            past = str(int(head) + 5)
            bad = [past, "0" + head, "\u0665"]
        else:
            tx, seq = head.split(".")
            past = f"{tx}.{int(seq) + 5}"
            bad = [past, f"{int(tx) + 10}.{seq}", f"0{tx}.{seq}", f"{tx}.\u0665"]
        with pytest.raises(UsageError, match="not an outbox cursor"):
            engine.ack("screen-mirror", None)  # type: ignore[arg-type]
        for cursor in [*bad, 5]:
            with pytest.raises(UsageError, match="not an outbox cursor"):
                engine.ack("screen-mirror", cursor)
            with pytest.raises(UsageError, match="not an outbox cursor"):
                engine.feed("screen-mirror", 10, cursor=cursor)
        assert engine.backlog("screen-mirror") == len(first)  # nothing moved
        engine.ack("screen-mirror", head)
        engine.process_many(lines(120, 6, seed=9))
        later, _ = engine.feed("screen-mirror", 1000)
        assert later and engine.backlog("screen-mirror") == len(later)  # none of the later items skipped


def test_order_per_route_key_under_interleaved_leads(make_engine: Any, config: Config) -> None:
    engine = make_engine()
    all_results: list[dict[str, Any]] = []
    batches = [lines(400, 40, seed=s) for s in (1, 2, 3)]
    for step in range(0, 400, 37):  # three streams' events interleaved in slices
        for batch in batches:
            all_results += engine.process_many(batch[step:step + 37])
    got = drain(engine, "everything", limit=13)
    same_order(by_key(got), expected(all_results, config.consumers["everything"].types))


def test_unknown_consumer_is_an_error(make_engine: Any) -> None:
    from engine.api import UnknownConsumer

    engine = make_engine()
    for call in (lambda: engine.feed("nobody"), lambda: engine.ack("nobody", ""), lambda: engine.backlog("nobody")):
        with pytest.raises(UnknownConsumer):
            call()


# ---------------------------------------------------------------- the command line

def test_feed_command(run_cli: Any, config_dir: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    data = b"\n".join(lines(200, 8)) + b"\n"
    assert run_cli("process", "--config", str(config_dir), "--db", db, input=data).exit_code == 0

    def feed(*args: str) -> list[dict[str, Any]]:
        out = run_cli("feed", *args, "--config", str(config_dir), "--db", db)
        assert out.exit_code == 0, out.output
        return [json.loads(line) for line in out.stdout.splitlines()]

    peek = feed("screen-mirror", "--no-ack", "--limit", "3")
    assert len(peek) == 3 and feed("screen-mirror", "--no-ack", "--limit", "3") == peek  # --no-ack: cursor stays
    head = feed("screen-mirror", "--limit", "3")
    assert head == peek
    tail = feed("screen-mirror")
    assert tail and not {i["id"] for i in tail} & {i["id"] for i in head}
    assert feed("screen-mirror") == []
    assert feed("screen-mirror", "--reset") == []
    assert [i["id"] for i in feed("screen-mirror")] == [i["id"] for i in head + tail]
    unknown = run_cli("feed", "nobody", "--config", str(config_dir), "--db", db)
    assert unknown.exit_code == 1 and "nobody" in unknown.output


def test_unknown_consumer_exit_1_from_the_console_script(config_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}
    done = subprocess.run([str(WF), "feed", "nobody", "--config", str(config_dir), "--db", str(tmp_path / "u.db")],
                          capture_output=True, env=env, timeout=60, check=False)
    assert done.returncode == 1 and b"nobody" in done.stderr and b"Traceback" not in done.stderr
    missing = subprocess.run([str(WF), "feed", "everything", "--config", str(config_dir), "--db",
                              str(tmp_path / "mistyped.db")], capture_output=True, env=env, timeout=60, check=False)
    assert missing.returncode == 1 and b"does not exist" in missing.stderr
    assert not (tmp_path / "mistyped.db").exists()  # feed reads: it makes no database


def test_retrying_an_undeclared_consumers_deliveries_is_refused(make_engine: Any) -> None:
    engine = make_engine()
    with pytest.raises(EngineError, match="no consumer 'nobody'"):
        engine.retry_deliveries(consumer="nobody")
    assert engine.retry_deliveries(consumer="everything") == 0


def test_follow_prints_items_as_they_commit_and_exits_0_on_sigterm(config_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "follow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}
    engine = Engine.open(load_config(config_dir), db)
    try:
        engine.process_many(lines(100, 5, seed=1))
        before = len(drain(engine, "everything"))
        engine.ack("everything", "")
        follow = subprocess.Popen([str(WF), "feed", "everything", "--follow", "--config", str(config_dir),
                                   "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            seen: list[dict[str, Any]] = []
            os.set_blocking(follow.stdout.fileno(), False)  # type: ignore[union-attr]
            buffer = b""

            def read_until(count: int) -> None:
                nonlocal buffer
                deadline = time.monotonic() + 30
                while len(seen) < count and time.monotonic() < deadline:
                    chunk = follow.stdout.read() or b""  # type: ignore[union-attr]
                    buffer += chunk
                    *done, buffer = buffer.split(b"\n")
                    seen.extend(json.loads(line) for line in done if line)
                    time.sleep(0.05)

            read_until(before)
            assert len(seen) == before
            more = engine.process_many(lines(60, 5, seed=2))
            added = sum(len(r["emitted"]) + len(r["actions"]) for r in more if r["status"] == "accepted")
            assert added
            read_until(before + added)  # printed as they commit, while still running
            assert len(seen) == before + added and follow.poll() is None
            follow.send_signal(signal.SIGTERM)
            assert follow.wait(timeout=15) == 0
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait(timeout=10)
        assert engine.backlog("everything") == 0  # what it printed was acknowledged
        assert len({i["id"] for i in seen}) == len(seen)
    finally:
        engine.close()


# ---------------------------------------------------------------- random interleavings

@pytest.mark.parametrize("backend", ["sqlite", "memory"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_acknowledged_union_is_the_outbox_in_key_order(backend: str, config: Config, tmp_path: Path,
                                                       data: st.DataObject) -> None:
    """Random interleavings of processing (several leads' events), feeding (random limits)
    and acking (sometimes not: the items come again, with the same ids): the union of what the
    consumer acknowledged is the outbox for its kinds, in per-key order, with no id missing."""
    events = lines(data.draw(st.integers(20, 160), label="events"), data.draw(st.integers(1, 8), label="leads"),
                   seed=data.draw(st.integers(0, 10_000), label="seed"))
    consumer = data.draw(st.sampled_from(sorted(config.consumers)), label="consumer")
    if backend == "memory":
        engine = Engine(config, MemoryStore())
    else:
        path = tmp_path / f"p{time.monotonic_ns()}.db"
        engine = Engine.open(config, path)
    try:
        results: list[dict[str, Any]] = []
        acknowledged: list[dict[str, Any]] = []
        done = 0
        for _ in range(400):
            action = data.draw(st.sampled_from(["process", "feed", "feed"]))
            if action == "process" and done < len(events):
                step = data.draw(st.integers(1, 12))
                results += engine.process_many(events[done:done + step])
                done += step
            elif action == "feed":
                items, cursor = engine.feed(consumer, data.draw(st.integers(1, 9)))
                if data.draw(st.booleans()):
                    engine.ack(consumer, cursor)
                    acknowledged += items
            if done >= len(events) and engine.backlog(consumer) == 0:
                break
        results += engine.process_many(events[done:])
        acknowledged += drain(engine, consumer, limit=data.draw(st.integers(1, 9)))
        want = expected(results, config.consumers[consumer].types)
        same_order(by_key(acknowledged), want)
        assert len(acknowledged) == sum(map(len, want.values()))
        # ...and it is the outbox itself: a fresh read from the beginning gives the same ids
        everything, _ = engine.feed(consumer, 100_000, cursor="")
        assert [i["id"] for i in everything] == [i["id"] for i in acknowledged]
    finally:
        engine.close()
