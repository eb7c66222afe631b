"""The service's pieces without a server: the verifier against the standardwebhooks library,
the token bucket, the writer's group commit, and the app built in-process by its factory."""

from __future__ import annotations

import base64
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2`; the httpx the project pins works
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

from conftest import entered
from serverkit import count_wakes, signed, structured, write_keys

from engine import bundled_config, load_config
from service.app import create_app
from service.auth import verify
from service.keys import load_keys, new_secret, parse_secret
from service.limits import TokenBuckets
from service.settings import Settings
from service.writer import QueueFull, Writer, WriterClosed

NOW = 1_800_000_000


def _signature(secret: str, msg_id: str, at: int, body: bytes) -> bytes:
    moment = datetime.fromtimestamp(at, tz=UTC)
    return Webhook(secret).sign(msg_id, moment, body.decode("utf-8")).encode()


def test_signatures_made_by_standardwebhooks_verify_and_nothing_else_does() -> None:
    secret, other = new_secret(), new_secret()
    body = '{"name": "Zoë", "x": 1}'.encode()
    sig = _signature(secret, "msg_1", NOW, body)
    keys = [parse_secret(secret)]
    assert verify(keys, b"msg_1", str(NOW).encode(), sig, body, NOW)
    assert verify([parse_secret(other), *keys], b"msg_1", str(NOW).encode(), b"v1,Zm9v " + sig, body, NOW)
    assert not verify(keys, b"msg_1", str(NOW).encode(), sig, body + b" ", NOW)
    assert not verify(keys, b"msg_2", str(NOW).encode(), sig, body, NOW)
    assert not verify([parse_secret(other)], b"msg_1", str(NOW).encode(), sig, body, NOW)
    assert not verify(keys, b"msg_1", str(NOW).encode(), sig.replace(b"v1,", b"v2,"), body, NOW)


@pytest.mark.parametrize(("offset", "ok"), [(-301, False), (-300, True), (0, True), (299, True), (301, False)])
def test_the_timestamp_window_is_300_seconds_both_ways(offset: int, ok: bool) -> None:
    secret = new_secret()
    sig = _signature(secret, "m", NOW + offset, b"{}")
    assert verify([parse_secret(secret)], b"m", str(NOW + offset).encode(), sig, b"{}", NOW) is ok


@pytest.mark.parametrize(("msg_id", "timestamp", "signature"), [
    (b"a.b", None, None), (b"x" * 256, None, None), (b"", None, None),
    (None, b"1800000000.5", None), (None, b"-1", None), (None, b"nan", None), (None, b"1e9", None),
    (None, None, b"garbage"), (None, None, b"v1,!!!"), (None, None, b""),
])
def test_hostile_headers_fail_without_raising(msg_id, timestamp, signature) -> None:
    secret = new_secret()
    good = _signature(secret, "m", NOW, b"{}")
    assert not verify([parse_secret(secret)], msg_id if msg_id is not None else b"m",
                      timestamp if timestamp is not None else str(NOW).encode(),
                      signature if signature is not None else good, b"{}", NOW)
    assert not verify([parse_secret(secret)], b"m", str(NOW).encode(), good, b"\xff\xfe", NOW)


def test_the_bucket_holds_twice_the_rate_and_refills() -> None:
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert [buckets.take("k", 2, 4) for _ in range(4)] == [0, 0, 0, 0]
    assert buckets.take("k", 2, 4) == pytest.approx(0.5)
    assert buckets.take("other", 2, 4) == 0
    now[0] = 0.5
    assert buckets.take("k", 2, 4) == 0 and buckets.take("k", 2, 4) > 0


class _SlowEngine:
    """Stands in for the engine: records each transaction's size, holds the first until released."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.closed = False

    def process_many(self, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
        assert batch_size >= len(items)  # one transaction for the whole group
        self.release.wait(10)
        self.batches.append(len(items))
        return [{"item": item} for item in items]

    def close(self) -> None:
        self.closed = True


def test_the_writer_commits_whatever_queued_during_the_previous_commit_in_one_transaction() -> None:
    engine = _SlowEngine()
    writer = Writer(lambda: engine, capacity=50, max_batch=8)  # type: ignore[arg-type, return-value]
    writer.start()
    first = writer.submit([0])
    deadline = time.monotonic() + 5
    while writer.depth and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer took the first request and is in its (held) transaction
    waiting = [writer.submit([i, i]) for i in range(1, 7)]  # 12 events queued while it commits
    assert writer.depth == 12
    with pytest.raises(QueueFull):
        writer.submit(list(range(39)))
    engine.release.set()
    assert first.result(5) == [{"item": 0}]
    assert [w.result(5) for w in waiting] == [[{"item": i}, {"item": i}] for i in range(1, 7)]
    assert engine.batches == [1, 8, 4]  # whole requests, at most max_batch events, no wait in between
    writer.stop(5)
    assert engine.closed and not writer.alive
    with pytest.raises(WriterClosed):
        writer.submit([1])


def test_asyncio_futures_of_one_transaction_are_settled_by_one_callback_on_their_loop() -> None:
    import asyncio

    engine = _SlowEngine()
    writer = Writer(lambda: engine, capacity=50, max_batch=500)  # type: ignore[arg-type, return-value]
    writer.start()
    handed: list[int] = []

    async def main() -> tuple[list[Any], bool]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            handed.append(len(args[0]) if args else 0)
            return real(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        held = writer.submit(["first"])  # the writer takes it and waits in its transaction
        deadline = time.monotonic() + 5
        while writer.depth and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        futures = [writer.submit_async([i]) for i in range(5)]  # queued during that transaction
        futures[2].cancel()  # its request went away: the others are still answered
        engine.release.set()
        results = await asyncio.gather(*(f for i, f in enumerate(futures) if i != 2))
        assert held.result(5) == [{"item": "first"}]
        return results, futures[2].cancelled()

    results, cancelled = asyncio.run(main())
    assert results == [[{"item": i}] for i in (0, 1, 3, 4)] and cancelled
    assert engine.batches == [1, 5]
    assert handed == [5]  # one hand-off to the loop for the transaction's five requests
    writer.stop(5)


def test_stop_commits_and_settles_what_is_queued() -> None:
    engine = _SlowEngine()
    writer = Writer(lambda: engine, capacity=50, max_batch=500)  # type: ignore[arg-type, return-value]
    writer.start()
    futures = [writer.submit([i]) for i in range(5)]
    stopper = threading.Thread(target=writer.stop, args=(5,))
    stopper.start()
    engine.release.set()
    stopper.join(10)
    assert all(f.done() and f.result() for f in futures)


def test_the_factory_builds_an_app_that_serves_in_process(tmp_path: Path) -> None:
    config = load_config(bundled_config())
    keys = load_keys(write_keys(tmp_path / "keys.toml"), config)
    app = create_app(Settings(config=config, db=tmp_path / "t.db", keys=keys))
    headers, body = structured(entered(lead="unit-lead"))
    secret = keys.keys["site-b"].secrets[0]
    with TestClient(app) as client:
        response = client.post("/v1/ingest/site-b", content=body,
                               headers=signed("whsec_" + base64.b64encode(secret).decode(), headers, body))
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["status"] == "accepted"
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/nowhere").headers["content-type"] == "application/problem+json"
        # the ingest path is answered before the router, which still knows it as a route
        slash = client.post("/v1/ingest/site-b/", content=b"{}", follow_redirects=False)
        assert slash.status_code == 307 and slash.headers["location"].endswith("/v1/ingest/site-b")
        assert client.get("/v1/ingest/a/b").status_code == 404
        wrong = client.get("/v1/ingest/site-b")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST, OPTIONS"


def test_a_database_that_cannot_be_written_is_503_with_retry_after(tmp_path: Path) -> None:
    import asyncio

    from engine import StoreError

    config = load_config(bundled_config())
    keys = load_keys(write_keys(tmp_path / "keys.toml"), config)
    app = create_app(Settings(config=config, db=tmp_path / "t.db", keys=keys))
    headers, body = structured(entered(lead="unit-lead-2"))
    secret = "whsec_" + base64.b64encode(keys.keys["site-b"].secrets[0]).decode()

    def failing(items: list[Any]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(StoreError("database is locked"))
        return future

    with TestClient(app) as client:
        app.state.service.writer.submit_async = failing
        response = client.post("/v1/ingest/site-b", content=body, headers=signed(secret, headers, body))
    assert response.status_code == 503 and response.headers["retry-after"].isdigit()
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 503


def test_the_writer_is_woken_once_for_the_requests_of_one_turn_of_the_loop() -> None:
    """A wake-up of the writer thread is a system call and, on another core, a thread switch:
    the requests one turn of the event loop queues share one."""
    import asyncio

    engine = _SlowEngine()
    engine.release.set()
    writer = Writer(lambda: engine, capacity=50, max_batch=500)  # type: ignore[arg-type, return-value]
    writer.start()
    wakes = count_wakes(writer)

    async def main() -> list[Any]:
        futures = [writer.submit_async([i]) for i in range(5)]  # one turn: nothing awaited in between
        assert wakes == []
        results = await asyncio.gather(*futures)
        return results

    results = asyncio.run(main())
    assert results == [[{"item": i}] for i in range(5)]
    assert wakes == [1] and engine.batches == [5]
    writer.stop(5)
