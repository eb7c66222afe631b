"""`webinar-flows serve` started as users start it, and clients made by other people's libraries.

Reuse (stress tests, kill loops): in a test module under tests/service,

    from serverkit import Server, start_server, signed, structured, binary, batched, served  # noqa

- `start_server(tmp_path, keys=..., args=...)` runs the installed console script
  `webinar-flows serve` as a subprocess on a free 127.0.0.1 port with a 0600 keys file and a
  temp database, waits for /healthz and returns a `Server`. `Server.stop()` sends SIGTERM and
  waits (then SIGKILL after a bounded wait) and returns the exit status; `Server.kill()` is a
  SIGKILL; `Server.restart()` starts a new process on the same port, keys and database (what a
  kill loop needs); `Server.output()` is everything it wrote to stdout and stderr.
- `served` (module scope) and `serve_factory` (function scope) are pytest fixtures; import them
  into a test module to use them. They stop every server they started by its PID.
- `structured(event)`, `binary(event)`, `batched(events)` build (headers, body) with the official
  CloudEvents SDK (batched mode: the SDK's structured bodies in a JSON array, as the SDK has no
  batch writer); `signed(secret, headers, body)` adds Standard Webhooks headers made by the
  `standardwebhooks` library.
- `post(server, key_id, headers, body, client=..., secret=..., msg_id=..., at=...)` signs with
  the key's secret and posts to /v1/ingest/KEY_ID.
- A writer held back without a test hook: `hold_write_lock(db)` takes SQLite's write lock in
  the test process (BEGIN IMMEDIATE); the server's writer waits on it (its busy timeout is 60 s)
  and its queue fills (start the server with `args=("--queue-events", "4")` to fill it fast).
- Checks: `stored_exactly_once(db, bodies)` (every acknowledged body is in the database once),
  `assert_closed_labels(server)` (every /metrics label value in its closed set),
  `assert_no_secret_in_output(server)` (no secret or signature in its stdout, stderr, /metrics),
  `server.log_lines()` (its JSON request lines).

These helpers live here and not in a conftest.py: tests/ imports its helpers with
`from conftest import ...`, and a second module named `conftest` would shadow that one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks import Webhook

from service.keys import new_secret

TRACKER = "client-webinar-tracker-v2"
START_SECONDS = 20.0
STOP_SECONDS = 10.0


@dataclass
class KeySpec:
    """One [keys.ID] table; secrets are made fresh unless given (the first is the newest)."""

    id: str
    emitter: str = TRACKER
    batch: bool = False
    rate: float = 1000
    secrets: list[str] = field(default_factory=lambda: [new_secret()])


DEFAULT_KEYS = (
    KeySpec("site-a", batch=True, secrets=[new_secret(), new_secret()]),  # two secrets: a rotation
    KeySpec("site-b"),
    KeySpec("slow", rate=2),
)
ORIGINS = ("wp.example",)
TOKEN = "consumer-token-" + uuid.uuid4().hex


def write_keys(path: Path, keys: tuple[KeySpec, ...] | list[KeySpec] = DEFAULT_KEYS, *,
               origins: tuple[str, ...] = ORIGINS, tokens: tuple[str, ...] = (TOKEN,), mode: int = 0o600) -> Path:
    """A keys file as an operator writes it (TOML), with `mode`."""
    lines = []
    for key in keys:
        lines += [f'[keys."{key.id}"]', f"emitter = {json.dumps(key.emitter)}",
                  f"secrets = {json.dumps(key.secrets)}", f"batch = {'true' if key.batch else 'false'}",
                  f"rate = {key.rate}", ""]
    lines += ["[handshake]", f"origins = {json.dumps(list(origins))}", "",
              "[consumers.crm]", f"tokens = {json.dumps(list(tokens))}", ""]
    path.write_text("\n".join(lines))
    path.chmod(mode)
    return path


def console_script() -> str:
    """The installed `webinar-flows` next to this Python (the venv's), else the one on PATH."""
    found = shutil.which("webinar-flows", path=str(Path(sys.executable).parent)) or shutil.which("webinar-flows")
    assert found, "the webinar-flows console script is not installed"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the variables that would point `serve` at another keys file or db."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WEBINAR_FLOWS_KEYS", "CREDENTIALS_DIRECTORY", "WEBINAR_FLOWS_DB", "WEBINAR_FLOWS_CONFIG")}
    return {**env, **extra}


