"""Push delivery (docs/consuming.md: push): items POSTed to a receiver on
127.0.0.1 as signed structured CloudEvents (checked with the standardwebhooks library), the
retry rules (2xx, 503 + Retry-After, 400, 410), per-key order with a retried item holding back
its key only, two deliverers on one database, `deliver`/`deliveries` through the console
script, and SIGKILLs of `deliver` mid-delivery: no item lost, duplicates only with the same id.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from test_consumers_config import with_consumers
from test_outbox import EVERYTHING, lines

from engine import Engine, load_config
from engine.model import Config
from service.delivery import Deliverer
from service.keys import PushTarget, new_secret, parse_secret

WF = Path(sys.executable).with_name("webinar-flows")
SECRET = new_secret()
FAST = (0.2, 0.2, 0.2)  # a retry schedule for tests: four attempts in all


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops concurrent connects (a second's SYN retry each)


class Receiver:
    """A consumer's endpoint on 127.0.0.1: records each request and answers as `script` says
    (script(item, attempt) -> (status, headers)); by default 204 at once."""

    def __init__(self, script: Callable[[dict[str, Any], int], tuple[int, dict[str, str]]] | None = None,
                 delay: float = 0.0):
        self.script = script or (lambda item, attempt: (204, {}))
        self.delay = delay
        self.got: list[dict[str, Any]] = []  # every request: item, headers, answer, at
        self.lock = threading.Lock()
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(SECRET).verify(body, headers)
                except Exception:  # noqa: BLE001  (any refusal is a bad signature)
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                item = json.loads(body)
                with receiver.lock:
                    attempt = sum(1 for g in receiver.got if g["item"]["id"] == item["id"]) + 1
                    status, extra = receiver.script(item, attempt)
                    receiver.got.append({"item": item, "headers": headers, "status": status, "at": time.monotonic()})
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ok_ids(self) -> list[str]:
        with self.lock:
            return [g["item"]["id"] for g in self.got if 200 <= g["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_consumers(tmp_path_factory.mktemp("delivery") / "config", EVERYTHING)


@pytest.fixture(scope="module")
def config(config_dir: Path) -> Config:
    return load_config(config_dir)


def outbox(engine: Engine, consumer: str) -> list[dict[str, Any]]:
    return engine.feed(consumer, 1_000_000, cursor="")[0]


def per_key(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each subject's ids in the order first received (a duplicate repeats an id already seen)."""
    keys: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if item["id"] not in keys[item["subject"]]:
            keys[item["subject"]].append(item["id"])
    return dict(keys)


def deliverer(config: Config, db: Path, url: str, consumer: str = "everything", **kw: Any) -> Deliverer:
    return Deliverer(lambda: Engine.open(config, db), {consumer: PushTarget(consumer, url, (parse_secret(SECRET),))},
                     **{"schedule": FAST, "timeout": 5.0, **kw})


