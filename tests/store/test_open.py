"""open_store: the database URL's scheme picks the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from storekit import NOW, POSTGRES_URL, PostgresBackend, save_turn

from respond.store.open import open_store
from respond.store.postgres import PostgresStore
from respond.store.sqlite import SQLiteStore


async def test_sqlite_url_opens_sqlite(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'respond.db'}")
    try:
        assert isinstance(store, SQLiteStore)
        await save_turn(store, "resp_1", None)
        assert await store.get_response("resp_1", NOW) is not None
    finally:
        await store.aclose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_postgresql_urls_open_postgres(pg: PostgresBackend, scheme: str) -> None:
    # a search_path in the URL's query becomes the connections' setting (asyncpg passes
    # unknown query parameters to the server), which keeps this test in its own schema
    url = f"{scheme}://" + POSTGRES_URL.split("://", 1)[1] + f"?search_path={pg.schema}"
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        await save_turn(store, "resp_1", None)
        assert await pg.count("responses") == 1
    finally:
        await store.aclose()


@pytest.mark.parametrize("url", ["mysql://user:secret@db/respond", "data/respond.db", ""])
async def test_other_urls_name_the_setting_without_the_secret(url: str) -> None:
    with pytest.raises(ValueError, match=r"server\.database_url") as raised:
        await open_store(url)
    assert "secret" not in str(raised.value)
