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
  go on inline), which keeps the log as small as those writes. An in-memory database (one private
  database per connection) has a single connection, used inline for everything.
- Writes run in ``BEGIN IMMEDIATE ... COMMIT``: the write lock is taken up front, so a
  writer meets a held lock before it has changed anything (inline, it moves to the thread;
  there, it waits on the busy timeout) instead of failing on a lock upgrade. A job
  cancelled by its caller still runs to the end: a transaction is never cut in half.
- A context load takes the items it can from an in-memory ``ItemCache`` (store/cache.py)
  and reads only the others, usually just the previous turn's: items never change once
  stored, so the cache can miss but never be wrong.
- SQL text is constant, so the connection's statement cache prepares each statement once.
  Id lists travel as one JSON array parameter (``json_each(?)``), never as N placeholders.
- A row is hidden once ``expires_at <= now``. Deleting a response that later rows still
  build on leaves a tombstone (body wiped, ``expires_at`` 0) that keeps the items it
  introduced; a tombstone or expired row is removed, items and all, once no live response
  descends from it. Branches therefore never lose history when an ancestor goes.
- Background work: ``claim`` and ``reap`` look first with a plain read and take the write
  lock only when there is something to take, so idle workers never queue behind writers.
  Waiters are woken in-process right after a commit on this store; another process's
  commits are noticed by polling ``PRAGMA data_version`` on the inline connection (which
  moves only when another connection committed) every ``POLL_SECONDS`` while anyone waits.
- ``sqlite3`` errors leave as ``ServerError`` (logged with their cause).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from respond.errors import ServerError
from respond.store import FilePage, Item, ItemPage, Job, StoredFile, StoredResponse
from respond.store.cache import ItemCache, fill
from respond.store.migrations import apply_sqlite
from respond.store.pages import in_order as _in_order
from respond.store.pages import page
from respond.store.wakeups import Wakeups

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
PURGE_BATCH = 500  # responses removed per transaction, so a large purge never holds the lock long
TOMBSTONE_EXPIRES_AT = 0
POLL_SECONDS = 0.2  # how soon a waiter notices a commit made by another process
CHECKPOINT_EVERY_WRITES = 200  # inline write transactions between two WAL checkpoints
CHECKPOINT_WAIT_MS = 100  # the longest a checkpoint waits for other processes

_RESPONSE_COLUMNS = "body, context_ids, output_ids, previous_response_id, created_at, expires_at"

_UPSERT_RESPONSE = f"""
INSERT INTO responses (id, {_RESPONSE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    body = excluded.body, context_ids = excluded.context_ids, output_ids = excluded.output_ids,
    previous_response_id = excluded.previous_response_id, created_at = excluded.created_at,
    expires_at = excluded.expires_at
"""
# An upsert, not INSERT OR REPLACE: REPLACE deletes the old row, which would cascade to items.

# Items are immutable: a known id keeps its first content and owner. ON CONFLICT DO NOTHING
# rather than INSERT OR IGNORE, which would also swallow NOT NULL violations silently.
_INSERT_ITEM = (
    "INSERT INTO items (id, response_id, data) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING"
)

_SELECT_RESPONSE = f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = ? AND expires_at > ?"

_SELECT_CONTEXT_IDS = "SELECT context_ids FROM responses WHERE id = ? AND expires_at > ?"

# The items of a JSON array of ids as one JSON array text, in the ids' order: json_each walks
# the array in order and CROSS JOIN keeps it the outer loop. One string and one orjson.loads
# is much cheaper than a row and a loads per item. Missing items are simply absent; callers
# check the order against the ids anyway (``_in_order``), so nothing rests on the plan alone.
_SELECT_ITEMS_JSON = (
    "SELECT '[' || group_concat(i.data, ',') || ']' "
    "FROM json_each(?) AS j CROSS JOIN items AS i ON i.id = j.value"
)

_SELECT_ITEMS_BY_ID = "SELECT i.id, i.data FROM json_each(?) AS j JOIN items AS i ON i.id = j.value"

_TOMBSTONE = f"""
UPDATE responses SET body = '{{}}', context_ids = '[]', output_ids = '[]',
    expires_at = {TOMBSTONE_EXPIRES_AT}
WHERE id = ?1 AND expires_at > ?2
"""

