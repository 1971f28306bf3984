"""Store fixtures: the contract tests run against every adapter (``sqlite``, ``postgres``).

PostgreSQL is the server at ``RESPOND_TEST_POSTGRES_URL`` (default
postgresql://postgres@127.0.0.1:5432/test); each test gets a fresh schema, dropped after it.
When it is unreachable its tests are skipped, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storekit import Backend, PostgresBackend, SQLiteBackend, require_postgres

from respond.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        opened: Backend = SQLiteBackend(tmp_path / "data" / "respond.db")
    else:
        opened = await PostgresBackend.create(require_postgres())
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
async def pg() -> AsyncIterator[PostgresBackend]:
    """PostgreSQL only, for the adapter's own tests."""
    opened = await PostgresBackend.create(require_postgres())
    try:
        yield opened
    finally:
        await opened.aclose()
