"""The current schema on databases the previous releases wrote: each migrates (schema 5) or opens
as it is (schema 6), and every read returns what it returned before, byte for byte.

tests/data/schema5.sql and schema6.sql are databases as SQL (made by tests/data/make_schema.sh
with the last release at schema 5, then at schema 6; the next schema step tests its migration on
both): the example stream processed under a
config with consumers, redeliveries, an id conflict, rejections of every kind (one too large,
kept truncated), evaluations, two consumers' acknowledged cursors, a second config (another
hash) under which a reprocess admitted a rejection, and two events recorded by an injected clock
whose times the engine's own clock never writes (`.000000Z`, `+01:00`), which must stay text.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.store.base import RejectionFilter
from engine.store.sqlite import SCHEMA_VERSION, SQLiteReader
from engine.store.timepack import pack_time, unpack_time

SCHEMA5 = Path(__file__).resolve().parent / "data" / "schema5.sql"
SCHEMA6 = Path(__file__).resolve().parent / "data" / "schema6.sql"
CONFIG = Path(__file__).resolve().parent / "data" / "consumers_example.yaml"
OLD_TABLES = ("inputs", "envelopes", "facts", "routes", "route_history", "actions", "outbox", "rejections",
              "evaluations", "consumer_cursors")
ORDER = {"envelopes": "source, id", "routes": "route_key", "consumer_cursors": "consumer"}
EVERY_TYPE = frozenset({"action.route", "action.screen", "action.reminder", "client_webinar_attendance_classified",
                        "post_webinar_route"})


def schema5(path: Path) -> Path:
    return load(SCHEMA5, path)


def load(dump: Path, path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(dump.read_text("utf-8"))
    conn.close()
    return path


def tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every schema-5 table, as a direct SQL reader sees them."""
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {ORDER.get(t, 'seq')}").fetchall() for t in OLD_TABLES}
    finally:
        conn.close()


def reads(db: Path) -> dict[str, Any]:
    """Everything the read port answers about the database."""
    with SQLiteReader(db) as reader:
        keys = sorted(reader.route_states())
        inputs = list(reader.inputs())
        return {
            "routes": {k: reader.route_row(k) for k in keys},
            "history": {k: reader.history(k) for k in keys},
            "stories": {k: vars(reader.key_story(k, body_texts=("lead",), raw_texts=(b"lead",))) for k in keys},
            "inputs": inputs,
            "input_bytes": [reader.input_bytes(row) for row in inputs],
            "evaluations": list(reader.evaluations()),
            "rejections": list(reader.rejections(RejectionFilter(state="all"), raw=True)),
            "config_hashes": reader.config_hashes(),
            "outbox": reader.outbox_after("", EVERY_TYPE, 1000),
            "cursors": {c: reader.cursor_of(c) for c in ("reminder-sender", "screen-mirror", "nobody")},
            "counts": reader.route_counts(),
            "size": reader.history_size(),
        }


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    return schema5(tmp_path / "v5.db")


@pytest.fixture
def v6_db(tmp_path: Path) -> Path:
    return load(SCHEMA6, tmp_path / "v6.db")


