"""A private PostgreSQL for the tests (lepton_edge/tools/postgres.py): one server per test session (initdb
into a temporary directory, 127.0.0.1 on a free port, fsync off), a fresh database per test (fixture ``pg_url``).

tests/conftest.py loads it as a plugin for every test file (``pytest_plugins``): test files need not name
it. Without the binaries the tests skip, or fail with the install command when LEPTON_REQUIRE_SHARED=1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import skip_or_fail
from lepton_edge.tools import postgres as _pg
from lepton_edge.tools.postgres import INSTALL, PASSWORD, PG_USER, PostgresServer  # noqa: F401 - re-exported

PG_BIN = _pg.pg_bin()


def require_postgres() -> Path:
    """The directory of initdb/pg_ctl/postgres, or skip (fail when LEPTON_REQUIRE_SHARED=1)."""
    why = _pg.missing(PG_BIN)
    if why is None:
        return PG_BIN
    skip_or_fail(why)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the test session (per xdist worker)."""
    server = PostgresServer(require_postgres())
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """``postgresql://postgres:<PASSWORD>@127.0.0.1:<port>/<fresh database>``."""
    return pg_server.create_database()
