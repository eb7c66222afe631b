"""The pipeline's core tests of test_pipeline.py (those that judge results, not SQLite rows) on a
PostgreSQL database: imported here and collected again with this module's `engine`; plus
process_many against one-by-one processing on PostgreSQL, rule failures and every duplicate
kind included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_pipeline import (  # noqa: F401  (collected again with `engine` below)
    _mixed_stream,
    add_broken_rule,
    test_64_bit_integers_are_the_edge_of_the_number_range,
    test_a_lone_surrogate_is_a_parse_error_before_any_envelope_check,
    test_an_event_that_is_not_an_object_is_an_invalid_envelope,
    test_an_invalid_extension_attribute_name_is_an_invalid_envelope,
    test_an_invalid_extension_attribute_name_points_at_the_attribute,
    test_each_extra_payload_field_is_its_own_error,
    test_invalid_envelope_paths_and_codes,
    test_invalid_payload_paths_and_codes,
    test_lone_surrogate_in_an_otherwise_valid_event_is_malformed_json,
    test_malformed_json_codes,
    test_optional_envelope_attributes_are_accepted,
    test_process_does_not_raise_on_a_deeply_nested_dict,
    test_process_many_numbers_lines_from_first_line,
    test_process_never_raises_on_garbage,
    test_process_never_raises_on_non_mapping_values,
    test_results_have_exactly_the_documented_keys_and_serialise,
    test_same_envelope_is_a_duplicate_whatever_the_spelling,
    test_same_fact_is_a_duplicate,
    test_the_first_failing_step_decides_the_reason,
    test_too_large_default_limit_is_256_kib,
    test_too_large_is_refused_without_parsing,
    test_unauthorized_emitter,
    test_unknown_event,
)

from engine import Engine, load_config


@pytest.fixture(scope="module")
def module_pg() -> Iterator[str]:
    """One database for the module (creating one per test would cost more than the tests)."""
    from pg import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture
def engine(module_pg: str) -> Iterator[Engine]:
    """An engine on the module's database, emptied first (every table, sequences restarted)."""
    import psycopg

    with Engine.open(db=module_pg) as eng, psycopg.connect(module_pg, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                                             " AND tablename <> 'webinar_flows_schema'")]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        yield eng


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_process_many_equals_one_by_one_on_postgres(config_copy: Path, tmp_path: Path, pg_url: str,
                                                     batch_size: int) -> None:
    import pg

    add_broken_rule(config_copy)
    config = load_config(config_copy)
    stream = _mixed_stream()
    with Engine.open(config=config, db=tmp_path / "serial.db", max_event_bytes=2000) as serial:
        expected = [serial.process(e) for e in stream]
    assert ("rejected", "rule_failed") in {(r["status"], r["reason"]) for r in expected}
    with Engine.open(config=config, db=pg_url, max_event_bytes=2000) as batched:
        assert batched.process_many(iter(stream), batch_size=batch_size) == expected
    other = pg.create_database()
    try:
        with Engine.open(config=config, db=other, max_event_bytes=2000) as one_by_one:
            assert [one_by_one.process(e) for e in stream] == expected
    finally:
        pg.drop_database(other)
