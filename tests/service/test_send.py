"""`webinar-flows send`, the reference sender: what it puts on the wire and how it retries.

Against a scripted stand-in server (tests/service/stub_ingest.py, a subprocess on 127.0.0.1):
the signature verifies with the `standardwebhooks` library, structured and batched modes carry
the input's exact bytes, 429/503/5xx and connection failures are retried (bounded, Retry-After
honoured, a fresh webhook-id each time), other 4xx are not, a 400 problem becomes a `rejected`
line, and the exit code says whether every event was delivered. The same sender against the
real server is in test_send_server.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("webinar-flows"))
SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
TRACKER = "client-webinar-tracker-v2"


def event(n: int, **extra: object) -> dict:
    return {"specversion": "1.0", "id": f"evt-{n}", "source": TRACKER, "type": "client_webinar_completed",
            "time": "2026-02-10T19:30:00Z", "datacontenttype": "application/json",
            "data": {"lead_id": f"lead-{n}", "webinar_id": "w-1", "webinar_type": "live", "session_id": f"s-{n}",
                     "completed_at": "2026-02-10T19:30:00Z", **extra}}


class Stub:
    def __init__(self, tmp_path: Path, plan: list[dict]) -> None:
        self.log = tmp_path / "requests.jsonl"
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(plan))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "stub_ingest.py"), str(plan_file), str(self.log)],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def stub(tmp_path: Path):
    made: list[Stub] = []

    def start(plan: list[dict]) -> Stub:
        made.append(Stub(tmp_path, plan))
        return made[-1]

    yield start
    for s in made:
        s.stop()


def send(url: str, lines: list[bytes | str | dict], *args: str, env: dict | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    data = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x.encode() if isinstance(x, str) else x)
                    + b"\n" for x in lines)
    return subprocess.run([CLI, "send", "-", "--url", url, "--key-id", "site-1", *args], input=data,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "WEBINAR_FLOWS_SECRET": SECRET, **(env or {})})


def results(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def verify(request: dict) -> None:
    """The request's signature is valid Standard Webhooks v1 for the body as sent."""
    try:
        Webhook(SECRET).verify(request["body"].encode("latin-1"), request["headers"])
    except json.JSONDecodeError:
        pass  # the library parses the body once the signature matched: a non-JSON line still verified


OK = {"status": 200, "headers": {"Content-Type": "application/json"}, "body": "@results"}


def test_structured_requests_are_signed_and_carry_the_exact_line(stub) -> None:
    server = stub([OK])
    raw = '{"specversion": "1.0",  "id": "evt-x", "source": "%s", "type": "client_webinar_completed", "data": {"n": "é"}}' % TRACKER
    proc = send(server.url, [event(1), raw, event(2)])
    assert proc.returncode == 0, proc.stderr
    reqs = server.requests()
    assert [r["path"] for r in reqs] == ["/v1/ingest/site-1"] * 3
    assert reqs[1]["body"].encode("latin-1") == raw.encode()  # not re-serialised
    for r in reqs:
        verify(r)
        assert r["headers"]["content-type"] == "application/cloudevents+json"
        assert "." not in r["headers"]["webhook-id"] and len(r["headers"]["webhook-id"]) <= 255
        assert abs(int(r["headers"]["webhook-timestamp"]) - time.time()) < 60
    assert len({r["headers"]["webhook-id"] for r in reqs}) == 3
    out = results(proc)
    assert [(r["line"], r["id"], r["status"]) for r in out] == [(1, "evt-1", "accepted"), (2, "evt-x", "accepted"),
                                                                 (3, "evt-2", "accepted")]
    assert "3 accepted" in proc.stderr.decode()


def test_a_tampered_body_fails_verification(stub) -> None:
    server = stub([OK])
    assert send(server.url, [event(1)]).returncode == 0
    (req,) = server.requests()
    req["body"] = req["body"].replace("lead-1", "lead-2")
    with pytest.raises(WebhookVerificationError):
        verify(req)


def test_batched_mode_groups_n_events_and_sends_bad_lines_alone(stub) -> None:
    server = stub([OK])
    lines = [event(i) for i in range(1, 6)] + ["not json at all"] + [event(i) for i in range(6, 9)]
    proc = send(server.url, lines, "--batch", "3")
    reqs = server.requests()
    kinds = [(r["headers"]["content-type"], len(json.loads(r["body"])) if r["body"].startswith("[") else 1)
             for r in reqs]
    assert kinds == [("application/cloudevents-batch+json", 3), ("application/cloudevents-batch+json", 2),
                     ("application/cloudevents+json", 1), ("application/cloudevents-batch+json", 3)]
    for r in reqs:
        verify(r)
    out = results(proc)
    assert [r["line"] for r in out] == list(range(1, 10))
    assert [r.get("id") for r in out] == ["evt-1", "evt-2", "evt-3", "evt-4", "evt-5", None, "evt-6", "evt-7", "evt-8"]