# The response itself if nothing builds on it, then each hidden ancestor left childless by
# the removal below it. Items go with their rows (ON DELETE CASCADE).
_DELETE_UNBUILT = """
DELETE FROM responses WHERE id IN (
    WITH RECURSIVE doomed (id, parent) AS (
        SELECT id, previous_response_id FROM responses
        WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM responses WHERE previous_response_id = ?1)
        UNION
        SELECT p.id, p.previous_response_id
        FROM doomed AS d JOIN responses AS p ON p.id = d.parent
        WHERE p.expires_at <= ?2 AND NOT EXISTS (
            SELECT 1 FROM responses AS c WHERE c.previous_response_id = p.id AND c.id <> d.id)
    )
    SELECT id FROM doomed
)
"""

# Hidden rows with no live descendant. "keep" starts from hidden rows with a live child and
# climbs through hidden ancestors; everything else hidden can go.
_PURGE_BATCH = """
DELETE FROM responses WHERE id IN (
    SELECT id FROM responses
    WHERE expires_at <= ?1 AND id NOT IN (
        WITH RECURSIVE keep (id) AS (
            SELECT p.id FROM responses AS p
            WHERE p.expires_at <= ?1 AND EXISTS (
                SELECT 1 FROM responses AS c
                WHERE c.previous_response_id = p.id AND c.expires_at > ?1)
            UNION
            SELECT p.id FROM keep AS k
            JOIN responses AS c ON c.id = k.id
            JOIN responses AS p ON p.id = c.previous_response_id
            WHERE p.expires_at <= ?1
        )
        SELECT id FROM keep
    )
    LIMIT ?2
)
"""


# Jobs and events of a row that stays as a tombstone or as a hidden ancestor: nothing can
# read them any more (ON DELETE CASCADE covers the rows that go).
_DROP_JOB = "DELETE FROM jobs WHERE response_id = ?"
_DROP_EVENTS = "DELETE FROM events WHERE response_id = ?"
_DROP_HIDDEN_JOBS = (
    "DELETE FROM jobs WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= ?)"
)
_DROP_HIDDEN_EVENTS = (
    "DELETE FROM events WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= ?)"
)

# -- background work -------------------------------------------------------------------------

# A new job replaces any job the response had (and so the lease of whoever held it).
_UPSERT_JOB = """
INSERT INTO jobs (response_id, payload, worker, lease_until, attempts, cancel_requested,
                  created_at)
VALUES (?, ?, NULL, NULL, 0, 0, ?)
ON CONFLICT (response_id) DO UPDATE SET
    payload = excluded.payload, worker = NULL, lease_until = NULL, attempts = 0,
    cancel_requested = 0, created_at = excluded.created_at
"""

_HAS_UNCLAIMED = "SELECT EXISTS (SELECT 1 FROM jobs WHERE worker IS NULL)"

# Runs inside BEGIN IMMEDIATE: the write lock is held from the look-up to the update, so two
# processes can never take the same row.
_CLAIM = """
UPDATE jobs SET worker = ?1, lease_until = ?2, attempts = attempts + 1
WHERE rowid = (SELECT rowid FROM jobs WHERE worker IS NULL ORDER BY created_at, rowid LIMIT 1)
RETURNING response_id, payload, attempts
"""

_RENEW = "UPDATE jobs SET lease_until = ?3 WHERE response_id = ?1 AND worker = ?2"

_FINISH = "DELETE FROM jobs WHERE response_id = ?"

_HAS_EXPIRED = (
    "SELECT EXISTS (SELECT 1 FROM jobs WHERE worker IS NOT NULL AND lease_until < ?)"
)

_REAP = "DELETE FROM jobs WHERE worker IS NOT NULL AND lease_until < ? RETURNING response_id"

_REQUEST_CANCEL = "UPDATE jobs SET cancel_requested = 1 WHERE response_id = ?"

_CANCEL_REQUESTED = "SELECT cancel_requested FROM jobs WHERE response_id = ?"

# -- event logs ------------------------------------------------------------------------------

