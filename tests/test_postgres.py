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
    assert describe("postgresql:///flows") == 'PostgreSQL database "flows" on the local socket:5432'  # not "localhost"
    assert describe("postgres://u:s3cret@h1,h2:5433/db") == 'PostgreSQL database "db" on h1:5432, h2:5433'


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


def test_someone_elses_tables_are_refused_alike_by_every_command(pg_url: str) -> None:
    """Tables named as ours without our version table: `process` and the read-only commands all
    say it is not a webinar-flows database (a reader advised to "process some events first")."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE facts (x int); CREATE TABLE inputs (y int)")
    for args in (("process", "-"), ("route", "--lead", "a", "--webinar", "b"), ("rejections",)):
        done = run(*args, "--db", pg_url, input=jsonl(entered(id="f1")))
        err = done.stderr.decode()
        assert done.returncode == 1 and "not a webinar-flows database" in err, (args, err)
        assert "process some events first" not in err
    with psycopg.connect(pg_url, autocommit=True) as conn:  # left untouched
        assert conn.execute("SELECT count(*) FROM facts").fetchone()[0] == 0


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
        first.route_row("k")  # a read of the read port: the buffered insert above has now run on the server
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


def _need_cluster_control() -> None:
    import os

    from pg_proof import can_restart

    if not can_restart():
        if os.environ.get("CI"):
            pytest.fail("$WEBINAR_FLOWS_TEST_PG_DATA is needed to stop and start the cluster (.ci/run sets it)")
        pytest.skip("$WEBINAR_FLOWS_TEST_PG_DATA (the test cluster's data directory) is not set")


@pytest.mark.slow
def test_serve_answers_503_while_the_database_is_down_and_recovers_by_itself(tmp_path, pg_url: str) -> None:
    import sys
    from pathlib import Path

    import httpx

    sys.path.insert(0, str(Path(__file__).parent / "service"))
    from pg_proof import pg_start, pg_stop
    from serverkit import post, start_server, structured

    _need_cluster_control()
    server = start_server(tmp_path / "serve", db=pg_url)  # type: ignore[arg-type]
    try:
        headers, body = structured(entered(lead="d1", id="down-1"))
        assert post(server, "site-b", headers, body).status_code == 200
        options = pg_stop()
        try:
            headers, body = structured(entered(lead="d2", id="down-2"))
            answer = post(server, "site-b", headers, body)
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert '"test_' in answer.text and "Traceback" not in answer.text
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
        finally:
            pg_start(options)
        headers, body = structured(entered(lead="d3", id="down-3"))
        assert post(server, "site-b", headers, body).status_code == 200  # reconnected by itself
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_process_rides_out_a_database_outage_and_applies_every_event_once(tmp_path, pg_url: str) -> None:
    import time

    from pg_proof import applied_twice, differences, holdings, pg_start, pg_stop, reference, stream, worker, write_lines

    _need_cluster_control()
    events = stream(600, seed=21)
    source = write_lines(tmp_path / "in.jsonl", events)
    expected = holdings(reference(events, tmp_path / "reference.db"))
    out = tmp_path / "out.jsonl"
    proc = worker(source, pg_url, out, batch_size=5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(out.read_bytes().splitlines()) < 50:
        time.sleep(0.05)  # until it has connected and committed a few batches
    assert proc.poll() is None, "the run ended before the outage: make the stream longer"
    options = pg_stop()
    time.sleep(3)
    pg_start(options)
    assert proc.wait(120) == 0, out.with_suffix(".err").read_text()[-2000:]
    lines = [line for line in out.read_bytes().splitlines()]
    assert len(lines) == len(events)  # one result per line: the batch it was committing ran again
    got = holdings(pg_url)
    assert not applied_twice(got) and not differences(expected, got)


def test_a_pipelined_write_that_fails_is_raised_at_the_next_answer_and_the_session_recovers(pg_url: str) -> None:
    """Write transactions run in psycopg's pipeline mode: a write whose answer is not read (a
    route fix) fails only when the next answer is fetched, or at the commit. It must still be the
    StoreConflict the engine retries on, never hidden by a savepoint's rollback, and the session
    must be left outside any transaction (its ROLLBACK runs after the pipeline is synced)."""
    import psycopg

    from engine import StoreConflict, StoreError

    store, holder = PostgresStore(pg_url), psycopg.connect(pg_url, autocommit=True)
    try:
        with store.transaction():
            store.create_route("k", "s0", "h", "2026-01-01T00:00:00Z")
        store.conn.execute("SET lock_timeout = 200")
        with holder.transaction():  # holds the route's row, not its advisory lock
            holder.execute("SELECT 1 FROM routes WHERE route_key = 'k' FOR UPDATE")
            with pytest.raises(StoreConflict), store.transaction():  # raised at the commit's sync
                store.fix_route("k", "s1", None, "h", "2026-01-01T00:00:01Z")
            with pytest.raises(StoreConflict), store.transaction():  # raised by a later read, in a savepoint
                store.fix_route("k", "s1", None, "h", "2026-01-01T00:00:01Z")
                with store.savepoint():
                    store.has_identity("t", "i")
            with pytest.raises(StoreError), store.transaction():  # refused by the driver mid-pipeline (a NUL in text)
                store.append_history("k", "s0", "s1", {"source": "s", "id": "a\x00b", "type": "t"}, 1, "h", "x")
                store.add_outbox([("k", "o1", "t", "{}", "x")])
        assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with store.transaction():
            assert store.claim_envelope("s", "e1", "{}", "h") is True
            assert store.claim_envelope("s", "e1", "{}", "h") is False  # ON CONFLICT DO NOTHING: no row
            store.fix_route("k", "s2", None, "h", "2026-01-01T00:00:02Z")
            assert store.route_state("k") == ("s2", None)
            assert store.purge_rejections([12345]) == 0
            assert store.take_lease("d", "me", 1.0, 2.0) is True  # rowcounts are read after a sync
            assert store.take_lease("d", "other", 1.5, 3.0) is False
        assert store.take_lease("c", "me", 1.0, 2.0) is True and store.take_lease("c", "other", 1.5, 3.0) is False
        assert store.route_row("k")["version"] == 1
    finally:
        holder.close()
        store.close()
