"""The writer's engine in a process of its own (service/engine_process.py): it dies with the
server, a killed one is replaced without losing anything answered 200, `--writer thread` keeps
everything in one process, and jobs and errors cross the pipe intact."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import signal
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import completed, entered, registered
from serverkit import (  # noqa: F401  (serve_factory is a fixture)
    Server,
    batched,
    count_wakes,
    hold_write_lock,
    post,
    serve_factory,
    stored_exactly_once,
    structured,
)

from bench.service import child_pids
from engine import Engine, Received, StoreBusy, StoreError, bundled_config, load_config
from service.engine_process import (
    EngineProcess,
    WriterProcessDied,
    _portable,
    answered,
    encode,
    encode_job,
)
from service.writer import Writer


def lead() -> str:
    return f"lead-{uuid.uuid4().hex[:12]}"


def writer_pids(server: Server) -> list[int]:
    """The server's live writer processes (a killed one not yet reaped is a zombie: left out)."""
    assert server.proc is not None
    found = []
    for pid in child_pids(server.proc.pid):
        try:
            if b"service.engine_process" in Path(f"/proc/{pid}/cmdline").read_bytes() and running(pid):
                found.append(pid)
        except OSError:
            continue
    return found


def writer_pid(server: Server) -> int:
    found = writer_pids(server)
    assert len(found) == 1, f"expected one writer process under {server.proc.pid}, found {found}"
    return found[0]


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_the_writer_process_dies_with_a_killed_server_and_a_restart_finds_everything(serve_factory) -> None:
    server: Server = serve_factory("crash")
    writer = writer_pid(server)
    requests = [structured(entered(lead=lead())) for _ in range(5)]
    assert [post(server, "site-b", *r).status_code for r in requests] == [200] * 5
    server.kill()
    assert wait_for(lambda: not running(writer), 5.0), "the writer process outlived its server"
    assert stored_exactly_once(server.db, [body for _, body in requests])
    server.start()
    assert writer_pid(server) != writer
    assert post(server, "site-b", *requests[0]).json()["results"][0]["reason"] == "same_envelope"


def test_sigterm_stops_the_writer_process_and_exits_0(serve_factory) -> None:
    server: Server = serve_factory("term")
    writer = writer_pid(server)
    assert post(server, "site-b", *structured(entered(lead=lead()))).status_code == 200
    assert server.stop(signal.SIGTERM) == 0
    assert not running(writer)


def test_a_killed_writer_process_is_replaced_while_idle(serve_factory) -> None:
    server: Server = serve_factory("idle")
    first = writer_pid(server)
    before = structured(entered(lead=lead()))
    assert post(server, "site-b", *before).status_code == 200
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: not running(first) and len(writer_pids(server)) == 1, 10.0), "no new writer process"
    assert wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200, 10.0)
    after = structured(entered(lead=lead()))
    assert post(server, "site-b", *after).status_code == 200
    assert post(server, "site-b", *before).json()["results"][0]["reason"] == "same_envelope"
    server.stop()
    assert stored_exactly_once(server.db, [before[1], after[1]])


def test_killing_the_writer_process_under_load_loses_nothing_answered_200(serve_factory) -> None:
    server: Server = serve_factory("load")
    requests = [structured(entered(lead=lead())) for _ in range(5000)]
    statuses: dict[int, int] = {}
    killed: list[int] = []
    next_index, stop = iter(range(len(requests))), threading.Event()

    def send() -> None:  # until the kills are over (bounded by the list): a writer is always busy
        while not stop.is_set() and (i := next(next_index, None)) is not None:
            statuses[i] = post(server, "site-b", *requests[i]).status_code

    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(send) for _ in range(16)]
        for _ in range(3):  # three kills, each of whichever writer process runs then
            time.sleep(0.3)
            pid = writer_pid(server)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for(lambda pid=pid: not running(pid) and len(writer_pids(server)) == 1, 10.0)
        time.sleep(0.3)
        stop.set()
        cf.wait(futures, timeout=120)
    assert len(statuses) < len(requests), "the load ended before the kills did"
    assert set(statuses.values()) <= {200, 503}, statuses
    refused = [i for i, status in statuses.items() if status == 503]
    for i in refused:  # what got no 200 is sent again, as an emitter would
        assert wait_for(lambda i=i: post(server, "site-b", *requests[i]).status_code == 200, 20.0)
    server.stop()
    assert stored_exactly_once(server.db, [requests[i][1] for i in statuses])
    assert "WriterProcessDied" in server.output() or refused, "no request met a killed writer"