def test_503_and_429_are_retried_honouring_retry_after_with_a_fresh_signature(stub) -> None:
    server = stub([{"status": 503, "headers": {"Retry-After": "1", "Content-Type": "application/problem+json"},
                    "body": '{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"queue full"}'},
                   {"status": 429, "headers": {"Retry-After": "0"}, "body": "{}"},
                   {"status": 502, "body": ""}, OK])
    started = time.monotonic()
    proc = send(server.url, [event(1)], "--backoff", "0.01")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    reqs = server.requests()
    assert len(reqs) == 4 and took >= 1.0  # the 1 s Retry-After was waited out
    assert len({r["body"] for r in reqs}) == 1  # the same bytes each time
    assert len({r["headers"]["webhook-id"] for r in reqs}) == 4  # each retry is a new, re-signed request
    for r in reqs:
        verify(r)
    assert results(proc)[0]["status"] == "accepted"
    assert "3 retried" in proc.stderr.decode()


def test_retries_are_bounded_and_the_event_is_undelivered(stub) -> None:
    server = stub([{"status": 500, "body": "boom"}])
    proc = send(server.url, [event(1), event(2)], "--max-attempts", "3", "--backoff", "0.01")
    assert proc.returncode == 1
    assert len(server.requests()) == 6
    out = results(proc)
    assert [(r["status"], r["http_status"]) for r in out] == [("undelivered", 500)] * 2
    assert "2 undelivered" in proc.stderr.decode()


@pytest.mark.parametrize("status", [401, 403, 404, 413, 415, 422])
def test_other_4xx_are_never_retried(stub, status: int) -> None:
    server = stub([{"status": status, "headers": {"Content-Type": "application/problem+json"},
                    "body": json.dumps({"type": "about:blank", "title": "Nope", "status": status, "detail": "x"})}])
    proc = send(server.url, [event(1)], "--backoff", "0.01")
    assert proc.returncode == 1
    assert len(server.requests()) == 1
    assert results(proc) == [{"line": 1, "id": "evt-1", "type": "client_webinar_completed", "status": "undelivered",
                              "http_status": status, "error": "Nope"}]


def test_a_400_problem_is_a_rejected_line_and_not_a_failure(stub) -> None:
    problem = {"type": "https://webinar-flows.dev/problems/invalid_envelope", "title": "Invalid envelope",
               "status": 400, "detail": "specversion must be 1.0", "reason": "invalid_envelope",
               "errors": [{"path": "/specversion", "message": "must be 1.0"}]}
    server = stub([{"status": 400, "headers": {"Content-Type": "application/problem+json"},
                    "body": json.dumps(problem)}])
    proc = send(server.url, ['{"specversion": "0.3", "id": "e1"}'])
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests()) == 1
    assert results(proc) == [{"line": 1, "id": "e1", "status": "rejected", "reason": "invalid_envelope",
                              "errors": problem["errors"]}]


def test_connection_failures_are_retried_then_undelivered(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    proc = send(f"http://127.0.0.1:{port}", [event(1)], "--max-attempts", "3", "--backoff", "0.01")
    assert proc.returncode == 1
    out = results(proc)
    assert out[0]["status"] == "undelivered" and out[0]["http_status"] is None
    assert "3 request(s), 2 retried" in proc.stderr.decode()
    assert "no answer" in proc.stderr.decode()


def test_the_secret_comes_from_a_file_or_the_environment_and_is_never_printed(stub, tmp_path: Path) -> None:
    server = stub([OK])
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    proc = send(server.url, [event(1)], "--secret-file", str(secret_file), env={"WEBINAR_FLOWS_SECRET": ""})
    assert proc.returncode == 0, proc.stderr
    verify(server.requests()[0])
    assert SECRET not in (proc.stdout + proc.stderr).decode()
    missing = send(server.url, [event(1)], env={"WEBINAR_FLOWS_SECRET": ""})
    assert missing.returncode == 2 and b"WEBINAR_FLOWS_SECRET" in missing.stderr
    bad = send(server.url, [event(1)], env={"WEBINAR_FLOWS_SECRET": "whsec_???"})
    assert bad.returncode == 1 and b"whsec_???" not in bad.stderr
    assert len(server.requests()) == 1
