"""The outbox over HTTP in `serve` (docs/consuming.md: the HTTP feed and push): GET
/v1/feed/{consumer} with its long poll, POST /v1/feed/{consumer}/ack, consumer tokens (a
token opens only its consumer), and the background deliverer (`--no-deliver` turns it off).
One `serve` process on 127.0.0.1 for the module, stopped by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_consumers_config import with_consumers
from test_delivery import SECRET, Receiver
from test_outbox import EVERYTHING, lines

from engine import Engine, load_config
from service.keys import new_secret

WF = Path(sys.executable).with_name("webinar-flows")
TOKEN_ALL = "tok-everything-0123456789"
TOKEN_SCREEN = "tok-screen-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Serve:
    def __init__(self, root: Path, receiver_url: str, *args: str):
        self.config_dir = with_consumers(root / "config", EVERYTHING)
        self.db = root / "serve.db"
        keys = root / "keys.toml"
        keys.write_text(f'[keys.site]\nemitter = "client-webinar-tracker-v2"\nsecrets = ["{new_secret()}"]\n\n'
                        f'[consumers.everything]\ntokens = ["{TOKEN_ALL}"]\nurl = "{receiver_url}"\n'
                        f'secrets = ["{SECRET}"]\n\n[consumers.screen-mirror]\ntokens = ["{TOKEN_SCREEN}"]\n')
        keys.chmod(0o600)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}
        self.proc = subprocess.Popen([str(WF), "serve", "--port", str(self.port), "--keys", str(keys),
                                      "--config", str(self.config_dir), "--db", str(self.db), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("serve did not start")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def process(self, count: int, seed: int) -> None:
        with Engine.open(load_config(self.config_dir), self.db) as engine:
            engine.process_many([line.replace(b'"lead-', f'"lead{seed}-'.encode()) for line in lines(count, 5, seed=seed)])
            engine.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Serve]:
    server = Serve(tmp_path_factory.mktemp("feedhttp"), receiver.url)
    try:
        yield server
    finally:
        assert server.stop() == 0


def get(served: Serve, consumer: str, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{served.url}/v1/feed/{consumer}", params=params, headers=headers, timeout=40)


def ack(served: Serve, consumer: str, token: str, body: Any) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/feed/{consumer}/ack", json=body,
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_tokens_open_only_their_consumer(served: Serve) -> None:
    assert get(served, "screen-mirror", None).status_code == 401
    assert get(served, "screen-mirror", "not-a-token").status_code == 401
    assert get(served, "everything", TOKEN_SCREEN).status_code == 403
    assert ack(served, "everything", TOKEN_SCREEN, {"cursor": ""}).status_code == 403
    assert get(served, "nobody", TOKEN_SCREEN).status_code == 404
    assert get(served, "screen-mirror", TOKEN_SCREEN).status_code == 200
    for answer in (get(served, "screen-mirror", "not-a-token"), get(served, "nobody", TOKEN_SCREEN)):
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert TOKEN_SCREEN not in answer.text


def test_feed_reads_from_the_stored_cursor_and_ack_moves_it(served: Serve) -> None:
    served.process(150, seed=1)
    first = get(served, "screen-mirror", TOKEN_SCREEN, limit=5).json()
    assert len(first["items"]) == 5 and first["cursor"]
    assert get(served, "screen-mirror", TOKEN_SCREEN, limit=5).json() == first  # GET never moves it
    assert ack(served, "screen-mirror", TOKEN_SCREEN, {"cursor": first["cursor"]}).status_code == 200
    rest = get(served, "screen-mirror", TOKEN_SCREEN, limit=1000).json()
    assert rest["items"] and not {i["id"] for i in rest["items"]} & {i["id"] for i in first["items"]}
    after = get(served, "screen-mirror", TOKEN_SCREEN, after=rest["cursor"]).json()
    assert after == {"items": [], "cursor": rest["cursor"]}
    again = get(served, "screen-mirror", TOKEN_SCREEN, after="", limit=1000).json()  # from the beginning
    assert [i["id"] for i in again["items"]] == [i["id"] for i in first["items"] + rest["items"]]
    assert ack(served, "screen-mirror", TOKEN_SCREEN, {"cursor": "not a cursor"}).status_code == 400
    assert ack(served, "screen-mirror", TOKEN_SCREEN, {"nope": 1}).status_code == 400
    assert get(served, "screen-mirror", TOKEN_SCREEN, after="junk").status_code == 400
    assert get(served, "screen-mirror", TOKEN_SCREEN, limit=0).status_code == 400


def test_a_cursor_past_the_newest_item_or_a_loose_number_is_refused(served: Serve) -> None:
    served.process(60, seed=3)
    head = get(served, "screen-mirror", TOKEN_SCREEN, after="", limit=1000).json()["cursor"]
    past = str(int(head) + 5)
    for answer in (ack(served, "screen-mirror", TOKEN_SCREEN, {"cursor": past}),
                   get(served, "screen-mirror", TOKEN_SCREEN, after=past)):
        assert answer.status_code == 400, answer.text
        assert "past the newest item" in answer.json()["detail"]
    # the stored cursor did not move: the items committed later are all still fed
    served.process(60, seed=4)
    fed = get(served, "screen-mirror", TOKEN_SCREEN, after=head, limit=1000).json()["items"]
    assert fed and get(served, "screen-mirror", TOKEN_SCREEN, limit=1000).json()["items"][-len(fed):] == fed
    for params in ({"limit": "1.5"}, {"limit": "1e1"}, {"limit": "+3"}, {"limit": " 3"}, {"limit": "\u0663"},
                   {"after": "05"}, {"after": "\u0665"}, {"wait": "abc"}, {"wait": "-1"}, {"wait": "nan"}):
        answer = get(served, "screen-mirror", TOKEN_SCREEN, **params)
        assert answer.status_code == 400, params
    assert "at most 30 are waited" in get(served, "screen-mirror", TOKEN_SCREEN, wait="soon").json()["detail"]
    assert get(served, "screen-mirror", TOKEN_SCREEN, limit="3").json()["items"].__len__() == 3


def test_long_poll_waits_for_new_items(served: Serve) -> None:
    cursor = get(served, "screen-mirror", TOKEN_SCREEN, after="", limit=1000).json()["cursor"]
    while True:  # past everything there is
        page = get(served, "screen-mirror", TOKEN_SCREEN, after=cursor, limit=1000).json()
        if not page["items"]:
            break
        cursor = page["cursor"]
    start = time.monotonic()
    empty = get(served, "screen-mirror", TOKEN_SCREEN, after=cursor, wait=1).json()
    assert empty["items"] == [] and 0.9 <= time.monotonic() - start < 5
    got: dict[str, Any] = {}

    def poll() -> None:
        begun = time.monotonic()
        got["page"] = get(served, "screen-mirror", TOKEN_SCREEN, after=cursor, wait=20).json()
        got["seconds"] = time.monotonic() - begun

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(1.0)
    served.process(60, seed=2)
    waiter.join(30)
    assert got["page"]["items"] and 0.9 <= got["seconds"] < 15  # answered when items came, not at 20 s


def test_serve_pushes_to_consumers_with_a_url(served: Serve, receiver: Receiver) -> None:
    served.process(40, seed=3)
    with Engine.open(load_config(served.config_dir), served.db) as engine:
        items = engine.feed("everything", 100_000, cursor="")[0]
        engine.close()
    deadline = time.monotonic() + 30
    while set(receiver.ok_ids()) != {i["id"] for i in items} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(receiver.ok_ids()) == {i["id"] for i in items}
    assert receiver.bad_signatures == 0
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert 'webinar_flows_delivery_attempts_total{consumer="everything",outcome="done"}' in metrics


def test_no_deliver_sends_nothing(tmp_path: Path) -> None:
    quiet = Receiver()
    server = Serve(tmp_path, quiet.url, "--no-deliver")
    try:
        server.process(40, seed=4)
        time.sleep(1.5)
        assert quiet.got == []
    finally:
        assert server.stop() == 0
        quiet.close()
