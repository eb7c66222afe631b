"""The console through Starlette's TestClient: every page and its JSON twin, login, sessions,
CSRF, re-process and purge through the writer. Numbers are checked against a direct count
over the same database through the engine's API.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer
from starlette.testclient import TestClient

from conftest import completed
from consolekit import PASSWORD, USER, configs, csrf_of, log_in, seed, write_keys
from engine import Engine, load_config
from service.app import create_app
from service.settings import load_settings

JSON = {"accept": "application/json"}
STATIC = Path(__file__).resolve().parents[2] / "service" / "console" / "static"


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> dict[str, Any]:
    """Each test runs on SQLite, then on PostgreSQL (conftest's `db_url`; skipped locally
    without a server): the console reads through the engine's API only."""
    strict, approving = configs(tmp_path)
    db = db_url if "://" in db_url else Path(db_url)
    results = seed(strict, db)
    keys = write_keys(tmp_path / "keys.toml")
    return {"strict": strict, "approving": approving, "db": db, "keys": keys, "results": results}


def _client(setup: dict[str, Any], config: str = "approving") -> TestClient:
    settings = load_settings(setup[config], setup["db"], setup["keys"])
    return TestClient(create_app(settings), base_url="http://testserver")


@pytest.fixture
def client(setup: dict[str, Any]) -> Iterator[TestClient]:
    with _client(setup) as c:
        yield c


@pytest.fixture
def logged(client: TestClient) -> tuple[TestClient, str]:
    return client, log_in(client)


def _direct_counts(config: Path, db: Path) -> dict[str, Counter]:
    with Engine.open(config=config, db=db, create=False) as engine:
        rows = list(engine.store.inputs())
    return {"status": Counter(r["status"] for r in rows), "reason": Counter(r["reason"] or "-" for r in rows),
            "emitter": Counter(r["source"] or "-" for r in rows), "type": Counter(r["type"] or "-" for r in rows),
            "total": Counter({"n": len(rows)})}


# -- without a session -----------------------------------------------------------------------

PAGES = ["/console", "/console/contract", "/console/contract/preview", "/console/routes",
         "/console/routes?lead_id=L1", "/console/routes/L1/W1", "/console/quarantine", "/console/quarantine/1",
         "/console/deliveries"]


@pytest.mark.parametrize("path", PAGES)
def test_without_a_session_pages_redirect_to_login_and_twins_answer_401(client: TestClient, path: str) -> None:
    page = client.get(path, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/console/login"
    twin = client.get(path, headers=JSON)
    assert twin.status_code == 401 and twin.headers["content-type"].startswith("application/problem+json")


def test_health_and_metrics_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_login_page_has_the_fields_and_button(client: TestClient) -> None:
    html = client.get("/console/login").text
    assert 'name="username"' in html and 'name="password"' in html and ">Log in</button>" in html


def test_a_wrong_password_or_user_says_only_invalid(client: TestClient) -> None:
    token = csrf_of(client.get("/console/login").text)
    for user, password in ((USER, "wrong"), ("nobody", PASSWORD)):
        answer = client.post("/console/login", data={"username": user, "password": password, "csrf": token},
                             follow_redirects=False)
        assert answer.status_code == 200 and "Invalid username or password" in answer.text
        assert "nobody" not in answer.text.replace('value="nobody"', "")  # nothing about which part was wrong
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_login_attempts_are_rate_limited_per_user(client: TestClient) -> None:
    token = csrf_of(client.get("/console/login").text)
    statuses = [client.post("/console/login", data={"username": USER, "password": "guess", "csrf": token}).status_code
                for _ in range(12)]
    assert statuses[:10] == [200] * 10 and statuses[-1] == 429
    limited = client.post("/console/login", data={"username": USER, "password": PASSWORD, "csrf": token})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_a_drained_login_count_does_not_tell_which_names_exist(client: TestClient) -> None:
    """Each name has its own count, a user's or not: after one unknown name is drained, a user's
    name and another unknown name answer alike (were unknown names counted together, the unknown
    one would get 429 and the user's 200, and a prober would learn the user's name)."""
    token = csrf_of(client.get("/console/login").text)

    def attempt(name: str) -> int:
        return client.post("/console/login", data={"username": name, "password": "guess", "csrf": token}).status_code

    assert 429 in [attempt("mallory") for _ in range(13)][-2:]
    assert (attempt(USER), attempt("nobody"), attempt("root")) == (200, 200, 200)


def test_login_counts_of_names_that_filled_again_are_forgotten() -> None:
    from service.limits import TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0], keep=4)
    for n in range(50):  # each name is drained a little, then the clock moves on
        assert buckets.take(f"user:{n}", 1.0, 2.0) == 0.0
        now[0] += 5.0
    assert len(buckets._buckets) <= 4
    assert buckets.take("user:49", 1.0, 2.0) == 0.0  # a kept count goes on from where it was