@pytest.fixture(params=["schema5", "schema6"])
def any_old_db(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return load({"schema5": SCHEMA5, "schema6": SCHEMA6}[request.param], tmp_path / "old.db")


def version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_the_fixture_is_a_schema_5_database(old_db: Path):
    assert version(old_db) == 5
    before = tables(old_db)
    assert len({row[-2] for row in before["inputs"]}) == 2  # two config hashes
    assert {"2026-02-12T09:00:00.000000Z", "2026-02-12T10:00:00+01:00"} <= {row[-1] for row in before["facts"]}
    assert any(row[-1] is not None for row in before["rejections"])  # a resolved one


def test_an_old_database_opens_at_the_current_schema_and_reads_back_the_same(any_old_db: Path):
    """Schema 5 migrates; schema 6 (the current one) opens as it is."""
    tables_before, reads_before = tables(any_old_db), reads(any_old_db)
    with Engine.open(db=any_old_db):
        pass
    assert version(any_old_db) == SCHEMA_VERSION == 6
    assert tables(any_old_db) == tables_before
    assert reads(any_old_db) == reads_before


def test_the_migration_stores_hashes_and_times_lean_and_keeps_odd_times_as_text(old_db: Path):
    with Engine.open(db=old_db):
        pass
    conn = sqlite3.connect(old_db)
    try:
        assert conn.execute("SELECT count(*) FROM configs").fetchone()[0] == 2
        kinds = dict(conn.execute("SELECT typeof(recorded_at), count(*) FROM stored_facts GROUP BY 1"))
        assert kinds["integer"] > 0
        assert {r[0] for r in conn.execute("SELECT recorded_at FROM stored_facts WHERE typeof(recorded_at) = 'text'")} \
            == {"2026-02-12T09:00:00.000000Z", "2026-02-12T10:00:00+01:00"}
        # every envelope sits in the row of the input that claimed it; none is kept apart
        assert conn.execute("SELECT count(*) FROM stored_envelopes").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM stored_inputs WHERE body IS NOT NULL").fetchone()[0] == \
            conn.execute("SELECT count(*) FROM envelopes").fetchone()[0] > 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_the_fixture_is_a_schema_6_database(v6_db: Path):
    assert version(v6_db) == 6
    conn = sqlite3.connect(v6_db)
    try:
        assert conn.execute("SELECT count(*) FROM stored_facts WHERE identity IS NOT NULL").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM stored_facts WHERE identity IS NULL").fetchone()[0] > 0
    finally:
        conn.close()
    assert len({row[-2] for row in tables(v6_db)["inputs"]}) == 2  # two config hashes


def _feed(db: Path, config: Path, consumer: str) -> list[dict[str, Any]]:
    """The consumer's next items, acknowledged."""
    with Engine.open(config, db=db) as eng:
        items, cursor = eng.feed(consumer, 1000)
        eng.ack(consumer, cursor)
        return items


def _config(tmp_path: Path) -> Path:
    from test_consumers_config import with_consumers

    return with_consumers(tmp_path / "config", CONFIG.read_text("utf-8"))


def test_after_the_migration_the_engine_goes_on_where_it_was(any_old_db: Path, tmp_path: Path):
    config = _config(tmp_path)
    stream = [line for line in (Path(__file__).resolve().parents[1] / "examples" / "events.jsonl")
              .read_bytes().splitlines() if line.strip()]
    with Engine.open(config, db=any_old_db) as eng:
        again = eng.process_many(stream[:3])
        conflict = eng.process(stream[1].replace(b"18:01:00Z\",\"lead_id", b"18:01:09Z\",\"lead_id"))
        resent = eng.process(stream[1].replace(b'"id":"', b'"id":"resent-', 1))  # a new id, the same fact
        route = eng.route(lead_id="lead-001", webinar_id="webinar-2026-02")
        story = eng.explain(lead_id="lead-777", webinar_id="webinar-2026-02")
    # the migrated envelopes still dedupe (the first line's emitter is not approved by this config)
    assert [(r["status"], r["reason"]) for r in again] == [
        ("rejected", "unauthorized_emitter"), ("duplicate", "same_envelope"), ("duplicate", "same_envelope")]
    assert conflict["reason"] == "id_conflict"
    assert (resent["status"], resent["reason"]) == ("duplicate", "same_fact")  # the migrated facts still dedupe
    assert route["state"] == "form_submitted"
    assert story  # the story of a lead recorded under the second config
    # the outbox goes on from each consumer's acknowledged cursor: the reminder sender had taken 2
    remaining = _feed(any_old_db, config, "reminder-sender")
    assert remaining and all(item["type"] in ("action.reminder", "post_webinar_route") for item in remaining)
    assert _feed(any_old_db, config, "reminder-sender") == []


@pytest.mark.parametrize("text", [
    "2026-02-10T18:00:00Z", "2026-02-10T18:00:00.000001Z", "2026-02-10T18:00:00.999999Z", "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z", "2026-02-10T18:00:00.000000Z", "2026-02-10T18:00:60Z", "1969-12-31T23:59:59Z",
    "2026-02-10T18:00:00+01:00", "2026-02-10t18:00:00Z", "2026-02-10T18:00:00.12Z", "2026-02-30T00:00:00Z",
    "2026-02-10T18:00:00.1234567Z", "", "now",
])
def test_a_stored_time_reads_back_as_the_text_written(text: str):
    stored = pack_time(text)
    assert unpack_time(stored) == text
    conn = sqlite3.connect(":memory:")
    from engine.store.sqlite_migrations import TIME_TEXT

    assert conn.execute(f"SELECT {TIME_TEXT.format('?1')}", (stored,)).fetchone()[0] == text


def test_the_clock_times_are_stored_as_integers():
    from engine.timefmt import UtcClock

    clock = UtcClock()
    for _ in range(1000):
        text = clock()
        assert isinstance(pack_time(text), int)
        assert unpack_time(pack_time(text)) == text
