"""`webinar-flows send` and the PHP twin (examples/wordpress/send.php) against a real
`webinar-flows serve` (the installed console script, a subprocess on 127.0.0.1, see serverkit).

What the server answers is what the sender prints; the envelope dedupes a re-send; a batch
needs a key with batch = true; a wrong secret is final (401, no retry); a rate-limited key
is retried after Retry-After until everything is in; the PHP signature is accepted, with the
key's current and previous secret.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from serverkit import TRACKER, Server, clean_env, console_script, served  # noqa: F401  (fixture)

from service.keys import new_secret

ROOT = Path(__file__).resolve().parents[2]
PHP = shutil.which("php")


def events(prefix: str, n: int, webinar: str = "w-send") -> list[dict]:
    out = []
    for i in range(n):
        lead = f"{prefix}-lead-{i}"
        out.append({"specversion": "1.0", "id": f"{prefix}-in-{i}", "source": TRACKER, "type": "client_webinar_entered",
                    "time": "2026-02-10T18:00:00Z", "datacontenttype": "application/json",
                    "data": {"lead_id": lead, "webinar_id": webinar, "timestamp": "2026-02-10T18:00:00Z"}})
        out.append({"specversion": "1.0", "id": f"{prefix}-done-{i}", "source": TRACKER,
                    "type": "client_webinar_completed", "time": "2026-02-10T19:00:00Z",
                    "datacontenttype": "application/json",
                    "data": {"lead_id": lead, "webinar_id": webinar, "webinar_type": "live", "session_id": f"s-{i}",
                             "completed_at": "2026-02-10T19:00:00Z"}})
    return out


def send(server: Server, key_id: str, lines: list, *args: str, secret: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    data = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines).encode()
    env = clean_env(WEBINAR_FLOWS_SECRET=secret or server.secret(key_id))
    return subprocess.run([console_script(), "send", "--url", server.url, "--key-id", key_id, *args], input=data,
                          capture_output=True, timeout=timeout, env=env)


def results(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_send_prints_the_servers_results_and_a_resend_is_duplicate(served: Server) -> None:
    stream = events("s1", 5)
    first = send(served, "site-b", stream)
    assert first.returncode == 0, first.stderr
    out = results(first)
    assert [(r["line"], r["id"], r["status"]) for r in out] == [(i + 1, e["id"], "accepted")
                                                                 for i, e in enumerate(stream)]
    assert out[-1]["route"]["state"] == "completed"
    assert "10 accepted, 0 duplicate, 0 rejected, 0 undelivered" in first.stderr.decode()
    again = send(served, "site-b", stream)
    assert again.returncode == 0
    assert {(r["status"], r["reason"]) for r in results(again)} == {("duplicate", "same_envelope")}


def test_send_matches_process_on_the_same_events(served: Server, tmp_path: Path) -> None:
    stream = events("s2", 6) + [events("s2", 1)[1]]  # the last line re-sends an envelope
    stream.append({**stream[1], "id": "s2-same-fact"})  # the same fact under a new id
    remote = send(served, "site-a", stream, "--batch", "4")
    assert remote.returncode == 0, remote.stderr
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in stream))
    local = subprocess.run([console_script(), "process", str(source), "--db", str(tmp_path / "local.db")],
                           capture_output=True, timeout=120, env=clean_env())
    assert local.returncode == 0, local.stderr
    keys = ("line", "id", "type", "status", "reason", "actions", "route")
    assert [{k: r.get(k) for k in keys} for r in results(remote)] == \
           [{k: r.get(k) for k in keys} for r in results(local)]


def test_a_batch_from_a_key_without_batch_is_undelivered_and_says_why(served: Server) -> None:
    proc = send(served, "site-b", events("s3", 2), "--batch", "2")
    assert proc.returncode == 1
    assert {(r["status"], r["http_status"]) for r in results(proc)} == {("undelivered", 415)}
    assert "batch = true" in proc.stderr.decode()


def test_a_wrong_secret_is_final(served: Server) -> None:
    proc = send(served, "site-b", events("s4", 1), secret=new_secret())
    assert proc.returncode == 1
    assert {(r["status"], r["http_status"]) for r in results(proc)} == {("undelivered", 401)}
    assert "(2 request(s), 0 retried)" in proc.stderr.decode()  # one request per event, never retried


def test_a_rate_limited_key_is_retried_until_everything_is_in(served: Server) -> None:
    stream = events("s5", 6)  # 12 requests on a key of 2 requests/s (burst 4)
    proc = send(served, "slow", stream, "--max-delay", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in results(proc)] == ["accepted"] * 12
    summary = proc.stderr.decode()
    retried = int(summary.split("request(s), ")[1].split(" retried")[0])
    assert retried > 0, summary


def php_twin(server: Server, key_id: str, *args: str, secret: str, event_id: str | None = None):
    if PHP is None:
        if os.environ.get("CI"):
            pytest.fail("php is not installed but $CI is set: CI must check the WordPress sender "
                        "(apt-get install -y php-cli)")
        pytest.skip("php not installed: the PHP twin is not checked against the server here "
                    "(apt-get install php-cli to run it)")
    fixed = {"WEBINAR_FLOWS_EVENT_ID": event_id, "WEBINAR_FLOWS_COMPLETED_AT": "1770750600"} if event_id else {}
    env = clean_env(WEBINAR_FLOWS_SECRET=secret, **fixed)
    return subprocess.run([PHP, str(ROOT / "examples" / "wordpress" / "send.php"), server.url, key_id, *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_the_php_twins_signature_is_accepted_by_the_server(served: Server) -> None:
    event_id = "9a0d2f4e-7b61-4c3a-8e2f-0c1d2e3f4a5b"
    proc = php_twin(served, "site-a", "php-lead-1", "w-php", "sess-1", secret=served.secret("site-a"),
                    event_id=event_id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, body = proc.stdout.split("\n", 1)
    assert status == "HTTP 200"
    (result,) = json.loads(body)["results"]
    assert (result["id"], result["type"], result["status"]) == (event_id, "client_webinar_completed", "accepted")
    # the plugin's retry: the same event again, signed afresh (a later second: a new timestamp, the same
    # body), with the previous secret of a rotation
    time.sleep(1.1)
    again = php_twin(served, "site-a", "php-lead-1", "w-php", "sess-1", secret=served.secret("site-a", 1),
                     event_id=event_id)
    assert again.returncode == 0, again.stdout + again.stderr
    (result,) = json.loads(again.stdout.split("\n", 1)[1])["results"]
    assert (result["status"], result["reason"]) == ("duplicate", "same_envelope")


def test_the_php_twin_with_a_wrong_secret_gets_401_once(served: Server) -> None:
    proc = php_twin(served, "site-b", secret=new_secret())
    assert proc.returncode == 1
    assert proc.stdout.startswith("HTTP 401\n") and "retrying" not in proc.stderr
    problem = json.loads(proc.stdout.split("\n", 1)[1])
    assert problem["status"] == 401