# The log is append-only and the first write of a sequence number wins, so a retried append
# (or a reaper racing a worker it thought dead) never fails on a duplicate.
_INSERT_EVENT = (
    "INSERT INTO events (response_id, sequence_number, data) VALUES (?, ?, ?) "
    "ON CONFLICT (response_id, sequence_number) DO NOTHING"
)

_READ_EVENTS = (
    "SELECT data FROM events WHERE response_id = ? AND sequence_number > ? "
    "ORDER BY sequence_number"
)

_HAS_EVENT_AFTER = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE response_id = ? AND sequence_number > ?)"
)

_LAST_EVENTS = (
    "SELECT j.value, (SELECT max(sequence_number) FROM events WHERE response_id = j.value) "
    "FROM json_each(?) AS j"
)


# -- files -----------------------------------------------------------------------------------

UPLOAD_GRACE_SECONDS = 86400  # an unfinished upload is purged after this
READ_CHUNKS = 4  # chunks fetched per thread hop when a file is read
PURGE_FILES_BATCH = 100

_FILE_COLUMNS = "id, filename, purpose, bytes, content_type, created_at, expires_at"

_INSERT_FILE = (
    f"INSERT INTO files ({_FILE_COLUMNS}, complete) VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
)

_INSERT_CHUNK = "INSERT INTO file_chunks (file_id, seq, data) VALUES (?, ?, ?)"

_COMPLETE_FILE = "UPDATE files SET complete = 1, expires_at = ?2 WHERE id = ?1"

_DROP_FILE = "DELETE FROM files WHERE id = ?"

_SELECT_FILE = f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ? AND complete AND expires_at > ?"

# Upload order is the rowid (``ordinal``); the cursor's own row gives the place to resume.
# An unknown cursor makes the comparison NULL: an empty page.
_LIST_FILES = {
    order: f"""
SELECT {_FILE_COLUMNS} FROM files
WHERE complete AND expires_at > ?1 AND (?2 IS NULL OR purpose = ?2)
  AND (?3 IS NULL OR ordinal {op} (SELECT ordinal FROM files WHERE id = ?3))
ORDER BY ordinal {order.upper()} LIMIT ?4
"""
    for order, op in (("asc", ">"), ("desc", "<"))
}

_READ_CHUNKS = (
    "SELECT data FROM file_chunks WHERE file_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
)

_DELETE_FILE = "DELETE FROM files WHERE id = ? AND complete AND expires_at > ?"

_PURGE_FILES = (
    "DELETE FROM files WHERE ordinal IN (SELECT ordinal FROM files WHERE expires_at <= ? LIMIT ?)"
)


def database_path(url_or_path: str | Path) -> str:
    """``sqlite:///rel/path.db``, ``sqlite:////abs/path.db``, ``sqlite:///:memory:`` or a path."""
    text = str(url_or_path)
    if text.startswith("sqlite://"):
        rest = text.removeprefix("sqlite://")
        if rest in ("", "/", "/:memory:"):
            return ":memory:"
        if not rest.startswith("/"):
            raise ValueError(f"expected sqlite:///path, got {text!r}")
        return rest[1:]
    if "://" in text:
        raise ValueError(f"not an SQLite URL: {text!r}")
    return text


class _Worker:
    """One thread that runs jobs in order and hands results back to the caller's loop."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the awaiting caller
                loop.call_soon_threadsafe(_settle_error, future, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return await future

    async def stop(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _Db:
    """One connection, as the job functions see it: statements counted, writes wrapped."""

    __slots__ = ("_store", "conn", "writes")

    def __init__(self, conn: sqlite3.Connection, store: SQLiteStore) -> None:
        self.conn = conn
        self._store = store
        self.writes = 0  # write transactions committed through this connection

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._store.statements += 1
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._store.statements += 1
        self.conn.executemany(sql, rows)

    def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(self, *args)`` inside one write transaction."""
        self.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self, *args)
            self.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.execute("ROLLBACK")
            raise
        self.writes += 1
        return result

    def update(self, sql: str, params: tuple[Any, ...]) -> bool:
        """One writing statement; on its own it is a transaction that takes the write lock
        before it reads, so it needs no BEGIN IMMEDIATE."""
        changed = self.execute(sql, params).rowcount > 0
        self.writes += 1
        return changed