@dataclass
class Server:
    """A running `webinar-flows serve` subprocess and what it was started with."""

    workdir: Path
    port: int
    db: Path
    keys_file: Path
    keys: dict[str, KeySpec]
    args: tuple[str, ...]
    proc: subprocess.Popen | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ingest_url(self, key_id: str) -> str:
        return f"{self.url}/v1/ingest/{key_id}"

    def secret(self, key_id: str, which: int = 0) -> str:
        return self.keys[key_id].secrets[which]

    def _log(self, stream: str) -> Path:
        return self.workdir / f"serve-{self.runs}.{stream}"

    def start(self) -> Server:
        """Start a process and wait until /healthz answers (bounded); fail with its stderr."""
        self.runs += 1
        command = [console_script(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--keys", str(self.keys_file), "--db", str(self.db), *self.args]
        with open(self._log("stdout"), "wb") as out, open(self._log("stderr"), "wb") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, env=clean_env())
        deadline = time.monotonic() + START_SECONDS
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.output()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                time.sleep(0.05)
        self.kill()
        raise AssertionError(f"serve did not answer /healthz within {START_SECONDS} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS) -> int | None:
        """Send `sig` to this server's PID, wait up to `timeout`, then SIGKILL; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"serve did not exit within {timeout} s of signal {sig}") from None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing gets to run."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> Server:
        self.kill()
        return self.start()

    def output(self) -> str:
        """Everything every run of this server wrote to stdout and stderr."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("serve-*.std*")))

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON request lines of every run's stderr."""
        lines = []
        for path in sorted(self.workdir.glob("serve-*.stderr")):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        return lines


def start_server(tmp_path: Path, *, keys: tuple[KeySpec, ...] | list[KeySpec] = DEFAULT_KEYS,
                 args: tuple[str, ...] = (), db: Path | None = None) -> Server:
    """Write a keys file, pick a free port and start `webinar-flows serve` (retrying a taken port)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    keys_file = write_keys(tmp_path / "keys.toml", keys)
    for attempt in range(3):
        server = Server(tmp_path, free_port(), db or tmp_path / "service.db", keys_file, {k.id: k for k in keys},
                        tuple(args))
        try:
            return server.start()
        except AssertionError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with DEFAULT_KEYS for a whole test module; stopped by PID (SIGTERM, then SIGKILL)."""
    server = start_server(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Any]:
    """`serve_factory(name, keys=..., args=...)` starts more servers; all are stopped afterwards."""
    started: list[Server] = []

    def make(name: str = "server", **kwargs: Any) -> Server:
        started.append(start_server(tmp_path / name, **kwargs))
        return started[-1]

    try:
        yield make
    finally:
        for server in started:
            server.stop()


# -- requests --------------------------------------------------------------------------

_SHARED: list[httpx.Client] = []


def http() -> httpx.Client:
    """One client for the whole test process: making an httpx client costs an SSL context
    (tens of milliseconds), which a suite of short requests would pay on every one."""
    if not _SHARED:
        _SHARED.append(httpx.Client(timeout=30.0))
    return _SHARED[0]


def _cloudevent(event: dict[str, Any]) -> CloudEvent:
    attributes = {k: v for k, v in event.items() if k != "data"}
    attributes.setdefault("datacontenttype", "application/json")
    return CloudEvent(attributes, event.get("data"))


def structured(event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """Structured mode, made by the CloudEvents SDK (which adds a `time` when there is none)."""
    message = to_structured_event(_cloudevent(event))
    return dict(message.headers), message.body


def binary(event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """Binary mode, made by the CloudEvents SDK: attributes in percent-encoded ce-* headers."""
    message = to_binary_event(_cloudevent(event))
    return dict(message.headers), message.body


def batched(events: list[dict[str, Any]]) -> tuple[dict[str, str], bytes]:
    """Batched mode: the SDK's structured form of each event, in one JSON array."""
    body = b"[" + b",".join(structured(e)[1] for e in events) + b"]"
    return {"content-type": "application/cloudevents-batch+json"}, body


def signed(secret: str, headers: dict[str, str], body: bytes, *, msg_id: str | None = None,
           at: float | None = None) -> dict[str, str]:
    """`headers` plus webhook-id/-timestamp/-signature made by the standardwebhooks library (which
    signs text: a body that is not UTF-8 is signed by hand the same way, for hostile-input tests)."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    timestamp = str(int(moment.timestamp()))
    try:
        signature = Webhook(secret).sign(msg_id, moment, body.decode("utf-8"))
    except UnicodeDecodeError:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        signature = "v1," + base64.b64encode(digest).decode()
    return {**headers, "webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


def post(server: Server, key_id: str, headers: dict[str, str], body: bytes, *, secret: str | None = None,
         client: httpx.Client | None = None, **sign: Any) -> httpx.Response:
    """POST `body` to the key's URL, signed with the key's (first) secret unless `secret` is given."""
    headers = signed(secret or server.secret(key_id), headers, body, **sign)
    return (client or http()).post(server.ingest_url(key_id), headers=headers, content=body, timeout=30.0)


# -- checks any test can run on a server it used -----------------------------------------

def metric_samples(server: Server) -> list[Any]:
    """The samples of the server's /metrics, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http().get(f"{server.url}/metrics", timeout=10).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def assert_closed_labels(server: Server) -> list[Any]:
    """Every label value of /metrics is in its closed set (the config's emitters and types, the
    outcome and status vocabularies, `other`); returns the samples for further checks."""
    import service.metrics as metrics
    from engine import bundled_config, load_config
    from service.problems import OUTCOMES

    config = load_config(bundled_config())
    allowed: dict[str, set[str] | None] = {
        "outcome": {*OUTCOMES, *getattr(metrics, "DELIVERY_OUTCOMES", ())}, "emitter": {*config.emitters, "other"},
        "type": {*config.events, "other"}, "status": {*metrics.STATUSES, "other"},
        "consumer": {*getattr(config, "consumers", {}), "other"},
        "le": None, "version": None, "config_hash": {config.hash}}
    samples = metric_samples(server)
    for sample in samples:
        for label, value in sample.labels.items():
            assert label in allowed, (sample.name, label)
            assert allowed[label] is None or value in allowed[label], (sample.name, label, value)
    return samples


def assert_no_secret_in_output(server: Server) -> None:
    """No secret of the keys file (whole or its base64 part) and no signature in anything the
    server wrote or serves on /metrics."""
    output = server.output()
    if server.proc is not None and server.proc.poll() is None:
        output += http().get(f"{server.url}/metrics", timeout=10).text
    for spec in server.keys.values():
        for secret in spec.secrets:
            assert secret not in output and secret[len("whsec_"):] not in output
    assert "webhook-signature" not in output.lower() and "v1," not in output


def stored_exactly_once(db: Path, bodies: list[bytes]) -> bool:
    """Each event (the body that was sent; the SDK adds a `time`, so resend bytes, not dicts) is in
    the database: processing it again is a duplicate of what is stored. Run it on a stopped
    server's database, or accept that it writes nothing but may wait for the writer's lock."""
    from engine import Engine

    with Engine.open(config=None, db=db) as eng:
        results = eng.process_many(bodies)
    return all((r["status"], r["reason"]) == ("duplicate", "same_envelope") for r in results)


@contextlib.contextmanager
def hold_write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """SQLite's write lock on `db`, held by this process until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def count_wakes(writer: Any) -> list[int]:
    """The wake-ups of `writer`'s thread from now on (each a `notify` of its condition)."""
    wakes: list[int] = []
    notify = writer._lock.notify

    def counting(n: int = 1) -> None:
        wakes.append(n)
        notify(n)

    writer._lock.notify = counting
    return wakes
