"""How the PostgreSQL store's bulk rows travel (engine/store/postgres.py, "how the bulk rows'
columns travel"): a text column as one string joined by a control character none of its values
holds, split again by the server; an integer column as a binary array packed in Python. What the
server gets back must be exactly the column: NULLs, empty strings, values holding the separators,
values equal to the null marker, integers at their type's bounds; and a column that cannot be
joined or packed goes as psycopg's array, in the statement's other form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.store.base import FactRow
from engine.store.postgres import _SEPARATORS, PostgresStore, _joined, _packed

TEXTS = {
    "plain": ["a", "b", "c"],
    "nulls and empties": ["a", None, "", None, "é", ""],
    "separators inside": ["x\x1fy", "\x1f", "z\x1e", None],
    "the first null marker as a value": ["\x1f", None, "b"],
    "only nulls": [None] * 9,
    "only empties": ["", "", ""],
    "one value": ["only"],
    "one null": [None],
}
NOT_JOINED = {
    "one empty": [""],  # "" splits into no value at all
    "every separator inside": ["".join(_SEPARATORS), "a"],
    "not text": ["a", 1],
}


@pytest.mark.parametrize("values", TEXTS.values(), ids=TEXTS.keys())
def test_a_joined_text_column_comes_back_as_it_was(pg_url: str, values: list[str | None]) -> None:
    joined = _joined(values)
    assert joined is not None
    with PostgresStore(pg_url) as store:
        assert store.conn.execute("SELECT string_to_array(%s::text, %s::text, %s::text)",
                                  joined).fetchone()[0] == values


@pytest.mark.parametrize("values", NOT_JOINED.values(), ids=NOT_JOINED.keys())
def test_a_text_column_that_cannot_be_joined_says_so(values: list[Any]) -> None:
    assert _joined(values) is None


@pytest.mark.parametrize(("kind", "values"), [
    ("bigint", [1, -2, None, 2**63 - 1, -(2**63)]), ("bigint", list(range(600))), ("bigint", [None, None]),
    ("integer", [0, 7, 2**31 - 1, -(2**31)]), ("integer", [None, 3]),
])
def test_a_packed_integer_column_comes_back_as_it_was(pg_url: str, kind: str, values: list[int | None]) -> None:
    packed = _packed(values, kind)
    assert isinstance(packed, bytes)
    with PostgresStore(pg_url) as store:
        assert store.conn.execute(f"SELECT %b::{kind}[]", (packed,)).fetchone()[0] == values


def test_an_integer_out_of_its_range_goes_as_psycopgs_array() -> None:
    assert _packed([1, 2**31], "integer") == [1, 2**31]
    assert _packed([None, 2**64], "bigint") == [None, 2**64]


def _fact(id: str, key: str, identity: str | None) -> FactRow:
    return FactRow("src\x1e", id, "t", key, identity, json.dumps({"n": id}), 0, None, None, None, "h",
                   "2026-02-01T10:00:00Z")


@pytest.mark.parametrize("claiming", [False, True])
def test_a_batchs_rows_with_separators_in_their_text_are_stored_as_they_were(pg_url: str, claiming: bool) -> None:
    """Ids holding the first separators, an id that is all of them (its column then goes as
    psycopg's array), NULL identities: in bulk, plain and claimed (with the check)."""
    keys = [f'["k{i}","w"]' for i in range(10)]
    ids = [f"i\x1f{n}\x1e" for n in range(9)] + ["".join(_SEPARATORS)]
    identities = [None if n % 3 == 0 else f"id\x1f{n}" for n in range(10)]
    with PostgresStore(pg_url) as store:
        with store.transaction():
            store.lock_keys(keys)
            if claiming:
                store.prefetch_claims([], [("t", i) for i in identities if i is not None], [])
            seqs = [store.add_fact(_fact(id, key, identity)) for id, key, identity in zip(ids, keys, identities)]
        assert None not in seqs
        got = store.conn.execute("SELECT source, id, route_key, identity FROM facts ORDER BY seq").fetchall()
    assert got == [("src\x1e", id, key, identity) for id, key, identity in zip(ids, keys, identities)]
