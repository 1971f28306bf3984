"""PostgreSQL store: an ``asyncpg`` pool for the work, and one more connection of its own
that LISTENs and holds the store's worker locks (store/listener.py).

Rules:
- Round trips are the cost: every hot method is one statement (a write and the items it
  brings are one statement of data-modifying CTEs, which is atomic on its own), so saving
  a response or loading a context of any depth is one round trip. Items never change once
  stored, so the items this process stored or read stay in an ``ItemCache`` (bounded); a
  context whose every item it holds is loaded as the response row alone. Multi-statement work
  (deleting) runs in an explicit transaction. Pooled connections are not reset on release
  (no extra round trip): this store never leaves session state behind.
- Documents are ``json`` (exact text), id lists ``text[]``; see migrations/postgresql/0001.
- Deletion, retention, files and the job queue follow store/core.py and the SQL of
  store/statements.py, shared with SQLite.
- Background work: ``claim`` is one ``UPDATE ... FOR UPDATE SKIP LOCKED`` statement, so
  replicas never take the same job and never wait on each other. A worker registered here is
  alive while the store's own connection holds its advisory lock: ``reap`` checks
  ``pg_locks`` in the same statement, so no replica reaps the jobs of a live process.
- Writes that others wait for ``pg_notify`` inside their own statement, so the notification
  goes out on commit and never for a write that failed; the listening connection wakes this
  process's waiters, and a poll every ``POLL_SECONDS`` while anyone waits covers any loss.
- Channels are per schema (``respond_jobs``/``respond_events`` in ``public``, suffixed
  otherwise): NOTIFY is database-wide, and deployments in other schemas must not wake us.
- ``asyncpg`` and network errors leave as ``ServerError`` (logged with their cause). A call
  cancelled by its caller may or may not have committed; PostgreSQL never keeps half of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson

from respond.errors import ServerError
from respond.store import Item, StoredResponse
from respond.store import statements as sql
from respond.store.cache import ItemCache, fill
from respond.store.core import (
    AFTER_TOMBSTONE,
    SqlCore,
    json_list,
    new_worker_name,
    response_row,
)
from respond.store.core import stored_response as _stored_response
from respond.store.dialect import Sql, Values
from respond.store.listener import Connect, Listener
from respond.store.migrations import apply_postgresql, quote_identifier
from respond.store.pages import in_order
from respond.store.wakeups import Wakeups

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the longest a lost notification can delay a waiter
WHOLE_CONTEXTS = 4096  # responses remembered as held whole in the item cache
CLOSE_TIMEOUT_SECONDS = 10.0
SCHEMES = ("postgresql", "postgres")

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def connection_url(url: str) -> str:
    """``url`` if it is a ``postgresql://`` or ``postgres://`` URL; ``ValueError`` otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        shown = repr(scheme) if scheme else "no scheme"  # never the rest: it may hold a password
        raise ValueError(f"not a PostgreSQL URL (postgresql://...): {shown}")
    return url


