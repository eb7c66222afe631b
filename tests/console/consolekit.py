"""Helpers for the console tests: a config pair, a seeded database, a keys file with a console
user, and a logged-in TestClient.

The config pair: `strict` is the default config (client_webinar_registered has no emitter, so
it is rejected unauthorized_emitter); `approving` is the same with the tracker approved for it,
so a rejection stored under `strict` is accepted when re-processed under `approving`, which
also declares a consumer of the outbox.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from conftest import ROOT, completed, entered, registered
from engine import Engine
from service.keys import new_secret

USER, PASSWORD = "ann", "correct horse battery staple"
TRACKER = "client-webinar-tracker-v2"
APPROVE = "      client_webinar_completed: implemented\n"


def configs(tmp: Path) -> tuple[Path, Path]:
    """(strict, approving) config directories."""
    strict, approving = tmp / "strict", tmp / "approving"
    for target in (strict, approving):
        target.mkdir(parents=True, exist_ok=True)
        for name in ("events.yaml", "emitters.yaml", "states.yaml"):
            shutil.copy(ROOT / name, target / name)
        shutil.copytree(ROOT / "rules", target / "rules", dirs_exist_ok=True)
    text = (approving / "emitters.yaml").read_text()
    assert APPROVE in text
    (approving / "emitters.yaml").write_text(text.replace(APPROVE, APPROVE + "      client_webinar_registered: planned\n"))
    (approving / "consumers.yaml").write_text(
        "consumers:\n  reminder-sender:\n    description: sends the reminders the scenario decides\n"
        "    receives:\n      actions: [reminder]\n      events: [post_webinar_route]\n")
    return strict, approving


def seed(config: Path, db: Path) -> list[dict[str, Any]]:
    """A small history: two routes, a duplicate, three kinds of rejection (one fixable)."""
    events: list[Any] = [
        completed(lead="L1", webinar="W1", id="c-1"),
        completed(lead="L1", webinar="W1", id="c-1"),                    # duplicate, same envelope
        entered(lead="L2", webinar="W1", id="e-2"),
        registered(lead="L3", webinar="W1", id="r-3"),                    # unauthorized_emitter: fixable
        b"{not json",                                                     # malformed_json
        b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":{"v":"\xff"}}',  # not UTF-8
    ]
    with Engine.open(config=config, db=db) as engine:
        return engine.process_many(events)


def write_keys(path: Path, users: dict[str, str] | None = None, *, secret: str | None = "s" * 43) -> Path:
    users = {USER: PASSWORD} if users is None else users
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)  # fast in tests; verify reads them
    lines = [f'[keys.site-a]\nemitter = "{TRACKER}"\nsecrets = ["{new_secret()}"]\n']
    if secret is not None:
        lines.append(f'[console]\nsession_secret = "{secret}"\n')
    for name, password in users.items():
        lines.append(f'[console.users.{name}]\npassword_hash = "{hasher.hash(password)}"\n')
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def log_in(client: Any, user: str = USER, password: str = PASSWORD) -> str:
    """Log `client` in through the form; the session's CSRF token."""
    token = csrf_of(client.get("/console/login").text)
    answer = client.post("/console/login", data={"username": user, "password": password, "csrf": token},
                         follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console", answer.text
    return csrf_of(client.get("/console").text)
