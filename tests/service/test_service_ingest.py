"""POST /v1/ingest/{key_id} through real HTTP against `webinar-flows serve`: every row of the
status table, each content mode made by the CloudEvents SDK, signatures made by the
standardwebhooks library."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from conftest import completed, entered
from serverkit import (  # noqa: F401  (served is a fixture)
    TRACKER,
    Server,
    assert_closed_labels,
    assert_no_secret_in_output,
    batched,
    binary,
    http,
    post,
    served,
    signed,
    structured,
)

from engine import Engine

PROBLEM = "application/problem+json"


def lead() -> str:
    return f"lead-{uuid.uuid4().hex[:12]}"


def stored(server: Server) -> tuple[int, list[dict[str, Any]]]:
    """(accepted facts seen through routes are checked per test) the stored rejections."""
    with Engine.open(config=None, db=server.db) as eng:
        rejections = eng.rejections()
    return len(rejections), rejections


def route(server: Server, lead_id: str, webinar: str = "w1") -> dict[str, Any] | None:
    with Engine.open(config=None, db=server.db) as eng:
        return eng.route(lead_id=lead_id, webinar_id=webinar)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


# -- 200 -------------------------------------------------------------------------------

def test_structured_event_is_processed_and_a_replay_is_a_duplicate_applied_once(served: Server) -> None:
    who = lead()
    headers, body = structured(entered(lead=who))
    signed_headers = signed(served.secret("site-b"), headers, body)
    first = http().post(served.ingest_url("site-b"), headers=signed_headers, content=body)
    assert first.status_code == 200, first.text
    (result,) = first.json()["results"]
    assert "line" not in result
    assert (result["status"], result["type"], result["route"]["state"]) == ("accepted", "client_webinar_entered",
                                                                             "in_webinar")
    before = route(served, who)
    replay = http().post(served.ingest_url("site-b"), headers=signed_headers, content=body)  # the captured request
    assert replay.status_code == 200
    assert [(r["status"], r["reason"]) for r in replay.json()["results"]] == [("duplicate", "same_envelope")]
    assert route(served, who) == before and len(before["history"]) == 1


def test_binary_event_headers_are_percent_decoded(served: Server) -> None:
    event = completed(lead=lead(), source=TRACKER, subject="Euro €")
    headers, body = binary(event)
    assert headers["ce-subject"] == "Euro%20%E2%82%AC"
    headers["ce-source"] = "client-webinar-tracker%2Dv2"  # '-' percent-encoded: only a decoder sees the tracker
    response = post(served, "site-b", headers, body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "accepted"


def test_batched_mode_gives_one_result_per_event_in_order(served: Server) -> None:
    who = lead()
    events = [entered(lead=who), completed(lead=who), entered(lead=who, source="attendance-classifier")]
    response = post(served, "site-a", *batched(events))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [e["id"] for e in events]
    assert [(r["status"], r["reason"]) for r in results] == [
        ("accepted", None), ("accepted", None), ("rejected", "unauthorized_emitter")]


def test_an_empty_batch_is_fine(served: Server) -> None:
    response = post(served, "site-a", {"content-type": "application/cloudevents-batch+json"}, b"[]")
    assert response.status_code == 200 and response.json() == {"results": []}


def test_a_source_other_than_the_keys_emitter_is_rejected_and_stored(served: Server) -> None:
    count, _ = stored(served)
    event = completed(lead=lead(), source="attendance-classifier")
    response = post(served, "site-b", *structured(event))
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert (result["status"], result["reason"], result["id"]) == ("rejected", "unauthorized_emitter", event["id"])
    assert stored(served)[0] == count + 1


def test_either_secret_of_a_rotating_key_passes_and_both_together(served: Server) -> None:
    for which in (0, 1):
        response = post(served, "site-a", *structured(entered(lead=lead())), secret=served.secret("site-a", which))
        assert response.status_code == 200, which
    headers, body = structured(entered(lead=lead()))
    both = signed(served.secret("site-a", 0), headers, body, msg_id="msg-both", at=time.time())
    other = signed(served.secret("site-a", 1), headers, body, msg_id="msg-both", at=time.time())
    both["webhook-signature"] = f"v1,bm90aGluZw== {other['webhook-signature']}"
    assert http().post(served.ingest_url("site-a"), headers=both, content=body).status_code == 200


def test_a_timestamp_just_inside_the_window_passes(served: Server) -> None:
    for offset in (-290, 290):
        response = post(served, "site-b", *structured(entered(lead=lead())), at=time.time() + offset)
        assert response.status_code == 200, offset


# -- 400: stored as a rejection ------------------------------------------------------------

@pytest.mark.parametrize(("name", "body", "reason"), [
    ("not JSON", b'{"specversion": "1.0", "id": ', "malformed_json"),
    ("not UTF-8", b'\xff\xfe{"id": 1}', "malformed_json"),
    ("JSON nested past any limit", b"[" * 5000 + b"]" * 5000, "malformed_json"),
    ("not an object", b'["an", "array"]', "invalid_envelope"),
    ("no id", None, "invalid_envelope"),
    ("specversion 0.3", None, "invalid_envelope"),
])
def test_a_structured_body_that_is_not_a_valid_event_is_400_and_stored(served: Server, name, body, reason) -> None:
    if body is None:
        event = entered(lead=lead())
        if name == "no id":
            del event["id"]
        else:
            event["specversion"] = "0.3"
        body = json.dumps(event).encode()
    count, _ = stored(served)
    response = post(served, "site-b", {"content-type": "application/cloudevents+json; charset=utf-8"}, body)
    problem = assert_problem(response, 400)
    assert problem["reason"] == reason and problem["errors"] and problem["errors"][0]["path"] is not None
    total, rejections = stored(served)
    assert total == count + 1 and rejections[-1]["reason"] == reason


def test_a_binary_request_without_ce_id_is_400_and_its_body_stored(served: Server) -> None:
    headers, body = binary(entered(lead=lead()))
    del headers["ce-id"]
    problem = assert_problem(post(served, "site-b", headers, body), 400)
    assert problem["reason"] == "invalid_envelope"
    assert {"path": "/id", "code": "required", "message": "the ce-id header is missing"} in problem["errors"]
    assert stored(served)[1][-1]["reason"] == "invalid_envelope"


def test_a_binary_request_with_a_ce_datacontenttype_header_is_400(served: Server) -> None:
    headers, body = binary(entered(lead=lead()))
    headers["ce-datacontenttype"] = "application/json"
    problem = assert_problem(post(served, "site-b", headers, body), 400)
    assert problem["reason"] == "invalid_envelope" and problem["errors"][0]["code"] == "not_allowed"


def test_a_binary_header_that_is_not_utf8_once_decoded_is_400(served: Server) -> None:
    headers, body = binary(entered(lead=lead()))
    headers["ce-subject"] = "caf%E9"
    problem = assert_problem(post(served, "site-b", headers, body), 400)
    assert problem["reason"] == "invalid_envelope" and problem["errors"][0]["path"] == "/subject"


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"not": "an array"}', "invalid_envelope"),
    (b"[{", "malformed_json"),
])
def test_a_batch_that_is_not_an_array_is_400_and_stored_once(served: Server, body, reason) -> None:
    count, _ = stored(served)
    problem = assert_problem(post(served, "site-a", {"content-type": "application/cloudevents-batch+json"}, body),
                             400)
    assert problem["reason"] == reason
    assert stored(served)[0] == count + 1


def test_a_batch_mixing_specversions_is_400(served: Server) -> None:
    one, two = entered(lead=lead()), entered(lead=lead())
    two["specversion"] = "0.3"
    body = json.dumps([one, two]).encode()
    problem = assert_problem(post(served, "site-a", {"content-type": "application/cloudevents-batch+json"}, body),
                             400)
    assert problem["reason"] == "invalid_envelope" and problem["errors"][0]["code"] == "mixed_specversion"
    assert route(served, one["data"]["lead_id"]) is None


# -- 401: nothing stored ---------------------------------------------------------------

def _unauthorized_cases(server: Server) -> dict[str, tuple[str, dict[str, str], bytes]]:
    headers, body = structured(entered(lead=lead()))
    good = signed(server.secret("site-b"), headers, body)
    cases = {
        "unknown key": ("nobody", good, body),
        "no signature": ("site-b", headers, body),
        "garbage signature": ("site-b", {**good, "webhook-signature": "garbage"}, body),
        "tampered body": ("site-b", good, body.replace(b"in", b"ni", 1)),
        "wrong secret": ("site-b", signed(server.secret("site-a"), headers, body), body),
        "stale timestamp": ("site-b", signed(server.secret("site-b"), headers, body, at=time.time() - 302), body),
        "future timestamp": ("site-b", signed(server.secret("site-b"), headers, body, at=time.time() + 330), body),  # signed well before it is sent
        "id with a dot": ("site-b", signed(server.secret("site-b"), headers, body, msg_id="a.b"), body),
        "id too long": ("site-b", signed(server.secret("site-b"), headers, body, msg_id="x" * 256), body),
        "timestamp not an integer": ("site-b", {**good, "webhook-timestamp": good["webhook-timestamp"] + ".5"}, body),
    }
    return cases


def test_every_failed_authentication_is_the_same_401_and_stores_nothing(served: Server) -> None:
    count, _ = stored(served)
    bodies = set()
    for name, (key_id, headers, body) in _unauthorized_cases(served).items():
        response = http().post(served.ingest_url(key_id), headers=headers, content=body)
        assert response.status_code == 401, name
        bodies.add(json.dumps(assert_problem(response, 401), sort_keys=True))
    assert len(bodies) == 1  # which check failed is not said
    assert stored(served)[0] == count


def test_the_webhook_id_limit_is_255_characters_not_bytes(served: Server) -> None:
    for msg_id, status in (("é" * 128, 200), ("é" + "a" * 254, 200), ("é" * 256, 401)):  # 256, 256, 512 bytes
        headers, body = structured(entered(lead=lead()))
        sent = signed(served.secret("site-b"), headers, body, msg_id=msg_id)
        sent["webhook-id"] = msg_id.encode("utf-8")  # type: ignore[assignment]  # httpx sends str headers as ASCII
        response = http().post(served.ingest_url("site-b"), headers=sent, content=body)
        assert response.status_code == status, (len(msg_id), response.text)


def test_a_non_utf8_body_with_a_bad_signature_is_401_not_500(served: Server) -> None:
    headers = {"content-type": "application/cloudevents+json", "webhook-id": "m1",
               "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"}
    response = http().post(served.ingest_url("site-b"), headers=headers, content=b"\xff\xfe{")
    assert_problem(response, 401)


# -- 413, 415, 405, OPTIONS ----------------------------------------------------------------

def test_too_large_by_content_length_or_by_what_is_read_is_413(served: Server) -> None:
    count, _ = stored(served)
    event = entered(lead=lead())
    event["data"]["padding"] = "x" * (300 * 1024)
    headers, body = structured(event)
    assert_problem(post(served, "site-b", headers, body), 413)

    def chunks():
        for start in range(0, len(body), 16 * 1024):
            yield body[start:start + 16 * 1024]

    chunked = signed(served.secret("site-b"), headers, body)
    response = http().post(served.ingest_url("site-b"), headers=chunked, content=chunks())
    assert_problem(response, 413)
    assert stored(served)[0] == count


def test_a_batch_of_more_than_100_events_is_413(served: Server) -> None:
    events = [entered(lead=lead()) for _ in range(101)]
    assert_problem(post(served, "site-a", *batched(events)), 413)
    assert route(served, events[0]["data"]["lead_id"]) is None


@pytest.mark.parametrize(("key_id", "content_type", "binary_mode"), [
    ("site-b", "application/cloudevents+avro", False),
    ("site-b", "text/xml", False),
    ("site-b", "text/plain", True),
    ("site-b", "application/cloudevents-batch+json", False),  # a key without batch = true
])
def test_an_unsupported_content_mode_is_415_and_stores_nothing(served: Server, key_id, content_type,
                                                                binary_mode) -> None:
    count, _ = stored(served)
    event = entered(lead=lead())
    headers, body = binary(event) if binary_mode else structured(event)
    if content_type.endswith("batch+json"):
        headers, body = batched([event])
    headers["content-type"] = content_type
    assert_problem(post(served, key_id, headers, body), 415)
    assert stored(served)[0] == count


def test_a_batch_from_a_key_without_batch_is_415_up_to_the_batch_size_limit(served: Server) -> None:
    # the size check comes first and a batch's limit is 1 MiB whoever sends it: between the
    # event limit (256 KiB) and 1 MiB, a key without batch = true is told 415, not 413
    headers, body = batched([entered(lead=lead())])
    padded = body[:-1] + b" " * (300 * 1024) + b"]"
    assert_problem(post(served, "site-b", headers, padded), 415)
    assert_problem(post(served, "site-b", headers, body[:-1] + b" " * (1024 * 1024) + b"]"), 413)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_another_method_is_405_with_allow(served: Server, method: str) -> None:
    response = http().request(method, served.ingest_url("site-b"))
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST, OPTIONS"


def test_the_webhook_handshake_consents_only_for_listed_origins(served: Server) -> None:
    listed = http().options(served.ingest_url("slow"), headers={"WebHook-Request-Origin": "wp.example"})
    assert listed.status_code == 200
    assert listed.headers["webhook-allowed-origin"] == "wp.example"
    assert listed.headers["webhook-allowed-rate"] == "120"  # rate 2/s as requests per minute
    other = http().options(served.ingest_url("site-b"), headers={"WebHook-Request-Origin": "evil.example"})
    assert other.status_code == 200
    assert "webhook-allowed-origin" not in other.headers and "webhook-allowed-rate" not in other.headers


# -- 429 -------------------------------------------------------------------------------

def test_a_flood_against_a_low_rate_gets_429_with_retry_after_and_others_pass(served: Server) -> None:
    statuses, retry_after = [], []
    headers, body = structured(entered(lead=lead()))
    started = time.monotonic()
    with httpx.Client() as client:
        for _ in range(30):  # bucket: rate 2/s, burst 4; unsigned requests count as well
            if time.monotonic() - started > 10:
                break
            response = client.post(served.ingest_url("slow"), headers=headers, content=body)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert_problem(response, 429)
                retry_after.append(int(response.headers["retry-after"]))
        elapsed = time.monotonic() - started
        assert set(statuses) == {401, 429} and statuses[:4] == [401] * 4  # the burst, then the rate
        assert statuses.count(401) <= 4 + 2 * elapsed + 1 and statuses.count(429) >= 10
        assert all(1 <= seconds <= 2 for seconds in retry_after)
        assert post(served, "site-b", *structured(entered(lead=lead())), client=client).status_code == 200


# -- reads -----------------------------------------------------------------------------

def test_routes_are_read_with_a_consumer_token(served: Server) -> None:
    from serverkit import TOKEN

    who = lead()
    assert post(served, "site-b", *structured(entered(lead=who, webinar="web-9"))).status_code == 200
    url = f"{served.url}/v1/routes/{who}/web-9"
    ok = http().get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == route(served, who, "web-9")
    assert ok.json()["state"] == "in_webinar"
    assert_problem(http().get(url), 401)
    assert_problem(http().get(url, headers={"Authorization": "Bearer not-the-token"}), 401)
    assert_problem(http().get(f"{served.url}/v1/routes/{lead()}/web-9",
                             headers={"Authorization": f"Bearer {TOKEN}"}), 404)
    assert_problem(http().get(f"{served.url}/v1/routes/{who}", headers={"Authorization": f"Bearer {TOKEN}"}), 404)


def test_a_route_key_holding_a_slash_is_read_through_its_percent_encoded_segment(served: Server) -> None:
    from urllib.parse import quote

    from serverkit import TOKEN

    who, webinar = f"{lead()}/é x", "web/9?#%"
    assert post(served, "site-b", *structured(entered(lead=who, webinar=webinar))).status_code == 200
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = http().get(f"{served.url}/v1/routes/{quote(who, safe='')}/{quote(webinar, safe='')}", headers=auth)
    assert ok.status_code == 200 and ok.json() == route(served, who, webinar)
    assert ok.json()["lead_id"] == who and ok.json()["webinar_id"] == webinar
    # unencoded, the slash splits the key into three segments: no such route
    assert_problem(http().get(f"{served.url}/v1/routes/{quote(who, safe='/')}/{quote(webinar, safe='')}",
                             headers=auth), 404)
    assert_problem(http().get(f"{served.url}/v1/routes/%FF/web-9", headers=auth), 404)  # not UTF-8


def test_health_and_readiness(served: Server) -> None:
    assert http().get(f"{served.url}/healthz").json() == {"status": "ok"}
    ready = http().get(f"{served.url}/readyz")
    assert ready.status_code == 200
    assert {name: check["ok"] for name, check in ready.json()["checks"].items()} == {
        "database": True, "writer": True, "queue": True}


# -- after everything else in this module: metrics, logs, secrets --------------------------

def _one_of_each_outcome(server: Server) -> None:
    """Requests with most outcomes, so the checks below stand alone (run with -k or first)."""
    headers, body = structured(entered(lead=lead()))
    assert post(server, "site-b", headers, body).status_code == 200
    assert post(server, "site-b", {"content-type": "application/cloudevents+json"}, b"{").status_code == 400
    assert http().post(server.ingest_url("site-b"), headers=headers, content=body).status_code == 401
    assert http().get(server.ingest_url("site-b")).status_code == 405
    assert post(server, "site-b", {**headers, "content-type": "text/xml"}, body).status_code == 415
    assert post(server, "site-b", headers, b" " * (300 * 1024)).status_code == 413
    assert http().options(server.ingest_url("site-b"), headers={"WebHook-Request-Origin": "x"}).status_code == 200


def test_zz_metrics_labels_come_from_closed_sets(served: Server) -> None:
    _one_of_each_outcome(served)
    samples = assert_closed_labels(served)
    names = {sample.name for sample in samples}
    for name in ("webinar_flows_ingest_requests_total", "webinar_flows_events_total",
                 "webinar_flows_ingest_duration_seconds_bucket", "webinar_flows_commit_batch_size_bucket",
                 "webinar_flows_writer_queue_depth", "webinar_flows_build_info"):
        assert name in names, name
    outcomes = {sample.labels.get("outcome") for sample in samples}
    assert {"processed", "bad_request", "unauthorized", "too_large", "unsupported_media_type",
            "method_not_allowed", "handshake"} <= outcomes


def test_zz_one_json_log_line_per_request_and_no_secret_anywhere(served: Server) -> None:
    _one_of_each_outcome(served)
    lines = served.log_lines()
    assert len(lines) >= 8
    for line in lines:
        assert set(line) == {"time", "method", "route", "key_id", "outcome", "status", "events", "duration_ms"}
    assert "site-b" in {line["key_id"] for line in lines}
    assert "nobody" not in {line["key_id"] for line in lines}
    assert_no_secret_in_output(served)
