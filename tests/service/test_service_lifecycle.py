"""`webinar-flows serve` as a process: refusing to start, draining on SIGTERM, surviving SIGKILL,
a writer held back until its queue fills, and the limits that cut off slow or huge requests."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import entered
from serverkit import (  # noqa: F401  (serve_factory is a fixture)
    KeySpec,
    Server,
    assert_no_secret_in_output,
    clean_env,
    console_script,
    free_port,
    hold_write_lock,
    post,
    serve_factory,
    start_server,
    stored_exactly_once,
    structured,
    write_keys,
)


def lead() -> str:
    return f"lead-{uuid.uuid4().hex[:12]}"


def run_serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [console_script(), "serve", "--port", str(free_port()), "--db", str(tmp_path / "x.db"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env or clean_env(),
                          check=False)


# -- refusing to start -------------------------------------------------------------------

@pytest.mark.parametrize(("case", "expected"), [
    ("mode 0644", "mode 0644"),
    ("invalid TOML", "not valid TOML"),
    ("internal emitter", "is internal"),
    ("malformed secret", "secret 1 is malformed"),
])  # every problem's wording: test_service_keys.py; here, that serve refuses to start on them
def test_serve_refuses_a_bad_keys_file_naming_it(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "keys.toml"
    if case == "mode 0644":
        write_keys(path, mode=0o644)
    elif case == "invalid TOML":
        path.write_text("[keys.a\n")
        path.chmod(0o600)
    else:
        emitter = {"unknown emitter": "nobody", "internal emitter": "attendance-classifier"}.get(case)
        spec = KeySpec("a", emitter=emitter) if emitter else KeySpec("a", secrets=["whsec_dG9vc2hvcnQ="])
        write_keys(path, [spec])
    done = run_serve(tmp_path, "--keys", str(path))
    assert done.returncode == 1
    assert str(path) in done.stderr and expected in done.stderr
    assert "whsec_" not in done.stderr + done.stdout


def test_serve_without_a_keys_file_says_how_to_make_one(tmp_path: Path) -> None:
    done = run_serve(tmp_path)
    assert done.returncode == 1 and "webinar-flows keys new ID --emitter NAME" in done.stderr


def test_the_keys_file_is_found_through_credentials_directory(tmp_path: Path) -> None:
    write_keys(tmp_path / "keys.toml", mode=0o644)
    done = run_serve(tmp_path, env=clean_env(CREDENTIALS_DIRECTORY=str(tmp_path)))
    assert done.returncode == 1 and str(tmp_path / "keys.toml") in done.stderr


# -- stopping ------------------------------------------------------------------------------

def test_sigterm_under_load_answers_what_it_took_and_exits_0_within_10_s(serve_factory) -> None:
    server: Server = serve_factory("term")
    acked, other, stop = [], [], threading.Event()

    def sender() -> None:
        with httpx.Client() as client:
            for _ in range(300):  # bounded; the signal ends it long before
                if stop.is_set():
                    return
                headers, event = structured(entered(lead=lead()))
                try:
                    response = post(server, "site-b", headers, event, client=client)
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    acked.append(event)
                else:
                    other.append(response.status_code)

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while len(acked) < 20 and time.monotonic() < deadline:  # load is on: some requests were answered
        time.sleep(0.05)
    started = time.monotonic()
    status = server.stop(signal.SIGTERM)
    took = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(15)
    assert status == 0 and took < 10
    assert set(other) <= {503}
    assert len(acked) >= 20 and stored_exactly_once(server.db, acked)
    assert "Traceback" not in server.output()
    assert_no_secret_in_output(server)


def test_sigterm_with_a_writer_stuck_on_a_lock_still_exits_0_within_10_s(serve_factory) -> None:
    server: Server = serve_factory("stuck")
    request = structured(entered(lead=lead()))
    with cf.ThreadPoolExecutor(1) as pool, hold_write_lock(server.db):
        future = pool.submit(post, server, "site-b", *request)
        time.sleep(0.5)  # the request waits on the writer, which waits on the lock
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        try:
            answer = future.result(10).status_code
        except httpx.HTTPError:
            answer = None
        assert answer in (503, None)  # not committed, so never a 200: the sender sends it again
    assert "Traceback" not in server.output()


def test_sigkill_loses_nothing_that_was_answered_200_and_sigint_exits_0(serve_factory) -> None:
    server: Server = serve_factory("kill")
    requests = [structured(entered(lead=lead())) for _ in range(10)]
    with httpx.Client() as client:
        assert all(post(server, "site-b", *r, client=client).status_code == 200 for r in requests)
    server.kill()
    assert stored_exactly_once(server.db, [body for _, body in requests])
    server.start()
    again = post(server, "site-b", *requests[0])
    assert again.json()["results"][0]["reason"] == "same_envelope"
    assert server.stop(signal.SIGINT) == 0


# -- backpressure ------------------------------------------------------------------------------

def _wait_not_ready(server: Server, check: str) -> dict:
    """The checks of /readyz once `check` fails (bounded: 10 s)."""
    for _ in range(100):
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        if not ready.json()["checks"][check]["ok"]:
            assert ready.status_code == 503
            return ready.json()["checks"]
        time.sleep(0.1)
    raise AssertionError(f"/readyz kept {check} ok: {ready.json()}")


def test_a_held_writer_fills_the_queue_then_503_and_not_ready_then_recovers_losing_nothing(serve_factory) -> None:
    """A lock held elsewhere: the queue fills (503 at once for what does not fit), /readyz says
    so, the waiting requests are answered 503 once the writer has waited STUCK_SECONDS (not when
    the lock ends), a new request gets 503 at once; after the lock, every resend is stored once."""
    server: Server = serve_factory("held", args=("--queue-events", "4"))
    requests = [structured(entered(lead=lead())) for _ in range(10)]
    with cf.ThreadPoolExecutor(len(requests)) as pool:
        with hold_write_lock(server.db):
            held_at = time.monotonic()
            futures = {pool.submit(post, server, "site-b", *requests[0]): requests[0]}
            time.sleep(0.3)  # the first request is in the writer's transaction, which waits on the lock
            futures.update({pool.submit(post, server, "site-b", *r): r for r in requests[1:]})
            # Four more wait in the queue (its capacity); the other five get 503 at once.
            deadline, done = time.monotonic() + 10, set()
            while len(done) < 5 and time.monotonic() < deadline:
                done, _ = cf.wait(futures, timeout=0.05)
            assert time.monotonic() - held_at < 2.0  # refused by the full queue, before the writer counts as stuck
            refused = [f for f in done if f.result().status_code == 503]
            assert len(refused) == 5 and all(f.result().headers["retry-after"].isdigit() for f in refused)
            assert all(f.result().headers["content-type"].startswith("application/problem+json") for f in refused)
            assert _wait_not_ready(server, "queue")["queue"]["ok"] is False
            # the five waiting are answered 503 soon after the writer has waited 2 s
            waiting = [f for f in futures if f not in refused]
            assert all(f.result(timeout=10).status_code == 503 for f in waiting)
            assert time.monotonic() - held_at < 6.0
            assert _wait_not_ready(server, "database")["database"]["ok"] is False
            started = time.monotonic()
            late = post(server, "site-b", *structured(entered(lead=lead())))
            assert late.status_code == 503 and late.headers["retry-after"].isdigit()
            assert time.monotonic() - started < 1.0
            assert late.headers["content-type"].startswith("application/problem+json")
            assert "cannot be written" in late.json()["detail"]
        # the lock is released: ready again, and what got 503 is sent again and stored once
        for _ in range(100):
            if httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        for request in requests:
            answer = post(server, "site-b", *request)
            assert answer.status_code == 200
            assert answer.json()["results"][0]["status"] in ("accepted", "duplicate")
    assert stored_exactly_once(server.db, [body for _, body in requests])


# -- limits on slow and huge requests ----------------------------------------------------------

@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with short time limits and a small head limit."""
    server = start_server(tmp_path_factory.mktemp("limited"), args=(
        "--body-timeout", "2", "--head-timeout", "2", "--max-header-bytes", "4096"))
    try:
        yield server
    finally:
        server.stop()


