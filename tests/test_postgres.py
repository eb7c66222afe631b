"""PostgreSQL-only behaviour of docs/storage.md and docs/deployment.md, through the installed console script:
how the database is named in messages, a missing database, a server that does not answer, the
schema made once by processes starting together, the outbox cursor with writers committing out
of seq order."""

from __future__ import annotations

import subprocess
import threading

import pytest
from conftest import entered, jsonl, result_lines
from pg_proof import WF

from engine import DatabaseMissing, StoreUnavailable
from engine.store import open_store
from engine.store.postgres import PostgresStore, describe


def run(*args: str, input: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([WF, *args], input=input, capture_output=True, timeout=120, env=env)


def test_messages_name_host_port_and_database_never_the_password() -> None:
    assert describe("postgresql://alice:s3cret@db.example:6543/flows") == 'PostgreSQL database "flows" on db.example:6543'
    assert "s3cret" not in describe("postgres://alice:s3cret@db.example/flows?sslmode=require")
    assert describe("postgresql:///flows?host=/run/postgresql") == 'PostgreSQL database "flows" on /run/postgresql:5432'


def test_a_missing_database_is_a_clear_error_naming_it(pg_url: str) -> None:
    from pg import with_dbname

    url = with_dbname(pg_url, "no_such_database_here")
    with_password = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@", 1)
    for db in (url, with_password):
        done = run("process", "-", "--db", db, input=jsonl(entered(id="m1")))
        err = done.stderr.decode()
        assert done.returncode == 1 and done.stdout == b""
        assert '"no_such_database_here"' in err and "does not exist" in err
        assert "hunter2" not in err and "Traceback" not in err
    with pytest.raises(DatabaseMissing):
        open_store(url)


def test_a_server_that_does_not_answer_is_exit_1_naming_it() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql://postgres:pw@127.0.0.1:{port}/flows"
    done = run("process", "-", "--db", url, input=jsonl(entered(id="u1")))
    err = done.stderr.decode()
    assert done.returncode == 1 and f"127.0.0.1:{port}" in err and '"flows"' in err
    assert "pw@" not in err and "Traceback" not in err
    with pytest.raises(StoreUnavailable):
        open_store(url)


def test_processes_starting_together_on_an_empty_database_make_the_schema_once(pg_url: str) -> None:
    stores: list[PostgresStore] = []
    failures: list[BaseException] = []

    def opening() -> None:
        try:
            stores.append(PostgresStore(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=opening) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures and len(stores) == 6
    from engine.store.postgres import SCHEMA_VERSION

    versions = stores[0]._all("SELECT version FROM webinar_flows_schema ORDER BY version")
    assert versions == [(n,) for n in range(1, SCHEMA_VERSION + 1)]  # each migration once
    for s in stores:
        s.close()


def test_the_cli_and_the_api_read_what_process_wrote(pg_url: str) -> None:
    done = run("process", "-", "--db", pg_url, input=jsonl(entered(id="c1"), entered(id="c1")))
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in result_lines(done.stdout.decode())] == ["accepted", "duplicate"]
    route = run("route", "--lead", "l1", "--webinar", "w1", "--db", pg_url)
    assert route.returncode == 0 and b'"in_webinar"' in route.stdout
    env = {"WEBINAR_FLOWS_DB": pg_url, "PATH": "/usr/bin:/bin"}
    again = run("route", "--lead", "l1", "--webinar", "w1", env=env)
    assert again.returncode == 0 and again.stdout == route.stdout


def test_the_outbox_never_passes_an_item_whose_transaction_commits_later(pg_url: str) -> None:
    first, second, reader = PostgresStore(pg_url), PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        item = ("k", "id-{}", "t", "{{}}", "2026-01-01T00:00:00Z")
        types = frozenset({"t"})
        cm = first.transaction()
        cm.__enter__()
        first.add_outbox([tuple(v.format(1) if isinstance(v, str) else v for v in item)])  # seq 1, open
        with second.transaction():
            second.add_outbox([tuple(v.format(2) for v in item)])  # seq 2, committed first
        items, cursor = reader.outbox_after("", types, 10)
        assert items == []  # item 2 waits behind the open transaction of item 1
        cm.__exit__(None, None, None)
        items, cursor = reader.outbox_after("", types, 10)
        assert len(items) == 2
        assert reader.outbox_after(cursor, types, 10) == ([], cursor)
        assert reader.outbox_backlog("", types) == 2 and reader.outbox_backlog(cursor, types) == 0
        with pytest.raises(ValueError):
            reader.outbox_after("12", types, 10)
    finally:
        for s in (first, second, reader):
            s.close()