def test_writer_thread_keeps_the_engine_in_the_server_process(serve_factory) -> None:
    server: Server = serve_factory("thread", args=("--writer", "thread"))
    assert server.proc is not None and child_pids(server.proc.pid) == []
    request = structured(entered(lead=lead()))
    assert post(server, "site-b", *request).status_code == 200
    assert server.stop() == 0
    assert stored_exactly_once(server.db, [request[1]])


def test_answers_are_the_same_bytes_with_the_engine_in_a_process_or_a_thread(serve_factory) -> None:
    """The writer process makes each result's JSON itself; the answers must not change by it."""
    servers = [serve_factory("in-process"), serve_factory("in-thread", args=("--writer", "thread"))]
    someone = lead()
    first = structured(entered(lead=someone, id="e1"))
    requests = [first, first,
                batched([registered(lead=someone, id="r1"), completed(lead=someone, id="c1"),
                         {**entered(lead=someone, id="bad"), "type": "no_such_type"}]),
                ({"content-type": "application/cloudevents+json"}, b'{"specversion": "1.0", "id": '),
                structured({**entered(lead=someone, id="bad-data"), "data": {"lead_id": 5}})]
    answers = [[post(server, "site-a", *request) for request in requests] for server in servers]
    assert answers[0][-1].json() != answers[0][0].json()
    for process, thread in zip(*answers, strict=True):
        assert (process.status_code, process.content) == (thread.status_code, thread.content)
    assert [a.status_code for a in answers[0]] == [200, 200, 200, 400, 200]
    batch = [(r["status"], r["reason"]) for r in answers[0][2].json()["results"]]
    assert batch == [("rejected", "unauthorized_emitter"), ("accepted", None), ("rejected", "unknown_event")]
    assert answers[0][2].json()["results"][1]["emitted"]  # derived events, reminders: the whole result
    assert answers[0][1].json()["results"][0]["reason"] == "same_envelope"
    assert answers[0][3].json()["reason"] == "malformed_json" and answers[0][3].json()["errors"]


# -- the process itself, in-process --------------------------------------------------------------

def _config_hash(engine: Engine) -> str:
    return engine.config.hash


def _fail(engine: Engine) -> None:
    raise StoreBusy("held elsewhere")


def test_results_and_errors_cross_the_pipe_as_they_are(tmp_path: Path) -> None:
    config = load_config(bundled_config())
    events = [body for _, body in (structured(entered(lead=lead())) for _ in range(20))]
    events.append(b'{"not": "an event"')
    remote = EngineProcess(config, tmp_path / "remote.db", max_event_bytes=65536, synchronous="NORMAL")
    try:
        with Engine.open(config=config, db=tmp_path / "local.db") as local:
            expected = local.process_many(events, batch_size=len(events))
        got = remote.process_many(events, batch_size=len(events))
        assert got == expected
        assert [r["status"] for r in got].count("accepted") == 20 and got[-1]["status"] == "rejected"
        with pytest.raises(StoreBusy, match="held elsewhere"):
            remote.run(_fail)
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            remote.run(lambda engine: 1)  # a closure cannot travel; a module function or partial can
        assert remote.run(partial(_config_hash)) == config.hash  # a module function or a partial of one
        assert remote.alive
    finally:
        remote.close()
    assert not remote.alive


class _Unpicklable(StoreError):
    def __init__(self, message: str, handle: object):
        super().__init__(message)
        self.handle = handle


def test_an_error_that_cannot_travel_keeps_its_kind_and_message() -> None:
    exc = _portable(_Unpicklable("disk gone", handle=lambda: None))
    assert type(exc) is StoreError and "_Unpicklable: disk gone" in str(exc)
    same = StoreBusy("busy")
    assert _portable(same) is same


