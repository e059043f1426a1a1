"""The store contract: one suite, both backends. `store` is a fresh SQLite file or a fresh PostgreSQL
database (on the session's throwaway cluster, tests/pg_cluster.py); a test here must pass on both."""
from __future__ import annotations

import pytest

from edgefleet.fleet.store import FleetStore

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_factory(backend, tmp_path, request):
    """Opens the store of this test's backend; a second call opens the same database again (another
    process, or the same one restarted). Closed after the test."""
    opened = []
    target = str(tmp_path / "fleet.db") if backend == "sqlite" else request.getfixturevalue("pg_url")

    def open_store():
        if backend == "sqlite":
            store = FleetStore(target)
        else:
            from edgefleet.fleet.pg.store import PgStore

            store = PgStore(target)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory):
    return store_factory()
