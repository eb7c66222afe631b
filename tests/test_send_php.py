"""The WordPress sender's PHP (examples/wordpress/), run with php-cli.

- the plain-PHP twin `send.php` against a scripted stand-in server: its signature verifies with
  the `standardwebhooks` library, the webhook-id is the event's id, retries keep the same event
  (and id) with a fresh signature, other 4xx are final;
- the plugin file itself under stubbed WordPress functions: the body goes to wp_remote_post as
  a string, 503/WP_Error schedule a retry with the same event, 401 schedules none;
- the twin against the real server is in tests/service/test_send_server.py.

Without `php` these tests skip locally, saying so; under CI ($CI set) they fail instead, since
CI must install Debian's php-cli.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[1]
WP = ROOT / "examples" / "wordpress"
sys.path.insert(0, str(ROOT / "tests" / "service"))
from test_send import OK, Stub  # noqa: E402  (the scripted stand-in server)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PHP = shutil.which("php")


def require_php() -> str:
    if PHP is None:
        if os.environ.get("CI"):
            pytest.fail("php is not installed but $CI is set: CI must run the WordPress sender's checks "
                        "(apt-get install -y php-cli)")
        pytest.skip("php not installed: the WordPress sender's PHP is not checked here "
                    "(apt-get install php-cli to run these tests)")
    return PHP


@pytest.fixture
def stub(tmp_path: Path):
    made: list[Stub] = []

    def start(plan: list[dict]) -> Stub:
        made.append(Stub(tmp_path, plan))
        return made[-1]

    yield start
    for s in made:
        s.stop()


def twin(url: str, key_id: str = "site-1", *args: str, secret: str = SECRET, env: dict | None = None,
         timeout: float = 60, php_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    php = require_php()
    return subprocess.run([php, *php_args, str(WP / "send.php"), url, key_id, *args], capture_output=True,
                          text=True, timeout=timeout, errors="surrogateescape",
                          env={**os.environ, "WEBINAR_FLOWS_SECRET": secret, **(env or {})})


def test_the_php_files_parse() -> None:
    php = require_php()
    for name in ("webinar-flows-core.php", "webinar-flows-sender.php", "send.php"):
        proc = subprocess.run([php, "-l", str(WP / name)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_twin_signs_as_standard_webhooks_and_sends_a_valid_completed_event(stub) -> None:
    server = stub([OK])
    proc = twin(server.url, "site-1", "lead-9", "webinar-2026-02", "sess-9")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("HTTP 200\n") and '"accepted"' in proc.stdout
    (req,) = server.requests()
    body = req["body"].encode("latin-1")
    event = Webhook(SECRET).verify(body, req["headers"])  # raises unless the signature is valid
    assert req["path"] == "/v1/ingest/site-1"
    assert req["headers"]["content-type"] == "application/cloudevents+json"
    assert req["headers"]["webhook-id"] == event["id"] and "." not in event["id"]
    assert {k: event[k] for k in ("specversion", "source", "type", "datacontenttype")} == {
        "specversion": "1.0", "source": "client-webinar-tracker-v2", "type": "client_webinar_completed",
        "datacontenttype": "application/json"}
    data = event["data"]
    assert (data["lead_id"], data["webinar_id"], data["session_id"], data["webinar_type"]) == (
        "lead-9", "webinar-2026-02", "sess-9", "live")
    assert data["completed_at"] == event["time"] and event["time"].endswith("Z")


def test_the_twin_retries_503_with_the_same_event_and_a_fresh_signature(stub) -> None:
    server = stub([{"status": 503, "headers": {"Retry-After": "1"}, "body": "{}"}, {"status": 500, "body": ""}, OK])
    proc = twin(server.url, env={"WEBINAR_FLOWS_EVENT_ID": "0b7c2a1e-5f7e-4c1e-9c1a-1f1e1d1c1b1a"})
    assert proc.returncode == 0, proc.stderr
    reqs = server.requests()
    assert len(reqs) == 3 and proc.stderr.count("retrying") == 2
    assert {r["body"] for r in reqs} == {reqs[0]["body"]}
    assert {r["headers"]["webhook-id"] for r in reqs} == {"0b7c2a1e-5f7e-4c1e-9c1a-1f1e1d1c1b1a"}
    for r in reqs:
        Webhook(SECRET).verify(r["body"].encode("latin-1"), r["headers"])


@pytest.mark.parametrize("status", [400, 401, 413, 415])
def test_the_twin_never_retries_other_4xx(stub, status: int) -> None:
    server = stub([{"status": status, "headers": {"Content-Type": "application/problem+json"},
                    "body": json.dumps({"title": "no", "status": status})}])
    proc = twin(server.url)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"HTTP {status}\n")
    assert len(server.requests()) == 1


def test_the_twin_needs_no_optional_extension_to_honour_retry_after(stub) -> None:
    """`php -n` loads no php.ini, so no shared extension (on Debian: not ctype): what every PHP
    build has must be enough to read Retry-After and retry."""
    php = require_php()
    probe = subprocess.run([php, "-n", "-r", "echo function_exists('ctype_digit') ? 'ctype' : 'none';"],
                           capture_output=True, text=True, timeout=30)
    server = stub([{"status": 503, "headers": {"Retry-After": "1"}, "body": "{}"}, OK])
    proc = twin(server.url, php_args=("-n",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(server.requests()) == 2 and "retrying in 1s" in proc.stderr
    if probe.stdout != "none":
        pytest.skip("this PHP has ctype built in: the run above could not show that it is not needed")


def test_the_twin_refuses_a_lead_id_that_is_not_utf8_as_a_usage_error(stub) -> None:
    server = stub([OK])
    proc = twin(server.url, "site-1", "l\udce9a")  # the byte 0xE9 alone: Latin-1, not UTF-8
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be encoded as JSON" in proc.stderr and "Fatal" not in proc.stderr + proc.stdout
    assert server.requests() == []


def test_the_twin_refuses_a_malformed_secret_without_printing_it(stub) -> None:
    server = stub([OK])
    proc = twin(server.url, secret="not-a-secret-xyz")
    assert proc.returncode == 2 and "whsec_" in proc.stderr and "not-a-secret-xyz" not in proc.stderr
    assert server.requests() == []


PLUGIN_HARNESS = r"""<?php
define('ABSPATH', '/');
define('WEBINAR_FLOWS_URL', 'https://flows.example/');
define('WEBINAR_FLOWS_KEY_ID', 'site-17');
define('WEBINAR_FLOWS_SECRET', getenv('WEBINAR_FLOWS_SECRET'));
$GLOBALS['answers'] = json_decode(getenv('ANSWERS'), true);
$GLOBALS['trace'] = [];
class WP_Error { public $m; function __construct($m) { $this->m = $m; } function get_error_message() { return $this->m; } }
function is_wp_error($x) { return $x instanceof WP_Error; }
function add_action(...$a) { $GLOBALS['trace'][] = ['add_action', $a[0]]; }
function wp_generate_uuid4() { return '6f1c1e2a-0000-4000-8000-00000000abcd'; }
function wp_remote_post($url, $args) {
    $GLOBALS['trace'][] = ['post', $url, $args];
    $a = array_shift($GLOBALS['answers']);
    if ($a === null) { return new WP_Error('cURL error 28: timed out'); }
    return ['response' => ['code' => $a[0]], 'headers' => $a[1], 'body' => $a[2]];
}
function wp_remote_retrieve_response_code($r) { return $r['response']['code']; }
function wp_remote_retrieve_header($r, $h) { return $r['headers'][$h] ?? ''; }
function wp_remote_retrieve_body($r) { return is_array($r) ? $r['body'] : ''; }
function wp_schedule_single_event($ts, $hook, $args) { $GLOBALS['trace'][] = ['schedule', $ts - time(), $hook, $args]; return true; }
require getenv('PLUGIN');
$id = webinar_flows_send_completed(getenv('LEAD') ?: 'lead-1', 'webinar-1', 'live', 'sess-1', 1760000000);
// WP-Cron runs each scheduled retry with the arguments it was given
for ($i = 0; $i < 5; $i++) {
    $s = null;
    foreach ($GLOBALS['trace'] as $t) { if ($t[0] === 'schedule') { $s = $t; } }
    if ($s === null || ($GLOBALS['ran'][$i - 1] ?? null) === $s) { break; }
    $GLOBALS['ran'][$i] = $s;
    webinar_flows_deliver(...$s[3]);
}
echo json_encode(['id' => $id, 'trace' => $GLOBALS['trace']]);
"""


def plugin(tmp_path: Path, answers: list, lead: bytes = b"") -> dict:
    php = require_php()
    harness = tmp_path / "harness.php"
    harness.write_text(PLUGIN_HARNESS)
    log = tmp_path / "php-error.log"
    proc = subprocess.run([php, "-d", "log_errors=1", "-d", f"error_log={log}", str(harness)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environb, b"WEBINAR_FLOWS_SECRET": SECRET.encode(),
                               b"ANSWERS": json.dumps(answers).encode(), b"LEAD": lead,
                               b"PLUGIN": str(WP / "webinar-flows-sender.php").encode()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    logged = log.read_text().splitlines() if log.exists() else []
    out["trace"] += [["log", line] for line in logged]
    return out


def _posts(out: dict) -> list:
    return [t for t in out["trace"] if t[0] == "post"]


def test_the_plugin_posts_a_string_body_signed_and_is_done_on_200(tmp_path: Path) -> None:
    ok = [200, {"content-type": "application/json"}, '{"results":[{"status":"accepted"}]}']
    out = plugin(tmp_path, [ok])
    (post,) = _posts(out)
    _, url, args = post
    assert url == "https://flows.example/v1/ingest/site-17"
    assert isinstance(args["body"], str) and args["redirection"] == 0
    event = Webhook(SECRET).verify(args["body"].encode(), {k.lower(): v for k, v in args["headers"].items()})
    assert event["id"] == out["id"] == args["headers"]["webhook-id"]
    assert event["data"]["completed_at"] == "2025-10-09T08:53:20Z"
    assert not [t for t in out["trace"] if t[0] in ("schedule", "log")]


def test_the_plugin_retries_503_and_timeouts_later_with_the_same_event(tmp_path: Path) -> None:
    ok = [200, {}, '{"results":[{"status":"duplicate"}]}']
    out = plugin(tmp_path, [[503, {"retry-after": "120"}, "{}"], None, ok])
    posts = _posts(out)
    assert len(posts) == 3
    assert len({p[2]["body"] for p in posts}) == 1
    assert {p[2]["headers"]["webhook-id"] for p in posts} == {out["id"]}
    schedules = [t for t in out["trace"] if t[0] == "schedule"]
    assert [(s[2], s[3][1]) for s in schedules] == [("webinar_flows_retry", 2), ("webinar_flows_retry", 3)]
    assert 119 <= schedules[0][1] <= 121  # Retry-After 120 beats the first step (5 s)
    assert 299 <= schedules[1][1] <= 301  # then the schedule's second step


@pytest.mark.parametrize("status", [400, 401, 413, 415])
def test_the_plugin_gives_up_on_other_4xx(tmp_path: Path, status: int) -> None:
    out = plugin(tmp_path, [[status, {}, json.dumps({"title": "Unauthorized", "status": status})]])
    assert len(_posts(out)) == 1
    assert not [t for t in out["trace"] if t[0] == "schedule"]
    (log,) = [t for t in out["trace"] if t[0] == "log"]
    assert "not retried" in log[1] and SECRET not in log[1]


def test_the_plugin_logs_an_event_it_cannot_encode_and_the_page_goes_on(tmp_path: Path) -> None:
    """A lead id that is not UTF-8 (a Latin-1 database, say): the event is logged as not sent,
    nothing is posted or scheduled, and the request that fired the hook does not die."""
    out = plugin(tmp_path, [], lead=b"l\xe9a")
    assert _posts(out) == [] and not [t for t in out["trace"] if t[0] == "schedule"]
    (log,) = [t for t in out["trace"] if t[0] == "log"]
    assert "cannot send event" in log[1] and "JSON" in log[1] and SECRET not in log[1]


def test_the_docs_example_signature_is_what_the_core_computes() -> None:
    """docs/wordpress.md shows a request and its signature; the PHP core and the Python
    library both produce exactly that signature."""
    import re
    from datetime import datetime, timezone

    php = require_php()
    doc = (ROOT / "docs" / "wordpress.md").read_text()
    secret = re.search(r"define\('WEBINAR_FLOWS_SECRET', '(whsec_[^']+)'\)", doc).group(1)
    msg_id = re.search(r"webhook-id: (\S+)", doc).group(1)
    timestamp = re.search(r"webhook-timestamp: (\d+)", doc).group(1)
    shown = re.search(r"webhook-signature: (\S+)", doc).group(1)
    body = re.search(r"\n(\{\"specversion\".*\})\n```", doc).group(1)
    script = (f"require '{WP / 'webinar-flows-core.php'}';"
              "echo webinar_flows_sign(getenv('S'), getenv('I'), (int) getenv('T'), getenv('B'));")
    proc = subprocess.run([php, "-r", script], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "S": secret, "I": msg_id, "T": timestamp, "B": body})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown
    moment = datetime.fromtimestamp(int(timestamp), tz=timezone.utc)
    assert Webhook(secret).sign(msg_id, moment, body) == shown