# -- the pipe: messages sent while a transaction runs go into the next one ----------------------

TRACKER = "client-webinar-tracker-v2"


def _received(n: int) -> list[Received]:
    return [Received(body, emitter=TRACKER) for _, body in (structured(entered(lead=lead())) for _ in range(n))]


def test_messages_waiting_when_a_transaction_starts_go_into_it_in_order(tmp_path: Path) -> None:
    """Group commit in the writer process: while one transaction waits (here on a lock held
    elsewhere), what the server sends queues in the pipe, and the next transaction takes all
    of it that fits its size, in order; one answer covers the messages it took."""
    config = load_config(bundled_config())
    db = tmp_path / "piped.db"
    remote = EngineProcess(config, db, max_event_bytes=65536, synchronous="NORMAL")
    try:
        first, queued = _received(1), [_received(2) for _ in range(4)]
        with hold_write_lock(db):
            remote.send(encode(first, 5)[1])
            time.sleep(0.3)  # the transaction of `first` has begun and waits on the lock
            for items in queued:
                remote.send(encode(items, 5)[1])
            remote.send(encode_job(partial(_config_hash)))
            remote.send(encode(_received(1), 5)[1])
        answers = [remote.receive() for _ in range(5)]
    finally:
        remote.close()
    assert [(status, n) for status, _, n in answers] == [("ok", 1), ("ok", 2), ("ok", 2), ("ok", 1), ("ok", 1)]
    # 2 + 2 events fit a transaction of 5; the third message would make 6; the job runs alone
    assert [len(part) for part in answers[1][1]] == [2, 2]
    assert answers[3][1] == config.hash
    sent = [r.raw or r.event for items in queued for r in items]
    got = [a for _, value, n in answers[1:3] for part in value for a in answered(part)]
    assert [a.status for a in got] == ["accepted"] * 8
    with Engine.open(config=config, db=db) as engine:
        assert [r["status"] for r in engine.process_many(sent)] == ["duplicate"] * 8


def _process_writer(db: Path, **kwargs: Any) -> Writer:
    """A writer whose engine runs in a writer process, on `db`, in transactions of up to 10 events."""
    config = load_config(bundled_config())
    return Writer(lambda: EngineProcess(config, db, max_event_bytes=65536, synchronous="NORMAL"),
                  capacity=100, max_batch=10, **kwargs)


def test_a_writer_settles_each_request_of_a_merged_transaction_with_its_own_results(tmp_path: Path) -> None:
    db = tmp_path / "writer.db"
    sizes: list[int] = []
    writer = _process_writer(db, on_commit=sizes.append)
    writer.start()
    try:
        with hold_write_lock(db):
            held = writer.submit(_received(1))
            assert wait_for(lambda: writer.busy_since is not None and writer.depth == 0)
            requests = [_received(3) for _ in range(4)]
            futures = [writer.submit(items) for items in requests]
            assert wait_for(lambda: writer.depth == 12)  # sent to the process, waiting for its transaction
        assert [a.status for a in held.result(timeout=30)] == ["accepted"]
        for items, future in zip(requests, futures, strict=True):
            results = future.result(timeout=30)
            assert [(a.status, orjson.loads(a.body)["route"]["lead_id"]) for a in results] == [
                ("accepted", orjson.loads(r.event)["data"]["lead_id"]) for r in items]
        assert sizes[0] == 1 and sum(sizes) == 13 and len(sizes) <= 3  # 12 events: transactions of up to 10
        assert writer.depth == 0 and writer.busy_since is None
    finally:
        writer.stop(timeout=10)


