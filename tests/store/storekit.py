"""Helpers for the store tests: conversations shaped the way the engine saves them, and one
``Backend`` per adapter that opens stores ("replicas") on one database and inspects it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from respond.store import Item, Store, StoredResponse

NOW = 1_000
TTL = 1_000

POSTGRES_URL = os.environ.get(
    "RESPOND_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def message(item_id: str, text: str, role: str = "user") -> Item:
    kind = "input_text" if role == "user" else "output_text"
    return {"id": item_id, "type": "message", "role": role, "status": "completed",
            "content": [{"type": kind, "text": text}]}


def response(
    response_id: str,
    context_ids: list[str],
    output_ids: list[str],
    previous: str | None = None,
    *,
    created_at: int = NOW,
    expires_at: int = NOW + TTL,
    status: str = "completed",
) -> StoredResponse:
    body = {"id": response_id, "object": "response", "status": status,
            "previous_response_id": previous, "output": [{"id": i} for i in output_ids]}
    return StoredResponse(response_id, body, context_ids, output_ids, previous,
                          created_at, expires_at)


async def save_turn(
    store: Store, response_id: str, parent: StoredResponse | None, n_inputs: int = 1,
    *, expires_at: int = NOW + TTL,
) -> StoredResponse:
    """A turn the way the engine saves it: inherited context + new input, then its output."""
    inputs = [message(f"{response_id}_in{k}", f"question {k} of {response_id}")
              for k in range(n_inputs)]
    output = message(f"{response_id}_out", f"answer of {response_id}", role="assistant")
    inherited = [] if parent is None else parent.context_ids + parent.output_ids
    saved = response(response_id, inherited + [i["id"] for i in inputs], [output["id"]],
                     None if parent is None else parent.id, expires_at=expires_at)
    await store.save_response(saved, inputs + [output])
    return saved


def ids(items: list[Item]) -> list[str]:
    return [item["id"] for item in items]


# -- PostgreSQL availability -------------------------------------------------------------------


@functools.cache
def postgres_problem() -> str | None:
    """Why the test PostgreSQL cannot be used, or None when it can."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await conn.close()

    # In a thread: the caller may be inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def require_postgres() -> str:
    """The test PostgreSQL URL; skips when it is unreachable, but fails on CI (CI=true)."""
    problem = postgres_problem()
    if problem is not None:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable ({problem})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(message)
    return POSTGRES_URL


# -- backends ------------------------------------------------------------------------------------


class Backend:
    """One database shared by every store it opens; raw SQL access for the checks."""

    name: str
    module = "core"  # the module under respond.store whose limits tests tune (shared logic)

    def __init__(self) -> None:
        self.stores: list[Any] = []

    async def open(self) -> Any:
        store = await self._open()
        self.stores.append(store)
        return store

    async def _open(self) -> Any:
        raise NotImplementedError

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def execute(self, sql: str) -> None:
        raise NotImplementedError

    async def count(self, table: str) -> int:
        return (await self.fetch(f"SELECT count(*) FROM {table}"))[0][0]

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"

    async def _open(self) -> Any:
        from respond.store.sqlite import SQLiteStore

        return await SQLiteStore.open(self.url)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path) as conn:
            return conn.execute(sql).fetchall()

    async def execute(self, sql: str) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(sql)


class PostgresBackend(Backend):
    """A fresh schema (``t_<random>``) in the test database, dropped afterwards."""

    name = "postgres"

    def __init__(self, url: str, schema: str, admin: Any) -> None:
        super().__init__()
        self.url = url
        self.schema = schema
        self.admin = admin  # an asyncpg connection whose search_path is the schema

    @classmethod
    async def create(cls, url: str) -> PostgresBackend:
        import asyncpg

        schema = f"t_{secrets.token_hex(8)}"
        admin = await asyncpg.connect(url, server_settings={"search_path": schema})
        await admin.execute(f"CREATE SCHEMA {schema}")
        return cls(url, schema, admin)

    async def _open(self, **options: Any) -> Any:
        from respond.store.postgres import PostgresStore

        return await PostgresStore.open(self.url, schema=self.schema, **options)

    async def open_with(self, **options: Any) -> Any:
        store = await self._open(**options)
        self.stores.append(store)
        return store

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self.admin.fetch(sql)]

    async def execute(self, sql: str) -> None:
        await self.admin.execute(sql)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            await self.admin.close()