def run_once(d: Deliverer, seconds: float = 30) -> None:
    """Rounds until nothing is due now and nothing waits for a retry (bounded)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            d.run(once=True)
            engine = d._open_engine()
            try:
                waiting = sum(engine.delivery_state(name)["pending"] for name in d.targets)
                disabled = any(engine.delivery_state(name)["disabled"] for name in d.targets)
            finally:
                engine.close()
            if not waiting or disabled:
                return
            time.sleep(0.05)
        raise AssertionError("deliveries did not settle")
    finally:
        d.stop(timeout=0)


@pytest.fixture
def processed(tmp_path: Path, config: Config) -> tuple[Path, list[dict[str, Any]]]:
    db = tmp_path / "d.db"
    with Engine.open(config, db) as engine:
        engine.process_many(lines(300, 12, seed=4))
        items = outbox(engine, "everything")
        engine.close()
    assert len(items) > 50
    return db, items


# ---------------------------------------------------------------- the rules, in process

def test_every_item_arrives_signed_as_a_structured_cloudevent_in_key_order(receiver, config, processed) -> None:
    db, items = processed
    r = receiver()
    run_once(deliverer(config, db, r.url))
    assert r.bad_signatures == 0
    assert sorted(r.ok_ids()) == sorted(i["id"] for i in items) and len(r.got) == len(items)
    assert per_key([g["item"] for g in r.got]) == per_key(items)
    for got in r.got:
        assert got["headers"]["content-type"] == "application/cloudevents+json"
        assert got["headers"]["webhook-id"] == got["item"]["id"]
    assert {g["item"]["id"]: g["item"] for g in r.got} == {i["id"]: i for i in items}  # the item, byte for byte
    with Engine.open(config, db) as engine:
        state = engine.delivery_state("everything")
        assert (state["pending"], state["failed"], state["done"], state["not_taken"]) == (0, 0, len(items), 0)
        engine.close()


def test_503_with_retry_after_then_success(receiver, config, processed) -> None:
    db, items = processed
    first = items[0]["id"]
    r = receiver(lambda item, attempt: (503, {"Retry-After": "1"}) if item["id"] == first and attempt == 1
                 else (200, {}))
    run_once(deliverer(config, db, r.url, schedule=(30, 30)))  # Retry-After, not the schedule, sets the wait
    tries = [g for g in r.got if g["item"]["id"] == first]
    assert [t["status"] for t in tries] == [503, 200]
    assert tries[1]["at"] - tries[0]["at"] >= 0.9
    assert sorted(set(r.ok_ids())) == sorted(i["id"] for i in items)
    with Engine.open(config, db) as engine:
        [row] = [d for d in engine.deliveries("everything") if d["id"] == first]
        assert (row["status"], row["attempts"], row["last_status"]) == ("done", 2, 200)
        engine.close()


def test_retry_after_longer_than_a_short_schedule_is_still_honoured(receiver, config, processed) -> None:
    db, items = processed
    first = items[0]["id"]
    r = receiver(lambda item, attempt: (429, {"Retry-After": "2"}) if item["id"] == first and attempt == 1
                 else (200, {}))
    run_once(deliverer(config, db, r.url, schedule=(0.2, 0.2)))  # the cap is 10 h, not the schedule's longest
    tries = [g for g in r.got if g["item"]["id"] == first]
    assert [t["status"] for t in tries] == [429, 200]
    assert tries[1]["at"] - tries[0]["at"] >= 1.9


def test_a_retried_item_holds_back_its_key_only(receiver, config, processed) -> None:
    db, items = processed
    held = items[0]
    r = receiver(lambda item, attempt: (500, {}) if item["id"] == held["id"] and attempt <= 2 else (200, {}))
    d = deliverer(config, db, r.url, schedule=(1.5, 1.5, 1.5))
    d.run(once=True)  # the first round: everything due now
    same_key = [i["id"] for i in items if i["subject"] == held["subject"]]
    received = {g["item"]["id"] for g in r.got}
    assert received & set(same_key) == {held["id"]}  # later items of its key wait
    others = {i["id"] for i in items if i["subject"] != held["subject"]}
    assert others <= received  # other keys went on
    run_once(d)
    assert [g["status"] for g in r.got if g["item"]["id"] == held["id"]] == [500, 500, 200]
    assert per_key([g["item"] for g in r.got]) == per_key(items)


def test_400_fails_the_item_which_deliveries_lists_and_retry_sends_again(receiver, config, config_dir, processed,
                                                                         run_cli) -> None:
    db, items = processed
    bad = items[0]
    answer = {"status": 400}
    r = receiver(lambda item, attempt: (answer["status"], {}) if item["id"] == bad["id"] else (200, {}))
    run_once(deliverer(config, db, r.url))
    assert [g["status"] for g in r.got if g["item"]["id"] == bad["id"]] == [400]  # never retried
    assert set(r.ok_ids()) == {i["id"] for i in items} - {bad["id"]}  # later items of its key went on

    def cli(*args: str) -> list[dict[str, Any]]:
        out = run_cli("deliveries", *args, "--config", str(config_dir), "--db", str(db))
        assert out.exit_code == 0, out.output
        return [json.loads(line) for line in out.stdout.splitlines()]

    [failed] = cli("--failed")
    assert (failed["id"], failed["status"], failed["attempts"], failed["last_status"]) == (bad["id"], "failed", 1, 400)
    assert failed["last_answer"].startswith("HTTP 400")
    assert len(cli()) == len(items)
    answer["status"] = 200
    assert cli("--retry", bad["id"]) == []
    assert cli("--failed") == []
    run_once(deliverer(config, db, r.url))
    assert [g["status"] for g in r.got if g["item"]["id"] == bad["id"]] == [400, 200]
    missing = run_cli("deliveries", "--retry", "no-such-id", "--config", str(config_dir), "--db", str(db))
    assert missing.exit_code == 1


def test_410_disables_the_consumer_until_enabled(receiver, config, config_dir, processed, run_cli) -> None:
    db, items = processed
    gone = {"on": True}
    r = receiver(lambda item, attempt: (410, {}) if gone["on"] else (200, {}))
    untouched = run_cli("deliveries", "--enable", "everything", "--config", str(config_dir), "--db", str(db))
    assert untouched.exit_code == 0 and "was not disabled: nothing changed" in untouched.stderr
    d = deliverer(config, db, r.url)
    d.run(once=True)
    d.run(once=True)
    assert [g["status"] for g in r.got] == [410]  # the first of a round goes alone: nothing more after the 410
    listed = run_cli("deliveries", "--config", str(config_dir), "--db", str(db))
    assert json.loads(listed.stdout.splitlines()[0])["status"] == "disabled"
    gone["on"] = False
    enabled = run_cli("deliveries", "--enable", "everything", "--config", str(config_dir), "--db", str(db))
    assert enabled.exit_code == 0 and "enabled delivery to everything" in enabled.stderr
    run_once(deliverer(config, db, r.url))
    assert set(r.ok_ids()) == {i["id"] for i in items}
    assert per_key([g["item"] for g in r.got]) == per_key(items)


def test_attempts_exhausted_fail_the_item(receiver, config, processed) -> None:
    db, items = processed
    r = receiver(lambda item, attempt: (503, {}) if item["id"] == items[0]["id"] else (200, {}))
    run_once(deliverer(config, db, r.url, schedule=(0.1, 0.1)))
    assert [g["status"] for g in r.got if g["item"]["id"] == items[0]["id"]] == [503, 503, 503]
    with Engine.open(config, db) as engine:
        assert [d["id"] for d in engine.deliveries(failed=True)] == [items[0]["id"]]
        engine.close()


def test_refused_connections_are_retried(config, processed, receiver) -> None:
    db, _ = processed
    d = deliverer(config, db, "http://127.0.0.1:9/nothing-listens", schedule=(0.1, 60))
    d.run(once=True)
    with Engine.open(config, db) as engine:
        rows = engine.deliveries("everything")
        assert rows and all(r["status"] == "pending" and r["last_status"] is None for r in rows if r["attempts"])
        assert any(r["attempts"] == 1 for r in rows)
        engine.close()
    d.stop(timeout=0)


def test_two_deliverers_on_one_database_keep_each_key_in_order(receiver, config, tmp_path) -> None:
    db = tmp_path / "two.db"
    engine = Engine.open(config, db)
    r = receiver(delay=0.002)
    stop = threading.Event()
    both = [deliverer(config, db, r.url), deliverer(config, db, r.url)]
    threads = [threading.Thread(target=d.run, args=(stop,), daemon=True) for d in both]
    for t in threads:
        t.start()
    try:
        for part in range(4):  # items keep committing while both deliver
            engine.process_many(lines(150, 10, seed=20 + part))
            time.sleep(0.2)
        items = outbox(engine, "everything")
        deadline = time.monotonic() + 60
        while set(r.ok_ids()) != {i["id"] for i in items} and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for d in both:
            d.stop(timeout=0)
        engine.close()
    assert set(r.ok_ids()) == {i["id"] for i in items}
    assert per_key([g["item"] for g in r.got]) == per_key(items)


def test_metrics_count_attempts_backlog_and_failures(receiver, config, processed) -> None:
    from service.metrics import Metrics

    db, items = processed
    r = receiver(lambda item, attempt: (400, {}) if item["id"] == items[0]["id"] else (200, {}))
    metrics = Metrics(config, "test", lambda: 0)
    run_once(deliverer(config, db, r.url, metrics=metrics))
    text = metrics.exposition().decode()
    assert f'webinar_flows_delivery_attempts_total{{consumer="everything",outcome="done"}} {len(items) - 1}.0' in text
    assert 'webinar_flows_delivery_attempts_total{consumer="everything",outcome="failed"} 1.0' in text
    assert 'webinar_flows_delivery_failed{consumer="everything"} 1.0' in text
    assert 'webinar_flows_delivery_backlog{consumer="everything"} 0.0' in text
    assert items[0]["id"] not in text and "lead-" not in text


# ---------------------------------------------------------------- the console script

def keys_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(f'[consumers.everything]\nurl = "{url}"\nsecrets = ["{SECRET}"]\ntokens = ["tok-everything"]\n')
    path.chmod(0o600)
    return path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}


def test_deliver_once_and_sigterm(receiver, config, config_dir, processed, tmp_path) -> None:
    db, items = processed
    r = receiver()
    keys = keys_file(tmp_path, r.url)
    args = [str(WF), "deliver", "--keys", str(keys), "--config", str(config_dir), "--db", str(db)]
    done = subprocess.run([*args, "--once"], capture_output=True, env=env(), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(r.ok_ids()) == sorted(i["id"] for i in items)
    running = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    try:
        with Engine.open(config, db) as engine:
            engine.process_many(lines(60, 4, seed=99))
            more = outbox(engine, "everything")
            engine.close()
        deadline = time.monotonic() + 30
        while len(set(r.ok_ids())) < len(more) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(r.ok_ids()) == {i["id"] for i in more}  # delivered as they commit
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=15) == 0
    finally:
        if running.poll() is None:
            running.kill()
            running.wait(10)
    bad = tmp_path / "bad.toml"
    bad.write_text('[consumers.nobody]\nurl = "ftp://x"\nsecrets = ["whsec_short"]\n')
    bad.chmod(0o600)
    refused = subprocess.run([str(WF), "deliver", "--keys", str(bad), "--config", str(config_dir), "--db", str(db)],
                             capture_output=True, env=env(), timeout=60, check=False)
    assert refused.returncode == 1 and b"nobody" in refused.stderr and b"url" in refused.stderr
    assert b"Traceback" not in refused.stderr


def test_sigkill_of_deliver_mid_delivery_loses_nothing(receiver, config, config_dir, tmp_path, figure) -> None:
    db = tmp_path / "kill.db"
    with Engine.open(config, db) as engine:
        engine.process_many(lines(3000, 150, seed=11))
        items = outbox(engine, "everything")
        engine.close()
    r = receiver(delay=0.01)
    keys = keys_file(tmp_path, r.url)
    args = [str(WF), "deliver", "--keys", str(keys), "--config", str(config_dir), "--db", str(db)]
    rng = random.Random(5)
    kills = landed = 0
    deadline = time.monotonic() + 120
    while kills < 20 and time.monotonic() < deadline:
        before = len(r.got)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        try:
            start = time.monotonic()
            while len(r.got) == before and time.monotonic() - start < 20:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        kills += 1
        if len(r.got) > before and len(set(r.ok_ids())) < len(items):
            landed += 1  # it had sent, and had more to send
    figure("deliver_kills", kills)
    figure("deliver_kills_mid_delivery", landed)
    assert kills >= 20 and landed >= 20, (kills, landed)
    final = subprocess.run([*args, "--once"], capture_output=True, env=env(), timeout=120, check=False)
    assert final.returncode == 0, final.stderr
    got = [g["item"] for g in r.got]
    assert {i["id"] for i in got} == {i["id"] for i in items}  # none lost
    by_id = {i["id"]: i for i in items}
    assert all(g == by_id[g["id"]] for g in got)  # a duplicate is the same item with the same id
    assert per_key(got) == per_key(items)  # first arrivals in commit order per key
    figure("deliver_items", len(items))
    figure("deliver_duplicates", len(got) - len(items))


# ---------------------------------------------------------------- the store methods, every backend

@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from engine.store import open_store
    from engine.store.memory import MemoryStore

    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        s = open_store(tmp_path / "s.db")
        yield s
        s.close()
        return
    from pg import fresh_database

    with fresh_database() as url:
        s = open_store(url)
        yield s
        s.close()


def test_delivery_store_methods(store: Any) -> None:
    with store.transaction():
        assert store.take_lease("c", "a", 100.0, 160.0)
    with store.transaction():
        assert not store.take_lease("c", "b", 150.0, 210.0)  # held by a until 160
        assert store.take_lease("c", "a", 150.0, 210.0)  # renewed by its holder
    with store.transaction():
        assert store.take_lease("c", "b", 211.0, 270.0)  # expired: taken over
    cursor = store.outbox_after("", frozenset({"x"}), 10)[1]
    with store.transaction():
        store.enqueue_deliveries("c", [("i1", "t", "k1", "{}"), ("i2", "t", "k1", "{}"), ("i3", "t", "k2", "{}")],
                                 cursor, "2026-01-01T00:00:00Z")
        store.enqueue_deliveries("c", [("i1", "t", "k1", "{}")], cursor, "2026-01-01T00:00:00Z")  # skipped
    assert [r["id"] for r in store.deliveries("c", ("pending",), 10)] == ["i1", "i2", "i3"]
    assert store.delivery_consumer("c")["cursor"] == cursor
    with store.transaction():
        store.update_delivery("c", "i1", "failed", 1, 0.0, 400, "HTTP 400", "2026-01-01T00:00:01Z")
        store.update_delivery("c", "i3", "done", 1, 0.0, 204, "HTTP 204", "2026-01-01T00:00:01Z")
    assert store.delivery_counts() == {("c", "failed"): 1, ("c", "pending"): 1, ("c", "done"): 1}
    [failed] = store.deliveries(None, ("failed",), 10)
    assert (failed["id"], failed["attempts"], failed["last_status"], failed["last_answer"]) == ("i1", 1, 400, "HTTP 400")
    with store.transaction():
        assert store.retry_deliveries("c", "nope", "2026-01-01T00:00:02Z") == 0
        assert store.retry_deliveries(None, "i1", "2026-01-01T00:00:02Z") == 1
    assert [r["id"] for r in store.deliveries("c", ("pending",), 10)] == ["i1", "i2"]
    with store.transaction():
        store.set_disabled("c", "HTTP 410", "2026-01-01T00:00:03Z")
    assert store.delivery_consumer("c")["disabled_reason"] == "HTTP 410"
    with store.transaction():
        store.set_disabled("c", None, "2026-01-01T00:00:04Z")
    assert store.delivery_consumer("c")["disabled_at"] is None
    with pytest.raises(RuntimeError), store.transaction():  # a rollback undoes it all
        store.update_delivery("c", "i2", "done", 1, 0.0, 200, "", "x")
        raise RuntimeError
    assert [r["status"] for r in store.deliveries("c", ("pending", "done", "failed"), 10)] == \
        ["pending", "pending", "done"]


def test_push_on_postgresql(receiver, config, pg_url) -> None:
    with Engine.open(config, pg_url) as engine:
        engine.process_many(lines(200, 8, seed=6))
        items = outbox(engine, "everything")
        engine.close()
    r = receiver(lambda item, attempt: (503, {"Retry-After": "0"}) if item["id"] == items[0]["id"] and attempt == 1
                 else (200, {}))
    d = Deliverer(lambda: Engine.open(config, pg_url),
                  {"everything": PushTarget("everything", r.url, (parse_secret(SECRET),))}, schedule=FAST)
    run_once(d)
    assert set(r.ok_ids()) == {i["id"] for i in items}
    assert per_key([g["item"] for g in r.got]) == per_key(items)
