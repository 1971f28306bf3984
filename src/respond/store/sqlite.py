"""SQLite store: a connection used inline on the event loop, and one on a dedicated thread.

Rules:
- A job (the statements of one public method) runs inline, synchronously on the event loop:
  a small transaction in WAL mode costs less than handing it to a thread and back, and it
  cannot interleave with another job of this process. The inline connection never waits for
  a lock (``busy_timeout`` 0): when another connection holds one, the job runs again from
  the start on the store's thread, whose connection waits up to the busy timeout there.
- Heavy jobs (purges, file contents) always run on the thread, as does checkpointing: the
  inline connection does not checkpoint (``wal_autocheckpoint`` 0); every
  ``CHECKPOINT_EVERY_WRITES`` inline write transactions the thread runs a RESTART
  checkpoint, with this store's write transactions queued on the thread behind it (readers
  go on inline), which keeps the log as small as those writes. An in-memory database (one
  private database per connection) has a single connection, used inline for everything.
- Writes of several statements run in ``BEGIN IMMEDIATE ... COMMIT``: the write lock is
  taken up front, so a writer meets a held lock before it has changed anything (inline, it
  moves to the thread; there, it waits on the busy timeout) instead of failing on a lock
  upgrade. A job cancelled by its caller still runs to the end: a transaction is never cut
  in half.
- A context load takes the items it can from an in-memory ``ItemCache`` (store/cache.py)
  and reads only the others, usually just the previous turn's: items never change once
  stored, so the cache can miss but never be wrong.
- SQL text is constant (store/statements.py, rendered once), so the connection's statement
  cache prepares each statement once. Id lists travel as one JSON array parameter.
- A worker is alive while its process is (store/sqlite_connection.py): ``reap`` leaves the
  jobs of live workers alone, however late their lease.
- Waiters are woken in-process right after a commit on this store; another process's
  commits are noticed by polling ``PRAGMA data_version`` on the inline connection (which
  moves only when another connection committed) every ``POLL_SECONDS`` while anyone waits.
- ``sqlite3`` errors leave as ``ServerError`` (logged with their cause).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

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
from respond.store.dialect import Sql, Values, id_list
from respond.store.pages import in_order
from respond.store.sqlite_connection import (
    LIVE_WORKERS,
    Db,
    Worker,
    busy,
    checkpoint,
    checkpoint_and_close,
    connect,
    connect_inline,
    database_path,
    run_job,
)
from respond.store.wakeups import Wakeups

__all__ = ["SQLiteStore", "database_path"]

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_SECONDS = 0.2  # how soon a waiter notices a commit made by another process
CHECKPOINT_EVERY_WRITES = 200  # inline write transactions between two WAL checkpoints

_DATA_VERSION = "PRAGMA data_version"

# the hot path's texts, looked up once
_SELECT_RESPONSE = sql.SELECT_RESPONSE.on("sqlite").text
_SELECT_ITEMS_IN_ORDER = sql.SELECT_ITEMS_IN_ORDER.on("sqlite").text
_INSERT_ITEM = sql.INSERT_ITEM.on("sqlite").text


class SQLiteStore(SqlCore):
    """The ``Store`` protocol on SQLite. Open with ``await SQLiteStore.open(url)``.

    ``statements`` counts the SQL statements run so far (``BEGIN``/``COMMIT`` included),
    for benchmarks and tests.
    """

    dialect = "sqlite"

    def __init__(self, worker: Worker, threaded: sqlite3.Connection | None,
                 inline: sqlite3.Connection) -> None:
        self._worker = worker
        self.statements = 0
        self._inline = Db(inline, self)
        self._cache = ItemCache()  # items read for contexts (store/cache.py)
        self._threaded = None if threaded is None else Db(threaded, self)
        self._closed = False
        self._checkpoint: asyncio.Task[None] | None = None
        self._data_version: int | None = None  # as of the last probe; None: probe anyway
        self._wakeups = Wakeups(self._probe, POLL_SECONDS)
        self._workers: set[str] = set()  # registered here, alive while the store is open

    @classmethod
    async def open(cls, url_or_path: str | Path) -> SQLiteStore:
        path = database_path(url_or_path)
        worker = Worker("respond-sqlite")
        try:
            threaded = await worker.run(connect, path)  # creates the file and migrates it
        except BaseException:
            await worker.stop()
            raise
        if path == ":memory:":  # one private database: one connection, used inline
            return cls(worker, None, threaded)
        try:
            inline = connect_inline(path)
        except BaseException:
            await worker.run(threaded.close)
            await worker.stop()
            raise
        return cls(worker, threaded, inline)

    # -- running a job -----------------------------------------------------------------------

    async def _run(self, job: Callable[..., T], *args: Any, write: bool = False,
                   heavy: bool = False) -> T:
        """Run ``job(db, *args)`` (inside a write transaction with ``write``): inline on
        this loop unless it is ``heavy``, or another connection holds the lock it needs
        (then on the store's thread, where waiting does not stall the loop)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        try:
            if self._threaded is not None and (heavy or (write and self._checkpoint)):
                # during a checkpoint, writes queue behind it: it never waits for them
                return await self._worker.run(run_job, self._threaded, job, args, write)
            try:
                return run_job(self._inline, job, args, write)
            except sqlite3.OperationalError as exc:
                if self._threaded is None or not busy(exc):
                    raise
            return await self._worker.run(run_job, self._threaded, job, args, write)
        except sqlite3.Error as exc:
            what = args[0].strip().splitlines()[0] if args and isinstance(args[0], str) else ""
            log.error("SQLite error in %s %s", job.__name__, what, exc_info=exc)
            raise ServerError("The response store failed; try again later.") from exc
        finally:
            if self._inline.writes >= CHECKPOINT_EVERY_WRITES:
                self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        """Copy the write-ahead log back into the database on the store's thread: the inline
        connection never does it itself (a checkpoint writes and syncs many pages)."""
        if self._threaded is None or self._closed or self._checkpoint is not None:
            return
        self._inline.writes = 0
        self._checkpoint = asyncio.get_running_loop().create_task(self._checkpoint_wal())

    async def _checkpoint_wal(self) -> None:
        assert self._threaded is not None
        try:
            await self._worker.run(checkpoint, self._threaded)
        except sqlite3.Error:
            log.warning("SQLite checkpoint failed; the next one retries", exc_info=True)
        finally:
            self._checkpoint = None

    # -- primitives (store/core.py) -----------------------------------------------------------

    # The texts are taken from ``Sql.rendered`` and tuples bound as they are: this is every
    # read's path, where a method call is a measurable share of the cost.

    def _row(self, statement: Sql, values: Values, *, heavy: bool = False) -> Awaitable[Any]:
        rendered = statement.rendered["sqlite"]
        args = values if type(values) is tuple else rendered.args(values)
        return self._run(Db.row, rendered.text, args, heavy=heavy)

    def _rows(self, statement: Sql, values: Values, *,
              heavy: bool = False) -> Awaitable[list[Any]]:
        rendered = statement.rendered["sqlite"]
        args = values if type(values) is tuple else rendered.args(values)
        return self._run(Db.rows, rendered.text, args, heavy=heavy)

    def _value(self, statement: Sql, values: Values) -> Awaitable[Any]:
        rendered = statement.rendered["sqlite"]
        args = values if type(values) is tuple else rendered.args(values)
        return self._run(Db.value, rendered.text, args)

    def _change(self, statement: Sql, values: Values, *, heavy: bool = False) -> Awaitable[int]:
        rendered = statement.on("sqlite")
        return self._run(Db.change, rendered.text, rendered.args(values), heavy=heavy)

    def _take(self, probe: Sql, write: Sql, values: Values) -> Awaitable[list[Any]]:
        look, take = probe.on("sqlite"), write.on("sqlite")
        return self._run(Db.take, look.text, look.args(values), take.text, take.args(values))

    # -- responses and items -----------------------------------------------------------------

    async def save_response(self, response: StoredResponse, new_items: list[Item], *,
                            unless_terminal: bool = False) -> bool:
        upsert = sql.SAVE_RESPONSE_UNLESS_TERMINAL if unless_terminal else sql.SAVE_RESPONSE
        return await self._run(self._save, upsert.on("sqlite").text,
                               response_row(response, "sqlite"), _item_rows(response, new_items),
                               write=True)

    def _save(self, db: Db, upsert: str, row: tuple[Any, ...],
              items: list[tuple[str, str, str]]) -> bool:
        if db.execute(upsert, row).rowcount == 0:
            return False  # a final status was stored: nothing of this write is
        if items:
            db.executemany(_INSERT_ITEM, items)
        return True

    async def load_context(
        self, response_id: str, now: int
    ) -> tuple[StoredResponse, list[Item]] | None:
        return await self._run(self._load_context, response_id, now)

    def _load_context(self, db: Db, response_id: str,
                      now: int) -> tuple[StoredResponse, list[Item]] | None:
        row = db.row(_SELECT_RESPONSE, (response_id, now))
        if row is None:
            return None
        response = _stored_response(response_id, row)
        ids = response.context_ids + response.output_ids
        cached, missing = self._cache.lookup(ids)
        if len(missing) == len(ids):
            return response, self._read_items(db, response_id, ids)
        # usually the last turn's items are missing: the rest was read for an earlier turn
        return response, fill(ids, cached, self._read_items(db, response_id, missing))

    def _read_items(self, db: Db, response_id: str, ids: list[str]) -> list[Item]:
        """The items of ``ids`` in order, held in the cache for the next turn's load."""
        if not ids:
            return []
        text = db.value(_SELECT_ITEMS_IN_ORDER, (id_list("sqlite", ids),))
        items = in_order(response_id, ids, json_list(text))
        if items:
            self._cache.put_many(items, len(text) // len(items))
        return items

    async def delete_response(self, response_id: str, now: int) -> bool:
        return await self._run(self._delete, {"id": response_id, "now": now}, write=True)

    def _delete(self, db: Db, values: dict[str, Any]) -> bool:
        tombstone = sql.TOMBSTONE.on("sqlite")
        if db.execute(tombstone.text, tombstone.args(values)).rowcount == 0:
            return False
        for statement in AFTER_TOMBSTONE:
            rendered = statement.on("sqlite")
            db.execute(rendered.text, rendered.args(values))
        return True

    # -- background work ---------------------------------------------------------------------

    async def enqueue(
        self, response: StoredResponse, new_items: list[Item], payload: dict[str, Any]
    ) -> None:
        job = {"id": response.id, "payload": orjson.dumps(payload).decode(),
               "enqueued_at": time.time()}
        await self._run(self._enqueue, response_row(response, "sqlite"),
                        _item_rows(response, new_items), job, write=True)
        self._wakeups.jobs_enqueued()

    def _enqueue(self, db: Db, row: tuple[Any, ...], items: list[tuple[str, str, str]],
                 job: dict[str, Any]) -> None:
        self._save(db, sql.SAVE_RESPONSE.on("sqlite").text, row, items)
        upsert_job = sql.UPSERT_JOB.on("sqlite")
        db.execute(upsert_job.text, upsert_job.args(job))

    async def register_worker(self) -> str:
        self._check_open()
        name = new_worker_name()
        self._workers.add(name)
        LIVE_WORKERS.add(name)
        return name

    # -- event logs --------------------------------------------------------------------------

    async def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        rows = [(response_id, event["sequence_number"], orjson.dumps(event).decode())
                for event in events]
        await self._run(Db.executemany, sql.INSERT_EVENT.on("sqlite").text, rows, write=True)
        self._wakeups.events_appended(response_id, max(row[1] for row in rows))

    async def _probe(
        self, watched: dict[str, int], jobs: bool
    ) -> tuple[bool, dict[str, int | None]] | None:
        version = await self._run(Db.value, _DATA_VERSION, ())
        if version == self._data_version:
            return None  # no other connection has committed since the last probe
        self._data_version = version
        return await super()._probe(watched, jobs)

    async def aclose(self) -> None:
        if self._closed:
            return
        LIVE_WORKERS.difference_update(self._workers)
        await self._wakeups.aclose()
        if self._checkpoint is not None:
            await self._checkpoint
        self._closed = True
        self._inline.conn.close()
        if self._threaded is not None:
            await self._worker.run(checkpoint_and_close, self._threaded.conn)
        await self._worker.stop()


def _item_rows(response: StoredResponse, new_items: list[Item]) -> list[tuple[str, str, str]]:
    return [(item["id"], response.id, orjson.dumps(item).decode()) for item in new_items]
