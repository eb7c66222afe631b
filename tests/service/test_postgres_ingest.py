"""The ingest status table of test_service_ingest.py, every test of it, against a `serve` whose
--db is a fresh PostgreSQL database (tests/pg.py): the behaviour is the backend's no more than
the SQLite run's. The tests are imported here and collected again with this module's `served`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverkit import Server, start_server
from test_service_ingest import *  # noqa: F403  (the tests, collected again with `served` below)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server on a PostgreSQL database for the whole module; the database is dropped after."""
    import pg

    url = pg.create_database()
    try:
        server = start_server(tmp_path_factory.mktemp("served-pg"), db=url)  # type: ignore[arg-type]
        try:
            yield server
        finally:
            server.stop()
    finally:
        pg.drop_database(url)
