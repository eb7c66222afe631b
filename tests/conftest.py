"""Shared fixtures: the default config, a fresh engine per test, event builders, the CLI."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from engine import Engine
from engine.config.locate import bundled_config

ROOT = Path(__file__).resolve().parent.parent
TRACKER = "client-webinar-tracker-v2"
_ids = itertools.count(1)


def envelope(type_: str, data: dict[str, Any], *, source: str = TRACKER, id: str | None = None,
             **attrs: Any) -> dict[str, Any]:
    """A CloudEvent; a fresh id unless one is given."""
    return {"specversion": "1.0", "id": id or f"evt-{next(_ids)}", "source": source, "type": type_,
            "data": data, **attrs}


def entered(lead: str | None = "l1", webinar: str = "w1", ts: str = "2026-02-01T18:00:00Z", **kw: Any) -> dict:
    data = {"webinar_id": webinar, "timestamp": ts}
    if lead is not None:
        data["lead_id"] = lead
    return envelope("client_webinar_entered", data, **kw)


def completed(lead: str = "l1", webinar: str = "w1", session: str = "s1",
              at: str = "2026-02-01T19:00:00Z", **kw: Any) -> dict:
    return envelope("client_webinar_completed", {"lead_id": lead, "webinar_id": webinar, "webinar_type": "live",
                                                 "session_id": session, "completed_at": at}, **kw)


def form_submitted(lead: str = "l1", webinar: str = "w1", session: str = "s1", form: str = "f1",
                   at: str = "2026-02-01T19:10:00Z", answers: dict | None = None, **kw: Any) -> dict:
    return envelope("client_webinar_form_submitted", {
        "lead_id": lead, "webinar_id": webinar, "webinar_type": "live", "session_id": session,
        "submitted_at": at, "form_id": form, "form_payload": answers if answers is not None else {"q1": "yes"}}, **kw)


def registered(lead: str = "l1", webinar: str = "w1", **kw: Any) -> dict:
    return envelope("client_webinar_registered", {"lead_id": lead, "webinar_id": webinar, "webinar_type": "live",
                                                  "registered_at": "2026-01-20T10:00:00Z", "source": "landing"},
                    **kw)


def left(lead: str = "l1", webinar: str = "w1", session: str = "s1", **kw: Any) -> dict:
    return envelope("client_webinar_left", {"lead_id": lead, "webinar_id": webinar, "webinar_type": "live",
                                            "session_id": session, "left_at": "2026-02-01T18:30:00Z",
                                            "leave_reason": "network_loss"}, **kw)


@pytest.fixture
def default_config() -> Path:
    return bundled_config()


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    """A writable copy of the default config, for tests that edit it."""
    target = tmp_path / "config"
    target.mkdir()
    src = bundled_config()
    for name in ("events.yaml", "emitters.yaml", "states.yaml"):
        shutil.copy(src / name, target / name)
    shutil.copytree(src / "rules", target / "rules")
    return target


@pytest.fixture
def open_engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Open engines on a database under tmp_path; all are closed after the test."""
    opened: list[Engine] = []

    def make(config: Path | None = None, db: Path | None = None, **kw: Any) -> Engine:
        eng = Engine.open(config=config, db=db or tmp_path / "test.db", **kw)
        opened.append(eng)
        return eng

    yield make
    for eng in opened:
        eng.close()


@pytest.fixture
def engine(open_engine: Callable[..., Engine]) -> Engine:
    return open_engine()


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Invoke the CLI in-process, in tmp_path, with the bundled config unless told otherwise."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEBINAR_FLOWS_CONFIG", raising=False)
    monkeypatch.delenv("WEBINAR_FLOWS_DB", raising=False)

    def invoke(*args: str, input: str | bytes | None = None) -> Any:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """Record a measured figure (for docs/RELIABILITY.md): figure("kills_mid_run", 23).

    Figures go to the JSON Lines file named by $WEBINAR_FLOWS_FIGURES when it is set
    (`make reliability-figures` sets it), and always to the test's report properties.
    """
    def record(name: str, value: Any) -> None:
        request.node.user_properties.append((name, value))
        target = os.environ.get("WEBINAR_FLOWS_FIGURES")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps({"test": request.node.nodeid, "name": name, "value": value}) + "\n")

    return record


def jsonl(*events: dict | str | bytes) -> bytes:
    """JSON Lines bytes from events (dicts are dumped, str/bytes taken as the raw line)."""
    out = []
    for e in events:
        if isinstance(e, dict):
            out.append(json.dumps(e).encode())
        elif isinstance(e, str):
            out.append(e.encode())
        else:
            out.append(e)
    return b"\n".join(out) + b"\n"


def result_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (tests/pg.py), dropped after it; skips without
    $WEBINAR_FLOWS_TEST_PG, fails without it in CI."""
    from pg import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database on each backend the CLI and the service run on: a SQLite file, then a fresh
    PostgreSQL database (skipped locally without a server, see `pg_url`)."""
    if request.param == "sqlite":
        yield str(tmp_path / "test.db")
        return
    from pg import fresh_database

    with fresh_database() as url:
        yield url