class SQLiteStore:
    """The ``Store`` protocol on SQLite. Open with ``await SQLiteStore.open(url)``.

    ``statements`` counts the SQL statements run so far (``BEGIN``/``COMMIT`` included),
    for benchmarks and tests.
    """

    def __init__(self, worker: _Worker, threaded: sqlite3.Connection | None,
                 inline: sqlite3.Connection) -> None:
        self._worker = worker
        self.statements = 0
        self._inline = _Db(inline, self)
        self._cache = ItemCache()  # items read for contexts (store/cache.py)
        self._threaded = None if threaded is None else _Db(threaded, self)
        self._closed = False
        self._checkpoint: asyncio.Task[None] | None = None
        self._data_version: int | None = None  # as of the last probe; None: probe anyway
        self._wakeups = Wakeups(self._probe, POLL_SECONDS)

    @classmethod
    async def open(cls, url_or_path: str | Path) -> SQLiteStore:
        path = database_path(url_or_path)
        worker = _Worker("respond-sqlite")
        try:
            threaded = await worker.run(_connect, path)  # creates the file and migrates it
        except BaseException:
            await worker.stop()
            raise
        if path == ":memory:":  # one private database: one connection, used inline
            return cls(worker, None, threaded)
        try:
            inline = _connect_inline(path)
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
                return await self._worker.run(_job, self._threaded, job, args, write)
            try:
                return _job(self._inline, job, args, write)
            except sqlite3.OperationalError as exc:
                if self._threaded is None or not _busy(exc):
                    raise
            return await self._worker.run(_job, self._threaded, job, args, write)
        except sqlite3.Error as exc:
            log.error("SQLite error in %s", job.__name__, exc_info=exc)
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
            await self._worker.run(_checkpoint, self._threaded)
        except sqlite3.Error:
            log.warning("SQLite checkpoint failed; the next one retries", exc_info=True)
        finally:
            self._checkpoint = None

    # -- Store -------------------------------------------------------------------------------

    async def save_response(self, response: StoredResponse, new_items: list[Item]) -> None:
        row, items = _response_rows(response, new_items)
        await self._run(self._save, row, items, write=True)

    def _save(self, db: _Db, row: tuple[Any, ...], items: list[tuple[str, str, str]]) -> None:
        db.execute(_UPSERT_RESPONSE, row)
        if items:
            db.executemany(_INSERT_ITEM, items)

    async def get_response(self, response_id: str, now: int) -> StoredResponse | None:
        return await self._run(self._get_response, response_id, now)

    def _get_response(self, db: _Db, response_id: str, now: int) -> StoredResponse | None:
        row = db.execute(_SELECT_RESPONSE, (response_id, now)).fetchone()
        return None if row is None else _stored_response(response_id, row)

    async def get_items(self, item_ids: list[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        return await self._run(self._get_items, orjson.dumps(item_ids).decode())

    def _get_items(self, db: _Db, ids_json: str) -> dict[str, Item]:
        rows = db.execute(_SELECT_ITEMS_BY_ID, (ids_json,)).fetchall()
        return {item_id: orjson.loads(data) for item_id, data in rows}

    async def load_context(
        self, response_id: str, now: int
    ) -> tuple[StoredResponse, list[Item]] | None:
        return await self._run(self._load_context, response_id, now)

    def _load_context(self, db: _Db, response_id: str, now: int) -> tuple[StoredResponse, list[Item]] | None:
        row = db.execute(_SELECT_RESPONSE, (response_id, now)).fetchone()
        if row is None:
            return None
        response = _stored_response(response_id, row)
        ids = response.context_ids + response.output_ids
        cached, missing = self._cache.lookup(ids)
        if len(missing) == len(ids):
            return response, self._items_in_order(db, response_id, ids, cache=True)
        # usually the last turn's items are missing: the rest was read for an earlier turn
        read = self._items_in_order(db, response_id, missing, cache=True)
        return response, fill(ids, cached, read)

    def _items_in_order(self, db: _Db, response_id: str, ids: list[str], *,
                        cache: bool = False) -> list[Item]:
        if not ids:
            return []
        (text,) = db.execute(_SELECT_ITEMS_JSON, (orjson.dumps(ids).decode(),)).fetchone()
        items = _in_order(response_id, ids, [] if text is None else orjson.loads(text))
        if cache and items:
            self._cache.put_many(items, len(text) // len(items))
        return items

    async def list_input_items(
        self,
        response_id: str,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        before: str | None,
        now: int,
    ) -> ItemPage | None:
        return await self._run(
            self._list_input_items, response_id, limit, order, after, before, now
        )

    def _list_input_items(
        self,
        db: _Db,
        response_id: str,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        before: str | None,
        now: int,
    ) -> ItemPage | None:
        row = db.execute(_SELECT_CONTEXT_IDS, (response_id, now)).fetchone()
        if row is None:
            return None
        ids: list[str] = orjson.loads(row[0])
        if order == "desc":
            ids.reverse()
        page_ids, has_more = page(ids, limit=limit, after=after, before=before)
        return ItemPage(items=self._items_in_order(db, response_id, page_ids), has_more=has_more)

    async def delete_response(self, response_id: str, now: int) -> bool:
        return await self._run(self._delete, response_id, now, write=True)

    def _delete(self, db: _Db, response_id: str, now: int) -> bool:
        if db.execute(_TOMBSTONE, (response_id, now)).rowcount == 0:
            return False
        db.execute(_DROP_JOB, (response_id,))
        db.execute(_DROP_EVENTS, (response_id,))
        db.execute(_DELETE_UNBUILT, (response_id, now))
        return True

    async def purge_expired(self, now: int) -> int:
        removed = 0
        while True:  # one transaction per batch, so saves from other requests get in between
            count = await self._run(self._purge_batch, now, write=True, heavy=True)
            removed += count
            if count < PURGE_BATCH:
                break
        await self._run(self._purge_hidden_work, now, write=True, heavy=True)
        return removed

    def _purge_batch(self, db: _Db, now: int) -> int:
        return db.execute(_PURGE_BATCH, (now, PURGE_BATCH)).rowcount

    def _purge_hidden_work(self, db: _Db, now: int) -> None:
        db.execute(_DROP_HIDDEN_JOBS, (now,))
        db.execute(_DROP_HIDDEN_EVENTS, (now,))

    # -- background work ---------------------------------------------------------------------

    async def enqueue(
        self, response: StoredResponse, new_items: list[Item], payload: dict[str, Any]
    ) -> None:
        row, items = _response_rows(response, new_items)
        job = (response.id, orjson.dumps(payload).decode(), time.time())
        await self._run(self._enqueue, row, items, job, write=True)
        self._wakeups.jobs_enqueued()

    def _enqueue(
        self, db: _Db, row: tuple[Any, ...], items: list[tuple[str, str, str]],
        job: tuple[Any, ...],
    ) -> None:
        self._save(db, row, items)
        db.execute(_UPSERT_JOB, job)

    async def claim(self, worker: str, now: float, lease_seconds: float) -> Job | None:
        return await self._run(self._claim, worker, now + lease_seconds)

    def _claim(self, db: _Db, worker: str, lease_until: float) -> Job | None:
        if not db.execute(_HAS_UNCLAIMED).fetchone()[0]:
            return None
        rows = db.write(lambda db: db.execute(_CLAIM, (worker, lease_until)).fetchall())
        if not rows:
            return None
        response_id, payload, attempts = rows[0]
        return Job(response_id=response_id, payload=orjson.loads(payload), attempts=attempts)

    async def renew(self, response_id: str, worker: str, now: float, lease_seconds: float) -> bool:
        return await self._run(_Db.update, _RENEW, (response_id, worker, now + lease_seconds))

    async def finish_job(self, response_id: str) -> None:
        await self._run(_Db.update, _FINISH, (response_id,))

    async def reap(self, now: float) -> list[str]:
        return await self._run(self._reap, now)

    def _reap(self, db: _Db, now: float) -> list[str]:
        if not db.execute(_HAS_EXPIRED, (now,)).fetchone()[0]:
            return []
        rows = db.write(lambda db: db.execute(_REAP, (now,)).fetchall())
        return [response_id for (response_id,) in rows]

    async def request_cancel(self, response_id: str) -> bool:
        return await self._run(_Db.update, _REQUEST_CANCEL, (response_id,))

    async def cancel_requested(self, response_id: str) -> bool:
        return await self._run(self._cancel_requested, response_id)

    def _cancel_requested(self, db: _Db, response_id: str) -> bool:
        row = db.execute(_CANCEL_REQUESTED, (response_id,)).fetchone()
        return row is not None and bool(row[0])

    async def wait_for_jobs(self, timeout: float) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        await self._wakeups.wait_for_jobs(timeout, self._has_unclaimed)

    async def _has_unclaimed(self) -> bool:
        return await self._run(self._exists, _HAS_UNCLAIMED, ())

    # -- event logs --------------------------------------------------------------------------

    async def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        rows = [(response_id, event["sequence_number"], orjson.dumps(event).decode())
                for event in events]
        await self._run(self._append_events, rows, write=True)
        self._wakeups.events_appended(response_id, max(row[1] for row in rows))

    def _append_events(self, db: _Db, rows: list[tuple[str, int, str]]) -> None:
        db.executemany(_INSERT_EVENT, rows)

    async def read_events(self, response_id: str, after: int) -> list[dict[str, Any]]:
        return await self._run(self._read_events, response_id, after)

    def _read_events(self, db: _Db, response_id: str, after: int) -> list[dict[str, Any]]:
        rows = db.execute(_READ_EVENTS, (response_id, after)).fetchall()
        if not rows:
            return []
        return orjson.loads("[" + ",".join(data for (data,) in rows) + "]")

    async def wait_for_events(self, response_id: str, after: int, timeout: float) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

        async def check() -> bool:
            return await self._run(self._exists, _HAS_EVENT_AFTER, (response_id, after))

        await self._wakeups.wait_for_events(response_id, after, timeout, check)

    # -- files -------------------------------------------------------------------------------

    async def save_file(self, file: StoredFile, chunks: AsyncIterable[bytes]) -> None:
        row = (file.id, file.filename, file.purpose, file.bytes, file.content_type,
               file.created_at, file.created_at + UPLOAD_GRACE_SECONDS)
        await self._run(_Db.update, _INSERT_FILE, row)
        try:
            seq = size = 0
            async for chunk in chunks:
                await self._run(_Db.update, _INSERT_CHUNK, (file.id, seq, chunk), heavy=True)
                seq += 1
                size += len(chunk)
            if size != file.bytes:
                raise ValueError(f"file {file.id}: {size} bytes written, {file.bytes} declared")
            await self._run(_Db.update, _COMPLETE_FILE, (file.id, file.expires_at))
        except BaseException:
            try:
                await asyncio.shield(self._run(_Db.update, _DROP_FILE, (file.id,)))
            except Exception:  # the purge removes it later; the cause is what matters
                log.warning("could not remove the unfinished upload %s", file.id, exc_info=True)
            raise

    async def get_file(self, file_id: str, now: int) -> StoredFile | None:
        return await self._run(self._get_file, file_id, now)

    def _get_file(self, db: _Db, file_id: str, now: int) -> StoredFile | None:
        row = db.execute(_SELECT_FILE, (file_id, now)).fetchone()
        return None if row is None else StoredFile(*row)

    async def list_files(
        self, *, purpose: str | None, limit: int, order: Literal["asc", "desc"],
        after: str | None, now: int,
    ) -> FilePage:
        return await self._run(self._list_files, purpose, limit, order, after, now)

    def _list_files(self, db: _Db, purpose: str | None, limit: int, order: Literal["asc", "desc"],
                    after: str | None, now: int) -> FilePage:
        rows = db.execute(_LIST_FILES[order], (now, purpose, after, limit + 1)).fetchall()
        return FilePage([StoredFile(*row) for row in rows[:limit]], len(rows) > limit)

    async def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        seq = 0
        while True:
            rows = await self._run(self._read_chunks, file_id, seq, heavy=True)
            for data in rows:
                yield data
            if len(rows) < READ_CHUNKS:
                return
            seq += len(rows)

    def _read_chunks(self, db: _Db, file_id: str, seq: int) -> list[bytes]:
        rows = db.execute(_READ_CHUNKS, (file_id, seq, READ_CHUNKS)).fetchall()
        return [bytes(data) for (data,) in rows]

    async def delete_file(self, file_id: str, now: int) -> bool:
        return await self._run(_Db.update, _DELETE_FILE, (file_id, now))

    async def purge_files(self, now: int) -> int:
        removed = 0
        while True:  # a batch per transaction: big files free many pages
            count = await self._run(self._execute_count, _PURGE_FILES, (now, PURGE_FILES_BATCH),
                                   heavy=True)
            removed += count
            if count < PURGE_FILES_BATCH:
                return removed

    def _execute_count(self, db: _Db, sql: str, params: tuple[Any, ...]) -> int:
        return db.execute(sql, params).rowcount

    def _exists(self, db: _Db, sql: str, params: tuple[Any, ...]) -> bool:
        return bool(db.execute(sql, params).fetchone()[0])

    async def _probe(
        self, watched: dict[str, int], jobs: bool
    ) -> tuple[bool, dict[str, int | None]] | None:
        return await self._run(self._probe_now, list(watched), jobs)

    def _probe_now(
        self, db: _Db, watched: list[str], jobs: bool
    ) -> tuple[bool, dict[str, int | None]] | None:
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if version == self._data_version:
            return None  # no other connection has committed since the last probe
        self._data_version = version
        unclaimed = jobs and self._exists(db, _HAS_UNCLAIMED, ())
        lasts: dict[str, int | None] = {}
        if watched:
            rows = db.execute(_LAST_EVENTS, (orjson.dumps(watched).decode(),)).fetchall()
            lasts = dict(rows)
        return unclaimed, lasts

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._wakeups.aclose()
        if self._checkpoint is not None:
            await self._checkpoint
        self._closed = True
        self._inline.conn.close()
        if self._threaded is not None:
            await self._worker.run(_checkpoint_and_close, self._threaded.conn)
        await self._worker.stop()


def _job(db: _Db, job: Callable[..., T], args: tuple[Any, ...], write: bool) -> T:
    return db.write(job, *args) if write else job(db, *args)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether another connection holds a lock the statement needed (SQLITE_BUSY/LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _checkpoint(db: _Db) -> None:
    # RESTART: copies the whole log and makes the next writer start it over, so the log stays
    # as small as the writes between two checkpoints. This store's writes queue behind this
    # job meanwhile; readers go on. It waits at most CHECKPOINT_WAIT_MS for other processes'
    # readers and writers: when they keep it from finishing, the next checkpoint goes on
    # from where this one stopped, and this process's writes were held up only that long.
    db.conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        db.conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    finally:
        db.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _checkpoint_and_close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. Switching needs the file to itself and, unlike other statements, does
    not wait on the busy timeout, so replicas opening a new file together retry here."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)  # on the store's own thread, while opening
        delay = min(delay * 2, 0.1)


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we write BEGIN/COMMIT ourselves. check_same_thread=False only
    # because the connection object is created here and closed by a later job, always on
    # this same worker thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        apply_sqlite(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_inline(path: str) -> sqlite3.Connection:
    """The connection used on the event loop: it never waits for a lock (busy_timeout 0:
    the job moves to the store's thread instead) and never checkpoints (the thread does)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


def _response_rows(
    response: StoredResponse, new_items: list[Item]
) -> tuple[tuple[Any, ...], list[tuple[str, str, str]]]:
    row = (
        response.id,
        orjson.dumps(response.body).decode(),
        orjson.dumps(response.context_ids).decode(),
        orjson.dumps(response.output_ids).decode(),
        response.previous_response_id,
        response.created_at,
        response.expires_at,
    )
    items = [(item["id"], response.id, orjson.dumps(item).decode()) for item in new_items]
    return row, items


def _stored_response(response_id: str, row: tuple[Any, ...]) -> StoredResponse:
    body, context_ids, output_ids, previous_response_id, created_at, expires_at = row
    return StoredResponse(
        id=response_id,
        body=orjson.loads(body),
        context_ids=orjson.loads(context_ids),
        output_ids=orjson.loads(output_ids),
        previous_response_id=previous_response_id,
        created_at=created_at,
        expires_at=expires_at,
    )