def test_a_killed_writer_process_fails_every_message_in_flight_and_the_next_one_works(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    writer = _process_writer(db)
    writer.start()
    try:
        with hold_write_lock(db):
            futures = [writer.submit(_received(2)) for _ in range(3)]
            assert wait_for(lambda: writer.busy_since is not None)
            os.kill(writer._engine.pid, signal.SIGKILL)
            for future in futures:
                with pytest.raises(WriterProcessDied):
                    future.result(timeout=30)
        assert writer.depth == 0
        again = _received(2)
        assert [a.status for a in writer.submit(again).result(timeout=30)] == ["accepted", "accepted"]
        assert writer.alive
    finally:
        writer.stop(timeout=10)


def _nap(seconds: float, engine: Engine) -> str:
    time.sleep(seconds)
    return "rested"


def test_busy_since_is_when_the_transaction_began_not_when_its_request_was_sent(tmp_path: Path) -> None:
    """/readyz calls a transaction stuck after 2 s; a request that waited in the pipe behind a
    long one must not count its wait as its transaction's."""
    db = tmp_path / "since.db"
    writer = _process_writer(db)
    writer.start()
    try:
        with hold_write_lock(db):
            nap = writer.submit_call(partial(_nap, 1.0))
            time.sleep(0.1)
            sent_at = time.monotonic()
            waiting = writer.submit(_received(1))  # waits in the pipe behind the nap, then on the lock
            assert nap.result(timeout=30) == "rested"
            answered_at = time.monotonic()
            assert wait_for(lambda: writer.busy_since is not None)
            assert writer.busy_since > sent_at + 0.5 and writer.busy_since <= answered_at
        assert [a.status for a in waiting.result(timeout=30)] == ["accepted"]
        assert writer.busy_since is None
    finally:
        writer.stop(timeout=10)


def test_the_loop_sends_its_requests_to_the_writer_process_itself_when_the_pipe_takes_them(tmp_path: Path) -> None:
    """The writer thread, woken for a turn's requests, would first wait for the GIL the loop
    holds; the loop's own non-blocking send leaves it asleep. A job still goes by the thread."""
    import asyncio

    config = load_config(bundled_config())
    writer = _process_writer(tmp_path / "direct.db")
    writer.start()
    wakes = count_wakes(writer)

    async def main() -> list[Any]:
        futures = [writer.submit_async(_received(2)) for _ in range(3)]
        return await asyncio.gather(*futures)

    try:
        results = asyncio.run(main())
        assert [[a.status for a in r] for r in results] == [["accepted"] * 2] * 3
        assert wakes == []  # sent by the loop's thread: the writer thread slept through it
        assert writer.submit_call(partial(_config_hash)).result(timeout=30) == config.hash
        assert wakes == [1]
    finally:
        writer.stop(timeout=10)


@pytest.mark.parametrize("where", ["process", "thread"])
def test_fail_waiting_answers_every_waiting_request_and_what_was_handed_over_still_commits(
        tmp_path: Path, where: str) -> None:
    """What the server does for a writer stuck on a lock held elsewhere (service/app.py): every
    request waiting on the loop is answered now, queued ones are dropped, and what the writer
    already holds commits once the lock ends (unacknowledged: a resend is a duplicate)."""
    import asyncio

    db = tmp_path / f"stuck-{where}.db"
    if where == "process":
        writer = _process_writer(db)
    else:
        config = load_config(bundled_config())
        writer = Writer(lambda: Engine.open(config=config, db=db), capacity=100, max_batch=10)
    writer.start()
    requests = [_received(2) for _ in range(3)]

    async def scenario() -> list[BaseException | None]:
        futures = [writer.submit_async(items) for items in requests]
        await asyncio.sleep(0)  # the end of a turn: what it queued is handed over
        for _ in range(200):
            if writer.busy_since is not None:
                break
            await asyncio.sleep(0.05)
        assert writer.fail_waiting(lambda: RuntimeError("stuck")) == 3
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return list(outcomes)

    try:
        with hold_write_lock(db):
            outcomes = asyncio.run(scenario())
            assert all(isinstance(o, RuntimeError) and str(o) == "stuck" for o in outcomes), outcomes
            assert writer.depth <= 6
        # the lock is released: the writer goes on; each event is stored once, whatever it held
        again = [writer.submit(items).result(timeout=30) for items in requests]
        statuses = {answer.status if where == "process" else answer["status"] for batch in again for answer in batch}
        assert statuses <= {"accepted", "duplicate"}
        assert writer.depth == 0 and writer.alive
    finally:
        writer.stop(timeout=10)
    assert stored_exactly_once(db, [r.event for items in requests for r in items])