def channel_names(schema: str) -> tuple[str, str]:
    """The (jobs, events) NOTIFY channels of a schema; at most 63 bytes, PostgreSQL's limit."""
    if schema == "public":
        return "respond_jobs", "respond_events"
    suffix = schema
    if len(schema.encode()) > 40:
        suffix = hashlib.sha256(schema.encode()).hexdigest()[:16]
    return f"respond_jobs.{suffix}", f"respond_events.{suffix}"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo (asyncpg has already rolled back an open
    transaction), so releasing a connection costs no round trip."""


class PostgresStore(SqlCore):
    """The ``Store`` protocol on PostgreSQL. Open with ``await PostgresStore.open(url)``.

    ``schema`` (created if missing) puts every table in that schema, through the
    connections' ``search_path``; tests use a fresh one each. ``statements`` counts the
    statements sent so far (one round trip each, ``BEGIN``/``COMMIT`` included).
    """

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, connect: Connect, channels: tuple[str, str]) -> None:
        self._pool = pool
        self._closed = False
        self.statements = 0
        # items by id (store/cache.py), and the responses whose every item it holds
        self._cache = ItemCache()
        self._whole: OrderedDict[str, None] = OrderedDict()
        self._jobs_channel, self._events_channel = channels
        self._wakeups = Wakeups(self._probe, POLL_SECONDS)
        self._listener = Listener(connect, {
            self._jobs_channel: self._on_jobs,
            self._events_channel: self._on_events,
        }, self._wakeups)

    @classmethod
    async def open(
        cls, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10
    ) -> PostgresStore:
        dsn = connection_url(url)
        settings: dict[str, str] = {}
        if "application_name" not in parse_qs(urlsplit(dsn).query):
            settings["application_name"] = "respond"
        if schema is not None:
            settings["search_path"] = quote_identifier(schema)
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, server_settings=settings,
                reset=_keep_session,
            )
        except _ERRORS as exc:
            raise _failure("connecting to PostgreSQL", exc) from exc

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(dsn, server_settings=settings)

        store: PostgresStore | None = None
        try:
            async with pool.acquire() as conn:
                await apply_postgresql(conn, create_schema=schema)
                current = await conn.fetchval(sql.CURRENT_SCHEMA.on("postgresql").text)
            store = cls(pool, connect, channel_names(current))
            await store._listener.start()
        except BaseException as exc:
            if store is not None:
                await store._listener.aclose()
            pool.terminate()
            if isinstance(exc, _ERRORS):
                raise _failure("opening the PostgreSQL store", exc) from exc
            raise
        return store


    # -- primitives (store/core.py) -----------------------------------------------------------

    async def _call(self, method: str, statement: Sql, values: Values) -> Any:
        self._check_open()
        self.statements += 1
        rendered = statement.on("postgresql")
        try:
            return await getattr(self._pool, method)(rendered.text, *rendered.args(values))
        except _ERRORS as exc:
            raise _failure(statement.first_line, exc) from exc

    def _row(self, statement: Sql, values: Values, *, heavy: bool = False) -> Awaitable[Any]:
        return self._call("fetchrow", statement, values)

    def _rows(self, statement: Sql, values: Values, *,
              heavy: bool = False) -> Awaitable[list[Any]]:
        return self._call("fetch", statement, values)

    def _value(self, statement: Sql, values: Values) -> Awaitable[Any]:
        return self._call("fetchval", statement, values)

    async def _change(self, statement: Sql, values: Values, *, heavy: bool = False) -> int:
        return _touched(await self._call("execute", statement, values))

    def _take(self, probe: Sql, write: Sql, values: Values) -> Awaitable[list[Any]]:
        return self._rows(write, values)  # one round trip; SKIP LOCKED never waits

    # -- responses and items -----------------------------------------------------------------

    async def save_response(self, response: StoredResponse, new_items: list[Item], *,
                            unless_terminal: bool = False) -> bool:
        item_data = [orjson.dumps(item).decode() for item in new_items]
        values = (*response_row(response, "postgresql"), [item["id"] for item in new_items],
                  item_data)
        statement = sql.PG_SAVE_UNLESS_TERMINAL if unless_terminal else sql.PG_SAVE
        if not await self._value(statement, values):
            return False  # a final status was stored: nothing of this write is
        self._note_saved(response, item_data)
        return True

    def _note_saved(self, response: StoredResponse, item_texts: list[str]) -> None:
        """Hold the items just stored (parsed from the stored text: never the caller's own
        objects), and remember the response as whole when every item it lists is held."""
        for text in item_texts:
            self._cache.put_many([orjson.loads(text)], len(text))
        ids = response.context_ids + response.output_ids
        if all(item is not None for item in self._cache.get_many(ids)):
            self._whole[response.id] = None
            if len(self._whole) > WHOLE_CONTEXTS:
                self._whole.popitem(last=False)

    async def load_context(
        self, response_id: str, now: int
    ) -> tuple[StoredResponse, list[Item]] | None:
        values = (response_id, now)
        if response_id not in self._whole:
            row = await self._row(sql.PG_LOAD_CONTEXT, values)
            if row is None:
                return None
            response = _stored_response(response_id, row)
            ids = response.context_ids + response.output_ids
            items = in_order(response_id, ids, json_list(row[6]))
            if items and len(items) == len(ids):
                self._cache.put_many(items, len(row[6]) // len(items))
                self._whole[response_id] = None
            return response, items
        # this process stored or read the whole context: the row alone, items from memory
        row = await self._row(sql.SELECT_RESPONSE, values)
        if row is None:
            return None
        response = _stored_response(response_id, row)
        ids = response.context_ids + response.output_ids
        cached, missing = self._cache.lookup(ids)
        # some were evicted since: read those (a second round trip, rare)
        read = await self._items_in_order(response_id, missing)
        return response, fill(ids, cached, read)

    async def delete_response(self, response_id: str, now: int) -> bool:
        self._check_open()
        values = {"id": response_id, "now": now}

        async def run(conn: asyncpg.Connection, statement: Sql) -> str:
            self.statements += 1
            rendered = statement.on("postgresql")
            result: str = await conn.execute(rendered.text, *rendered.args(values))
            return result

        try:
            async with self._pool.acquire() as conn, conn.transaction():
                self.statements += 2  # BEGIN, COMMIT
                if _touched(await run(conn, sql.TOMBSTONE)) == 0:
                    return False
                for statement in AFTER_TOMBSTONE:
                    await run(conn, statement)
                return True
        except _ERRORS as exc:
            raise _failure(sql.TOMBSTONE.first_line, exc) from exc

    # -- background work -----------------------------------------------------------------------

    async def enqueue(
        self, response: StoredResponse, new_items: list[Item], payload: dict[str, Any]
    ) -> None:
        values = dict(zip(sql.RESPONSE_PARAMS, response_row(response, "postgresql"), strict=True))
        values.update(item_ids=[item["id"] for item in new_items],
                      item_data=[orjson.dumps(item).decode() for item in new_items],
                      payload=orjson.dumps(payload).decode(), channel=self._jobs_channel)
        await self._value(sql.PG_ENQUEUE, values)
        self._wakeups.jobs_enqueued()

    async def register_worker(self) -> str:
        self._check_open()
        while True:
            name = new_worker_name()
            try:
                if await self._listener.hold(name):
                    return name
            except _ERRORS as exc:
                raise _failure("taking a worker lock", exc) from exc

    # -- event logs ----------------------------------------------------------------------------

    async def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        sequence = [event["sequence_number"] for event in events]
        last = max(sequence)
        await self._value(sql.PG_APPEND_EVENTS, {
            "id": response_id, "seqs": sequence,
            "datas": [orjson.dumps(event).decode() for event in events],
            "channel": self._events_channel, "message": f"{response_id} {last}"})
        self._wakeups.events_appended(response_id, last)

    # -- wake-ups ------------------------------------------------------------------------------

    def _on_jobs(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wakeups.jobs_enqueued()

    def _on_events(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        response_id, _, last = payload.rpartition(" ")
        try:
            self._wakeups.events_appended(response_id, int(last))
        except ValueError:  # not ours to parse: wake that response's followers anyway
            self._wakeups.events_appended(payload, None)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._listener.aclose()
        await self._wakeups.aclose()
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("PostgreSQL connections still busy after %.0f s; closing them anyway",
                        CLOSE_TIMEOUT_SECONDS)
            self._pool.terminate()


def _touched(status: str) -> int:
    """The row count of a command's status (``UPDATE 3``, ``INSERT 0 1``...)."""
    return int(status.rsplit(" ", 1)[-1])


def _failure(what: str, exc: BaseException) -> ServerError:
    log.error("PostgreSQL error in %s", what, exc_info=exc)
    return ServerError("The response store failed; try again later.")
