"""PostgreSQL for the tests: the server named by $WEBINAR_FLOWS_TEST_PG (`.ci/run` starts a
throw-away cluster and sets it), and a fresh database per test on it.

Without the variable a PostgreSQL test skips with a message saying so, except in CI (`$CI`
set), where it fails: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ENV = "WEBINAR_FLOWS_TEST_PG"


def server_url() -> str:
    """The test server's URL (a maintenance database on it, e.g. postgres); skip or fail without it."""
    url = os.environ.get(ENV, "")
    if url:
        return url
    message = (f"PostgreSQL tests need ${ENV}: a postgresql:// URL of a server on which the tests may create "
               "and drop databases (bash .ci/run starts one and sets it)")
    if os.environ.get("CI"):
        pytest.fail(f"{message}; in CI they must run, not skip", pytrace=False)
    pytest.skip(message)


def with_dbname(url: str, dbname: str) -> str:
    """`url` naming another database on the same server."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(url)
    info["dbname"] = dbname
    host = info.pop("host", None)
    port = info.pop("port", None)
    user = info.pop("user", None)
    password = info.pop("password", None)
    query = "&".join(f"{k}={v}" for k, v in info.items() if k != "dbname")
    netloc = f"{user or ''}{':' + password if password else ''}{'@' if user else ''}"
    if host and not host.startswith("/"):
        netloc += host + (f":{port}" if port else "")
        extra = ""
    else:
        extra = "&".join(x for x in (f"host={host}" if host else "", f"port={port}" if port else "") if x)
    query = "&".join(x for x in (query, extra) if x)
    result = f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")
    make_conninfo(result)  # parses
    return result


def create_database(url: str | None = None) -> str:
    """A new empty database on the test server; its URL."""
    import psycopg

    admin = url or server_url()
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_dbname(admin, name)


def drop_database(url: str, admin: str | None = None) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin or server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database() -> Iterator[str]:
    """A database of its own for one test, dropped after it."""
    admin = server_url()
    url = create_database(admin)
    try:
        yield url
    finally:
        drop_database(url, admin)


def record_sql(patch: pytest.MonkeyPatch, method: str = "execute") -> list[str]:
    """The SQL of every call of psycopg's `Cursor.<method>` (execute, copy) from now on, in order:
    what the tests of one-round-trip paths count."""
    import psycopg

    seen: list[str] = []
    original = getattr(psycopg.Cursor, method)

    def recording(self: psycopg.Cursor, statement: object, *args: object, **kwargs: object) -> object:
        seen.append(str(statement))
        return original(self, statement, *args, **kwargs)

    patch.setattr(psycopg.Cursor, method, recording)
    return seen
