"""Every statement binds its parameters the way its placeholders ask.

Python 3.12 and 3.13 warn when a sequence is bound to `:named` placeholders and 3.14 raises
`ProgrammingError`; 3.11 says nothing. So the check is ours: every statement the store runs
while processing, evaluating and reading is inspected, whichever Python runs the suite.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import Engine

from conftest import ROOT

_NAMED = re.compile(r"(?<![:\w])[:@$][A-Za-z_]\w*")
_QUOTED = re.compile(r"'(?:[^']|'')*'")


def binding_problem(sql: str, params: Any) -> str | None:
    named = bool(_NAMED.search(_QUOTED.sub("''", sql)))
    if named and params is not None and not isinstance(params, Mapping):
        return f"a sequence bound to named placeholders: {sql[:80]}"
    if not named and isinstance(params, Mapping) and params:
        return f"a mapping bound to positional placeholders: {sql[:80]}"
    return None


class _Checked:
    """A connection stand-in that records every statement's binding problem, then runs it."""

    def __init__(self, conn: sqlite3.Connection, problems: list[str]):
        self._conn, self._problems = conn, problems

    def execute(self, sql: str, params: Any = ()) -> Any:
        if (problem := binding_problem(sql, params)) is not None:
            self._problems.append(problem)
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        for row in rows[:1]:
            if (problem := binding_problem(sql, row)) is not None:
                self._problems.append(problem)
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_the_checker_sees_a_sequence_bound_to_named_placeholders() -> None:
    assert binding_problem("INSERT INTO t (a) VALUES (:a)", ("x",)) is not None
    assert binding_problem("INSERT INTO t (a) VALUES (:a)", {"a": "x"}) is None
    assert binding_problem("INSERT INTO t (a) VALUES (?)", ("x",)) is None
    assert binding_problem("SELECT json_extract(k, '$[0]') FROM t WHERE a = ?", ("x",)) is None


def test_processing_binds_every_statement_as_its_placeholders_ask(tmp_path: Path) -> None:
    problems: list[str] = []
    with Engine.open(db=tmp_path / "b.db") as eng:
        eng.store.conn = _Checked(eng.store.conn, problems)  # type: ignore[assignment]
        lines = (ROOT / "examples" / "events.jsonl").read_bytes().splitlines()
        results = eng.process_many(lines + [b"{not json"] + lines[:3], batch_size=7)
        eng.evaluate(webinar_id="webinar-2026-02", at="2026-02-11T00:00:00Z")
        eng.route(lead_id="lead-001", webinar_id="webinar-2026-02")
        eng.reprocess()
    statuses = {r["status"] for r in results}
    assert statuses == {"accepted", "duplicate", "rejected"}
    assert problems == []