def test_a_trickling_body_is_cut_off_without_holding_up_others(limited: Server) -> None:
    server = limited
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        slow.sendall(b"POST /v1/ingest/site-b HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        started = time.monotonic()
        quick = post(server, "site-b", *structured(entered(lead=lead())))
        assert quick.status_code == 200 and time.monotonic() - started < 2.0  # before its own cut-off
        answer = b""
        for _ in range(30):  # 1 byte every 0.1 s until the server answers (bounded: 3 s)
            try:
                slow.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        slow.settimeout(5)
        try:
            answer = slow.recv(4096)
        except OSError:
            answer = b""
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 6


def test_trickling_headers_are_cut_off_without_holding_up_others(limited: Server) -> None:
    server = limited
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        slow.sendall(b"POST /v1/ingest/site-b HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert post(server, "site-b", *structured(entered(lead=lead()))).status_code == 200
        closed = False
        for _ in range(60):  # one header line every 0.1 s, bounded: 6 s
            try:
                slow.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.1)
                slow.setblocking(False)
                closed = slow.recv(1) == b""
                slow.setblocking(True)
            except BlockingIOError:
                slow.setblocking(True)
            except OSError:
                closed = True
            if closed:
                break
        assert closed and time.monotonic() - started < 5


def test_a_head_sent_in_pieces_past_the_limit_is_refused(limited: Server) -> None:
    """httptools bounds no head: the server counts what arrives until the head is complete."""
    server = limited
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(b"POST /v1/ingest/site-b HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(10):  # 10 x 1000 bytes, the limit is 4096
                conn.sendall(b"X-Piece: " + b"a" * 989 + b"\r\n")
                time.sleep(0.05)
            answer = conn.recv(4096)
        except OSError:
            answer = answer or b"closed"
    assert answer.startswith(b"HTTP/1.1 431") or answer == b"closed", answer
    if answer != b"closed":
        assert b"application/problem+json" in answer
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_oversized_headers_are_refused(limited: Server) -> None:
    server = limited
    try:
        response = httpx.post(server.ingest_url("site-b"), headers={"x-big": "a" * 8000}, content=b"{}")
        assert response.status_code == 431 and response.headers["content-type"] == "application/problem+json"
    except httpx.HTTPError:
        pass  # the connection was closed: also refused
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_long_query_string_counts_toward_the_head_limit(limited: Server) -> None:
    """The limit is the request line and headers: a query string past it is a 431 too (it was
    not counted, and a page echoed 60 KB of it back)."""
    response = httpx.get(f"{limited.url}/healthz?x=" + "a" * 6000)
    assert response.status_code == 431 and response.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{limited.url}/healthz?x=" + "a" * 100).status_code == 200


def test_sigterm_while_a_body_is_still_arriving_answers_503_not_500(serve_factory) -> None:
    """uvicorn cancels what is still running when its graceful stop runs out; a request whose
    body never finished gets 503 problem+json with Retry-After, and no traceback is logged."""
    server: Server = serve_factory("trickle")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as slow:
        slow.sendall(b"POST /v1/ingest/site-b HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        time.sleep(0.3)
        started = time.monotonic()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 12:  # bounded by the socket timeout too
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert server.stop(signal.SIGTERM) == 0 and time.monotonic() - started < 10
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 503"), answer
    assert b"retry-after: 5" in head and b"content-type: application/problem+json" in head
    assert "Traceback" not in server.output() and "Exception in ASGI application" not in server.output()
    assert any(line["status"] == 503 and line["outcome"] == "unavailable" for line in server.log_lines())