def test_login_sets_a_hardened_cookie_and_leads_to_the_overview(client: TestClient) -> None:
    token = csrf_of(client.get("/console/login").text)
    answer = client.post("/console/login", data={"username": USER, "password": PASSWORD, "csrf": token},
                         follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie.replace("secure=", "")
    assert client.get("/console").status_code == 200


def test_the_cookie_is_secure_over_tls(setup: dict[str, Any]) -> None:
    settings = load_settings(setup["approving"], setup["db"], setup["keys"])
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        token = csrf_of(c.get("/console/login").text)
        answer = c.post("/console/login", data={"username": USER, "password": PASSWORD, "csrf": token},
                        follow_redirects=False)
        assert "; secure" in answer.headers["set-cookie"].lower()


def test_a_post_without_its_csrf_token_is_403(logged: tuple[TestClient, str]) -> None:
    client, token = logged
    for path, form in (("/console/quarantine/reprocess", {"seq": "1"}), ("/console/quarantine/purge", {"seq": "1"}),
                       ("/console/contract/preview", {"file": "events.yaml", "text": "x"}), ("/console/logout", {}),
                       ("/console/quarantine/1/reprocess", {})):
        assert client.post(path, data=form).status_code == 403, path
        assert client.post(path, data={**form, "csrf": "not-the-token"}).status_code == 403, path
    assert client.post("/console/login", data={"username": USER, "password": PASSWORD}).status_code == 403
    # whatever the body: one that is not a form, or too large, is still a 403 without the token
    for content, kind in ((b"seq=1", "text/plain"), (b'{"seq": 1}', "application/json"),
                          (b"seq=1&text=" + b"x" * (3 * 1024 * 1024), "application/x-www-form-urlencoded")):
        answer = client.post("/console/quarantine/purge", content=content, headers={"content-type": kind})
        assert answer.status_code == 403, kind
    # with its token, the same bodies are told what is wrong with them, under their own title
    refused = client.post("/console/quarantine/purge", content=b"seq=1",
                          headers={"content-type": "text/plain", "x-csrf-token": token})
    assert refused.status_code == 415 and refused.json()["title"] == "Unsupported Media Type"
    big = client.post("/console/contract/preview", content=f"csrf={token}&file=events.yaml&text=".encode()
                      + b"x" * (3 * 1024 * 1024), headers={"content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413 and big.json()["title"] == HTTPStatus(413).phrase
    with Engine.open(config=client.app.state.service.settings.config, db=client.app.state.service.settings.db,
                     create=False) as engine:
        assert len(engine.rejections()) == 3  # nothing was re-processed or purged


def test_a_session_signed_with_another_secret_is_refused(logged: tuple[TestClient, str]) -> None:
    client, token = logged
    forged = URLSafeTimedSerializer("another secret", salt="wf-console-session").dumps({"user": USER, "csrf": token})
    client.cookies.clear()
    client.cookies.set("wf_console", forged, path="/console")
    assert client.get("/console", follow_redirects=False).status_code == 303
    assert client.get("/console", headers=JSON).status_code == 401
    answer = client.post("/console/quarantine/reprocess", data={"seq": "1", "csrf": token})
    assert answer.status_code == 403


def test_log_out_ends_the_session(logged: tuple[TestClient, str]) -> None:
    client, token = logged
    html = client.get("/console").text
    assert ">Log out</button>" in html
    kept = client.cookies.get("wf_console")  # a copy of the cookie, as a stolen one would be
    answer = client.post("/console/logout", data={"csrf": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    assert client.get("/console", follow_redirects=False).status_code == 303
    # the copy is no session either: pages, their JSON twins and actions all refuse it
    client.cookies.set("wf_console", kept, path="/console")
    assert client.get("/console", follow_redirects=False).status_code == 303
    assert client.get("/console/quarantine", headers=JSON).status_code == 401
    assert client.post("/console/quarantine/purge", data={"seq": "1", "csrf": token}).status_code == 403


def test_a_user_removed_from_the_keys_file_loses_the_session(setup: dict[str, Any]) -> None:
    with _client(setup) as client:
        log_in(client)
        cookie = client.cookies.get("wf_console")
    write_keys(setup["keys"], {"bob": "x"})  # the same session secret, ann gone
    with _client(setup) as client:
        client.cookies.set("wf_console", cookie, path="/console")
        assert client.get("/console", headers=JSON).status_code == 401


# -- pages and twins -------------------------------------------------------------------------

def test_overview_counts_equal_a_direct_count(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, _ = logged
    twin = client.get("/console", headers=JSON).json()
    direct = _direct_counts(setup["approving"], setup["db"])
    for window in ("hour", "day", "all"):  # everything was recorded just now
        counts = twin["counts"][window]
        assert counts["total"] == direct["total"]["n"] == len(setup["results"])
        for dim in ("status", "reason", "emitter", "type"):
            assert counts[dim] == dict(direct[dim]), (window, dim)
    config = load_config(setup["approving"])
    assert twin["config_hash"] == config.hash
    assert twin["writer"]["alive"] is True and twin["writer"]["database_writable"] is True
    assert twin["failed_deliveries"]["total"] == 0
    html = client.get("/console").text
    assert config.hash[:12] in html and config.hash not in html
    assert "<svg" in html and 'class="chart"' in html
    assert f">All time: {direct['total']['n']}<" in html


def test_contract_page_and_twin(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, _ = logged
    config = load_config(setup["approving"])
    twin = client.get("/console/contract", headers=JSON).json()
    assert [e["name"] for e in twin["events"]] == list(config.events)
    for event in twin["events"]:
        spec = config.events[event["name"]]
        assert (event["status"], event["description"], event["identity"], event["payload"]) == \
            (spec.status, spec.description, list(spec.identity), spec.payload)
    assert twin["matrix"][TRACKER]["client_webinar_registered"] == "planned"
    assert twin["matrix"][TRACKER]["client_webinar_left"] is None
    assert [r["id"] for r in twin["rules"]] == [r.id for r in config.rules]
    assert twin["diagram"].lstrip().startswith("---") and "stateDiagram-v2" in twin["diagram"]
    html = client.get("/console/contract").text
    assert 'class="mermaid"' in html and "/console/static/mermaid.min.js" in html
    for name in config.events:
        assert name in html


TRACKER = "client-webinar-tracker-v2"


def test_preview_shows_yaml_errors_with_line_and_column_and_writes_nothing(logged: tuple[TestClient, str],
                                                                           setup: dict[str, Any]) -> None:
    client, token = logged
    before = {p: p.read_bytes() for p in setup["approving"].rglob("*") if p.is_file()}
    html = client.get("/console/contract/preview").text
    for name in ("events.yaml", "emitters.yaml", "states.yaml", "consumers.yaml", "rules/"):
        assert name in html
    assert ">Preview</button>" in html
    broken = "emitters:\n  x: [unclosed\n"
    answer = client.post("/console/contract/preview", data={"file": "emitters.yaml", "text": broken, "csrf": token})
    assert answer.status_code == 200
    twin = client.post("/console/contract/preview", data={"file": "emitters.yaml", "text": broken},
                       headers={**JSON, "x-csrf-token": token}).json()
    assert twin["valid"] is False and twin["problems"]
    first = twin["problems"][0]
    assert first["file"].endswith("emitters.yaml") and first["line"] >= 2 and first["column"] >= 1
    assert f"{first['file']}:{first['line']}:{first['column']}" in answer.text
    # a breaking change: the tracker may no longer send completions
    text = (setup["approving"] / "emitters.yaml").read_text().replace("      client_webinar_completed: implemented\n", "")
    twin = client.post("/console/contract/preview", data={"file": "emitters.yaml", "text": text},
                       headers={**JSON, "x-csrf-token": token}).json()
    assert twin["valid"] is True and twin["breaking"] and twin["diagram"]
    assert any("emitters" in c["breaking_for"] for c in twin["breaking"])
    after = {p: p.read_bytes() for p in setup["approving"].rglob("*") if p.is_file()}
    assert after == before


def test_preview_offers_each_rules_file_of_the_config_and_previews_it(logged: tuple[TestClient, str],
                                                                      setup: dict[str, Any]) -> None:
    """The config directory is an absolute path here, as the bundled one is: the rules files are
    still offered by their names inside it (they were dropped for rules/rules.yaml, which does
    not exist, and could not be previewed)."""
    client, token = logged
    root = setup["approving"]
    rules = sorted(p.relative_to(root).as_posix() for p in (root / "rules").glob("*.yaml"))
    assert len(rules) >= 2 and root.is_absolute()
    files = client.get("/console/contract/preview", headers=JSON).json()["files"]
    assert files[-len(rules):] == rules and "rules/rules.yaml" not in files
    text = (root / rules[0]).read_text()
    twin = client.post("/console/contract/preview", data={"file": rules[0], "text": text},
                       headers={**JSON, "x-csrf-token": token})
    assert twin.status_code == 200, twin.text
    assert twin.json()["valid"] is True and twin.json()["file"] == rules[0] and twin.json()["changes"] == []


def test_routes_search_and_one_route(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, _ = logged
    found = client.get("/console/routes?lead_id=L1", headers=JSON).json()
    assert [(r["lead_id"], r["webinar_id"], r["state"]) for r in found["routes"]] == [("L1", "W1", "completed")]
    everything = client.get("/console/routes?webinar_id=W1", headers=JSON).json()
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        assert everything["total"] == len(engine.store.route_states()) == 2
        direct = engine.route(lead_id="L1", webinar_id="W1")
        story = engine.explain(lead_id="L1", webinar_id="W1")
    one = client.get("/console/routes/L1/W1", headers=JSON).json()
    assert (one["state"], one["screen"], one["history"]) == (direct["state"], direct["screen"], direct["history"])
    assert one["story"] == json.loads(json.dumps(story["story"]))
    assert one["current_node"] == "completed"
    assert "classDef current" in one["diagram"] and "class completed current" in one["diagram"]
    html = client.get("/console/routes/L1/W1").text
    assert 'data-current="completed"' in html and "client_webinar_completed" in html
    assert client.get("/console/routes/L9/W9").status_code == 404
    assert client.get("/console/routes/only-one").status_code == 404


def test_a_route_whose_key_holds_a_slash_opens_from_the_routes_list(logged: tuple[TestClient, str],
                                                                   setup: dict[str, Any]) -> None:
    """The list links each value as one percent-encoded segment (a `/` as %2F); the route page
    decodes each segment on its own, as /v1/routes does (the decoded path split `org/7` in two)."""
    client, _ = logged
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        assert engine.process(completed(lead="org/7", webinar="W 1?x", id="c-slash"))["status"] == "accepted"
    [found] = client.get("/console/routes?lead_id=org/7", headers=JSON).json()["routes"]
    assert found["path"] == "org%2F7/W%201%3Fx"
    assert 'href="/console/routes/org%2F7/W%201%3Fx"' in client.get("/console/routes?lead_id=org/7").text
    one = client.get("/console/routes/" + found["path"], headers=JSON).json()
    assert (one["key"], one["state"]) == ({"lead_id": "org/7", "webinar_id": "W 1?x"}, "completed")
    assert client.get("/console/routes/org/7/W%201%3Fx").status_code == 404  # three segments: no such key


def test_quarantine_lists_newest_first_and_filters(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, _ = logged
    twin = client.get("/console/quarantine", headers=JSON).json()
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        direct = engine.rejections()
    assert [r["seq"] for r in twin["rejections"]] == [r["seq"] for r in reversed(direct)]
    assert twin["total"] == 3
    only = client.get("/console/quarantine?reason=unauthorized_emitter", headers=JSON).json()
    assert [r["reason"] for r in only["rejections"]] == ["unauthorized_emitter"]
    by_type = client.get("/console/quarantine?type=client_webinar_registered&emitter=" + TRACKER, headers=JSON).json()
    assert by_type["total"] == 1
    assert client.get("/console/quarantine?since=2999-01-01T00:00:00Z", headers=JSON).json()["total"] == 0
    assert client.get("/console/quarantine?since=yesterday", headers=JSON).status_code == 400
    # a filter's several values are alternatives, as for `rejections`; nothing is dropped unsaid
    both = client.get("/console/quarantine?reason=unauthorized_emitter&reason=malformed_json", headers=JSON).json()
    assert {r["reason"] for r in both["rejections"]} == {"malformed_json", "unauthorized_emitter"} and both["total"] == 3
    for query in ("foo=bar", "since=2026-01-01T00:00:00Z&since=2027-01-01T00:00:00Z"):
        refused = client.get(f"/console/quarantine?{query}", headers=JSON)
        assert refused.status_code == 400, query
    for query in ("foo=bar", "lead_id=L1&lead_id=L2"):
        assert client.get(f"/console/routes?{query}", headers=JSON).status_code == 400, query
    html = client.get("/console/quarantine").text
    assert html.count('type="checkbox" name="seq"') == 3 and html.count(">Re-process</button>") == 3
    assert ">Purge</button>" in html and "hx-confirm" in html


def test_one_rejection_shows_text_or_hex_and_pointers(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, _ = logged
    rows = {r["reason"]: r for r in client.get("/console/quarantine", headers=JSON).json()["rejections"]}
    unauthorized = client.get(f"/console/quarantine/{rows['unauthorized_emitter']['seq']}", headers=JSON).json()
    assert unauthorized["encoding"] == "utf-8" and '"r-3"' in unauthorized["text"]
    assert unauthorized["errors"][0]["path"] == "/source"
    html = client.get(f"/console/quarantine/{unauthorized['seq']}").text
    assert "/source" in html and ">Re-process</button>" in html
    not_utf8 = [r for r in client.get("/console/quarantine", headers=JSON).json()["rejections"]
                if r["raw_size"] and r["seq"] != unauthorized["seq"]]
    hexed = [client.get(f"/console/quarantine/{r['seq']}", headers=JSON).json() for r in not_utf8]
    assert any(h["encoding"] == "hex" and "ff" in h["hex"].split() for h in hexed)
    assert client.get("/console/quarantine/999").status_code == 404
    seq = not_utf8[0]["seq"]
    assert client.get(f"/console/quarantine/{seq}", headers=JSON).status_code == 200
    for other in (f"0{seq}", f"%20{seq}", f"+{seq}", "".join(chr(0xFF10 + int(d)) for d in str(seq))):
        assert client.get(f"/console/quarantine/{other}", headers=JSON).status_code == 404, other


def test_reprocess_goes_through_the_writer_and_swaps_the_row(logged: tuple[TestClient, str],
                                                            setup: dict[str, Any]) -> None:
    client, token = logged
    rows = client.get("/console/quarantine?reason=unauthorized_emitter", headers=JSON).json()["rejections"]
    seq = rows[0]["seq"]
    fragment = client.post(f"/console/quarantine/{seq}/reprocess", data={"csrf": token},
                           headers={"hx-request": "true"})
    assert fragment.status_code == 200
    assert f'id="rejection-{seq}" hx-swap-oob="true"' in fragment.text
    assert 'class="status-word status-accepted">accepted<' in fragment.text
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        assert [r["seq"] for r in engine.rejections()] != [] and seq not in [r["seq"] for r in engine.rejections()]
        resolved = engine.rejections(state="resolved")
        assert [r["seq"] for r in resolved] == [seq]
        assert engine.route(lead_id="L3", webinar_id="W1")["state"] == "registered"
        origins = [r["origin"] for r in engine.store.inputs()]
    assert origins[-1] == f"rejection:{seq}"
    # the others stay rejected; the twin answers the status words
    others = [r["seq"] for r in client.get("/console/quarantine", headers=JSON).json()["rejections"]]
    twin = client.post("/console/quarantine/reprocess", data={"seq": [str(s) for s in others]},
                       headers={**JSON, "x-csrf-token": token}).json()
    assert {r["rejection"]: r["status"] for r in twin["results"]} == {s: "rejected" for s in others}


def test_reprocess_says_why_it_ran_nothing(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    """A too_large rejection kept only its first bytes: no button, and a request for it answers with
    a note in the row (it showed an empty cell); an id that never existed is a 404, not a row."""
    client, token = logged
    with Engine.open(config=setup["approving"], db=setup["db"], create=False, max_event_bytes=64) as engine:
        assert engine.process(completed(lead="L-big", id="big"))["reason"] == "too_large"
    [big] = client.get("/console/quarantine?reason=too_large", headers=JSON).json()["rejections"]
    page = client.get(f"/console/quarantine/{big['seq']}").text
    assert f'/quarantine/{big["seq"]}/reprocess' not in page
    twin = client.post(f"/console/quarantine/{big['seq']}/reprocess", data={"csrf": token}, headers=JSON).json()
    assert twin["results"] == [{"rejection": big["seq"], "status": None,
                                "note": "kept only in part (too_large): it cannot be re-processed"}]
    fragment = client.post(f"/console/quarantine/{big['seq']}/reprocess", data={"csrf": token},
                           headers={"hx-request": "true"}).text
    assert "it cannot be re-processed" in fragment
    missing = client.post("/console/quarantine/99999/reprocess", data={"csrf": token}, headers=JSON)
    assert missing.status_code == 404 and "no rejection 99999" in missing.text


def test_purge_deletes_the_checked_rows(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, token = logged
    rows = client.get("/console/quarantine", headers=JSON).json()["rejections"]
    victim = [next(r["seq"] for r in rows if r["reason"] == "malformed_json")]
    answer = client.post("/console/quarantine/purge", data={"seq": [str(s) for s in victim], "csrf": token},
                         headers={"hx-request": "true"})
    assert answer.status_code == 200 and 'hx-swap-oob="delete"' in answer.text
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        assert not set(victim) & {r["seq"] for r in engine.rejections(state="all")}
        assert len(engine.rejections()) == 2


def test_deliveries_page_lists_the_consumers(logged: tuple[TestClient, str], setup: dict[str, Any]) -> None:
    client, _ = logged
    (setup["approving"] / "consumers.yaml").write_text(
        "consumers:\n  reminder-sender:\n    description: sends reminders\n    receives:\n      actions: [reminder]\n")
    with _client(setup) as other:
        log_in(other)
        twin = other.get("/console/deliveries", headers=JSON).json()
        assert [c["name"] for c in twin["consumers"]] == ["reminder-sender"]
        consumer = twin["consumers"][0]
        with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
            if hasattr(engine, "backlog"):  # the outbox (issue 11): the feed's numbers
                assert consumer["backlog"] == engine.backlog("reminder-sender") and consumer["backlog"] >= 1
                assert consumer["cursor"] == engine.store.cursor_of("reminder-sender")
        if not twin["failed_available"]:
            assert consumer["failed"] == []
        html = other.get("/console/deliveries").text
        assert "reminder-sender" in html
        # no url in the keys file: it reads the feed, and no push counts are shown for it
        assert consumer["pull_only"] is True and consumer["push"] is None
        assert "no url in the keys file, this consumer reads the feed" in html and "not taken yet" not in html
        overview = other.get("/console", headers=JSON).json()
        assert overview["failed_deliveries"]["consumers"] == {"reminder-sender": len(consumer["failed"])}


def test_pages_carry_the_csp_and_load_only_local_assets(logged: tuple[TestClient, str]) -> None:
    client, _ = logged
    for path in PAGES:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "http://" not in answer.text and "https://" not in answer.text, path
        assert "<script>" not in answer.text and "onclick" not in answer.text, path
    for name in ("htmx.min.js", "mermaid.min.js", "console.js", "console.css"):
        assert client.get(f"/console/static/{name}").status_code == 200


def test_vendored_files_match_their_recorded_hashes() -> None:
    table = (STATIC / "VERSIONS.md").read_text()
    for name in ("htmx.min.js", "mermaid.min.js"):
        digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()
        assert digest in table, name


def test_keys_user_writes_an_argon2_hash_and_refuses_two_answers(tmp_path: Path, cli_runner: Any = None) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    keys = tmp_path / "keys.toml"
    runner = CliRunner()
    refused = runner.invoke(cli, ["keys", "user", "ann", "--keys", str(keys)], input="one\ntwo\n")
    assert refused.exit_code == 1 and not keys.exists()
    done = runner.invoke(cli, ["keys", "user", "ann", "--keys", str(keys)], input="s3cret pass\ns3cret pass\n")
    assert done.exit_code == 0, done.output
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    import tomllib

    document = tomllib.loads(keys.read_text())
    assert document["console"]["users"]["ann"]["password_hash"].startswith("$argon2id$")
    secret = document["console"]["session_secret"]
    assert len(secret) >= 32 and "s3cret" not in keys.read_text()
    again = runner.invoke(cli, ["keys", "user", "ann", "--keys", str(keys)], input="other\nother\n")
    assert again.exit_code == 0
    assert tomllib.loads(keys.read_text())["console"]["session_secret"] == secret  # kept: sessions survive


def test_a_route_key_field_declared_integer_is_matched_as_an_integer() -> None:
    from types import SimpleNamespace

    from service.console.data import BadInput, typed_key_value

    config = SimpleNamespace(route=SimpleNamespace(transitions=[SimpleNamespace(trigger="t")]),
                             events={"t": SimpleNamespace(payload={"properties": {
                                 "webinar_id": {"type": "integer"}, "lead_id": {"type": "string"}}})})
    assert typed_key_value(config, "webinar_id", "7") == 7
    assert typed_key_value(config, "lead_id", "7") == "7"
    with pytest.raises(BadInput):
        typed_key_value(config, "webinar_id", "seven")


def test_a_plain_form_post_refused_gets_a_page_and_scripts_get_problem_json(logged: tuple[TestClient, str]) -> None:
    client, token = logged
    browser = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    stale = client.post("/console/deliveries/retry", data={"consumer": "reminder-sender", "csrf": "old"},
                        headers=browser)
    assert stale.status_code == 403 and stale.headers["content-type"].startswith("text/html")
    assert "403 Forbidden" in stale.text and "reload the page and try again" in stale.text
    assert stale.headers["content-security-policy"].startswith("default-src 'self'")
    empty = client.post("/console/quarantine/reprocess", data={"csrf": token}, headers=browser)
    assert empty.status_code == 400 and "check at least one rejection" in empty.text
    assert empty.headers["content-type"].startswith("text/html")
    # htmx (which console.js reads the detail from) and scripts get problem+json as before
    for headers in ({"hx-request": "true", "accept": "*/*"}, {"accept": "application/json"}, {}):
        answer = client.post("/console/quarantine/reprocess", data={"csrf": token}, headers=headers)
        assert answer.status_code == 400, headers
        assert answer.headers["content-type"].startswith("application/problem+json"), headers
        assert answer.json() == {"type": "about:blank", "title": "Bad Request", "status": 400,
                                 "detail": "check at least one rejection"}


def test_retry_needs_its_token_and_a_declared_consumer(logged: tuple[TestClient, str]) -> None:
    client, token = logged
    assert client.post("/console/deliveries/retry", data={"consumer": "reminder-sender"}).status_code == 403
    answer = client.post("/console/deliveries/retry", data={"consumer": "nobody", "item": "*", "csrf": token},
                         follow_redirects=False)
    assert answer.status_code in (400, 409)


def test_failed_push_deliveries_are_shown_counted_and_retried(logged: tuple[TestClient, str],
                                                              setup: dict[str, Any]) -> None:
    """A consumer's item answered 400 is failed: the deliveries page lists it with its last
    answer, the overview counts it, and "Retry" makes it pending again (through the writer)."""
    client, token = logged
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        if not hasattr(engine, "delivery_round"):
            pytest.skip("this version records no push deliveries")
        from engine.runtime.delivery import Answer

        due = engine.delivery_round("reminder-sender", "test-owner", 1000.0)
        assert due
        engine.delivery_answers("reminder-sender", "test-owner", [(due[0], Answer(400, "bad request: no"))], 1000.0)
        failed = engine.deliveries("reminder-sender", failed=True)
    assert [f["id"] for f in failed] == [due[0].id]
    twin = client.get("/console/deliveries", headers=JSON).json()
    consumer = twin["consumers"][0]
    assert [f["id"] for f in consumer["failed"]] == [due[0].id]
    assert consumer["failed"][0]["last_status"] == 400 and "bad request" in consumer["failed"][0]["last_answer"]
    assert consumer["push"]["failed"] == 1
    overview = client.get("/console", headers=JSON).json()["failed_deliveries"]
    assert overview == {"total": 1, "available": True, "consumers": {"reminder-sender": 1}}
    html = client.get("/console/deliveries").text
    assert due[0].id in html and ">Retry</button>" in html
    answer = client.post("/console/deliveries/retry", data={"consumer": "reminder-sender", "item": due[0].id,
                                                            "csrf": token}, follow_redirects=False)
    assert answer.status_code == 303
    again = client.post("/console/deliveries/retry", data={"consumer": "reminder-sender", "item": due[0].id,
                                                           "csrf": token}, headers=JSON)
    assert again.status_code == 404 and "no failed delivery with id" in again.text  # it is pending now
    with Engine.open(config=setup["approving"], db=setup["db"], create=False) as engine:
        assert engine.deliveries("reminder-sender", failed=True) == []
        assert engine.delivery_state("reminder-sender")["failed"] == 0
