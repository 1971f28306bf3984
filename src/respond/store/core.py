"""What the SQL stores share: the logic of reads, paging, purges, the job queue, event logs
and files, written once over four primitives that each adapter implements.

Rules:
- The primitives run one statement (store/statements.py) with named values and raise
  ``ServerError`` for a database failure: ``_row`` (the first row or None), ``_rows``,
  ``_value`` (the first column of the first row) and ``_change`` (a writing statement; the
  rows it touched). ``heavy`` marks work that may take long (file contents, purges): SQLite
  runs it on its thread, PostgreSQL ignores it.
- ``_take(probe, write, values)`` (values by name, for both statements) is a write that usually finds nothing to do (claiming,
  reaping): SQLite reads ``probe`` first and takes its write lock only when it says there
  is something, so idle workers never queue behind writers; PostgreSQL just writes (one
  round trip, and it never waits on a row another replica is taking).
- What differs truly stays in the adapters: how a response is saved and a context loaded
  (one statement on PostgreSQL), deleting (a transaction of several statements), enqueuing
  and appending (with a notification on PostgreSQL), and how a worker is known to be alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import Any, Literal

import orjson

from respond.store import FilePage, Item, ItemPage, Job, StoredFile, StoredResponse
from respond.store import statements as sql
from respond.store.dialect import DialectName, Sql, Values, id_list
from respond.store.pages import in_order, page
from respond.store.wakeups import Wakeups

log = logging.getLogger(__name__)

PURGE_BATCH = 500  # responses removed per statement, so a large purge never holds locks long
UPLOAD_GRACE_SECONDS = 86400  # an unfinished upload is purged after this
READ_CHUNKS = 4  # chunks fetched per call when a file is read
PURGE_FILES_BATCH = 100


# Deleting a response: ``TOMBSTONE`` hides it (nothing more when it was unknown or hidden
# already), then these, in the same transaction, drop its job and event log (nothing can read
# them any more) and remove the row and each hidden ancestor that nothing builds on now.
AFTER_TOMBSTONE = (sql.DROP_JOB, sql.DROP_EVENTS, sql.DELETE_UNBUILT)


def new_worker_name() -> str:
    """``host:pid:random``: unique, and enough for SQLite to tell whether its process lives."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def json_list(text: str | None) -> list[Any]:
    """A JSON array's text (None when there were no documents) as a list."""
    return [] if text is None else orjson.loads(text)


def stored_response(response_id: str, row: Any) -> StoredResponse:
    """A response row (``_RESPONSE_COLUMNS`` order): id lists are JSON text on SQLite."""
    context_ids, output_ids = row[1], row[2]
    return StoredResponse(
        id=response_id,
        body=orjson.loads(row[0]),
        context_ids=orjson.loads(context_ids) if isinstance(context_ids, str) else context_ids,
        output_ids=orjson.loads(output_ids) if isinstance(output_ids, str) else output_ids,
        previous_response_id=row[3],
        created_at=row[4],
        expires_at=row[5],
    )


def response_row(response: StoredResponse, dialect: DialectName) -> tuple[Any, ...]:
    """The response's values in ``statements.RESPONSE_PARAMS`` order."""
    return (
        response.id,
        orjson.dumps(response.body).decode(),
        id_list(dialect, response.context_ids),
        id_list(dialect, response.output_ids),
        response.previous_response_id,
        response.created_at,
        response.expires_at,
    )


class SqlCore:
    """The shared half of a SQL store; subclasses set ``dialect`` and the primitives."""

    dialect: DialectName
    _wakeups: Wakeups
    _closed: bool

    # -- primitives (adapters) ---------------------------------------------------------------

    # Plain functions returning an awaitable (no coroutine of their own: one frame less on
    # the hot path).

    def _row(self, statement: Sql, values: Values, *, heavy: bool = False) -> Awaitable[Any]:
        raise NotImplementedError

    def _rows(self, statement: Sql, values: Values, *,
              heavy: bool = False) -> Awaitable[list[Any]]:
        raise NotImplementedError

    def _value(self, statement: Sql, values: Values) -> Awaitable[Any]:
        raise NotImplementedError

    def _change(self, statement: Sql, values: Values, *, heavy: bool = False) -> Awaitable[int]:
        raise NotImplementedError

    def _take(self, probe: Sql, write: Sql, values: Values) -> Awaitable[list[Any]]:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

    # -- responses and items -----------------------------------------------------------------

    async def get_response(self, response_id: str, now: int) -> StoredResponse | None:
        row = await self._row(sql.SELECT_RESPONSE, (response_id, now))
        return None if row is None else stored_response(response_id, row)

    async def get_items(self, item_ids: list[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        rows = await self._rows(sql.SELECT_ITEMS_BY_ID, (id_list(self.dialect, item_ids),))
        return {item_id: orjson.loads(data) for item_id, data in rows}

    async def _items_in_order(self, response_id: str, ids: list[str]) -> list[Item]:
        if not ids:
            return []
        text = await self._value(sql.SELECT_ITEMS_IN_ORDER, (id_list(self.dialect, ids),))
        return in_order(response_id, ids, json_list(text))

    async def list_input_items(
        self, response_id: str, *, limit: int, order: Literal["asc", "desc"],
        after: str | None, before: str | None, now: int,
    ) -> ItemPage | None:
        stored = await self._value(sql.SELECT_CONTEXT_IDS, {"id": response_id, "now": now})
        if stored is None:
            return None
        ids: list[str] = orjson.loads(stored) if isinstance(stored, str) else list(stored)
        if order == "desc":
            ids.reverse()
        page_ids, has_more = page(ids, limit=limit, after=after, before=before)
        return ItemPage(items=await self._items_in_order(response_id, page_ids),
                        has_more=has_more)

    async def purge_expired(self, now: int) -> int:
        removed = 0
        while True:  # one statement per batch, so other writes get in between
            count = await self._change(sql.PURGE_BATCH, {"now": now, "limit": PURGE_BATCH},
                                       heavy=True)
            removed += count
            if count < PURGE_BATCH:
                break
        await self._change(sql.DROP_HIDDEN_JOBS, {"now": now}, heavy=True)
        await self._change(sql.DROP_HIDDEN_EVENTS, {"now": now}, heavy=True)
        return removed

    # -- background work ---------------------------------------------------------------------

    async def claim(self, worker: str, now: float, lease_seconds: float) -> Job | None:
        rows = await self._take(sql.HAS_UNCLAIMED, sql.CLAIM,
                                {"worker": worker, "lease_until": float(now + lease_seconds)})
        if not rows:
            return None
        response_id, payload, attempts = rows[0]
        return Job(response_id=response_id, payload=orjson.loads(payload), attempts=attempts)

    async def renew(self, response_id: str, worker: str, now: float, lease_seconds: float) -> bool:
        values = {"id": response_id, "worker": worker, "lease_until": float(now + lease_seconds)}
        return await self._change(sql.RENEW, values) > 0

    async def finish_job(self, response_id: str) -> None:
        await self._change(sql.DROP_JOB, {"id": response_id})

    async def reap(self, now: float) -> list[str]:
        rows = await self._take(sql.HAS_REAPABLE, sql.REAP, {"now": float(now)})
        return [row[0] for row in rows]

    async def request_cancel(self, response_id: str) -> bool:
        return await self._change(sql.REQUEST_CANCEL, {"id": response_id}) > 0

    async def cancel_requested(self, response_id: str) -> bool:
        return bool(await self._value(sql.CANCEL_REQUESTED, {"id": response_id}))

    async def wait_for_jobs(self, timeout: float) -> None:
        self._check_open()
        await self._wakeups.wait_for_jobs(timeout, self._has_unclaimed)

    async def _has_unclaimed(self) -> bool:
        return bool(await self._value(sql.HAS_UNCLAIMED, {}))

    # -- event logs --------------------------------------------------------------------------

    async def read_events(self, response_id: str, after: int) -> list[dict[str, Any]]:
        rows = await self._rows(sql.READ_EVENTS, {"id": response_id, "after": after})
        return json_list("[" + ",".join(data for (data,) in rows) + "]" if rows else None)

    async def wait_for_events(self, response_id: str, after: int, timeout: float) -> None:
        self._check_open()

        async def check() -> bool:
            values = {"id": response_id, "after": after}
            return bool(await self._value(sql.HAS_EVENT_AFTER, values))

        await self._wakeups.wait_for_events(response_id, after, timeout, check)

    async def _probe(
        self, watched: dict[str, int], jobs: bool
    ) -> tuple[bool, dict[str, int | None]] | None:
        """For the poller (store/wakeups.py): whether a job waits, and the last sequence
        number of each followed response."""
        unclaimed = jobs and await self._has_unclaimed()
        lasts: dict[str, int | None] = {}
        if watched:
            rows = await self._rows(sql.LAST_EVENTS, {"ids": id_list(self.dialect, list(watched))})
            lasts = {response_id: last for response_id, last in rows}
        return unclaimed, lasts

    # -- files -------------------------------------------------------------------------------

    async def save_file(self, file: StoredFile, chunks: AsyncIterable[bytes]) -> None:
        await self._change(sql.INSERT_FILE, {
            "id": file.id, "filename": file.filename, "purpose": file.purpose,
            "bytes": file.bytes, "content_type": file.content_type,
            "created_at": file.created_at,
            "expires_at": file.created_at + UPLOAD_GRACE_SECONDS})
        try:
            seq = size = 0
            async for chunk in chunks:
                await self._change(sql.INSERT_CHUNK, {"id": file.id, "seq": seq, "data": chunk},
                                   heavy=True)
                seq += 1
                size += len(chunk)
            if size != file.bytes:
                raise ValueError(f"file {file.id}: {size} bytes written, {file.bytes} declared")
            await self._change(sql.COMPLETE_FILE, {"id": file.id, "expires_at": file.expires_at})
        except BaseException:
            try:
                await asyncio.shield(self._change(sql.DROP_FILE, {"id": file.id}))
            except Exception:  # the purge removes it later; the cause is what matters
                log.warning("could not remove the unfinished upload %s", file.id, exc_info=True)
            raise

    async def get_file(self, file_id: str, now: int) -> StoredFile | None:
        row = await self._row(sql.SELECT_FILE, {"id": file_id, "now": now})
        return None if row is None else StoredFile(*row)

    async def list_files(
        self, *, purpose: str | None, limit: int, order: Literal["asc", "desc"],
        after: str | None, now: int,
    ) -> FilePage:
        rows = await self._rows(sql.LIST_FILES[order], {
            "now": now, "purpose": purpose, "after": after, "limit": limit + 1})
        return FilePage([StoredFile(*row) for row in rows[:limit]], len(rows) > limit)

    async def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        seq = 0
        while True:
            rows = await self._rows(sql.READ_CHUNKS,
                                    {"id": file_id, "seq": seq, "limit": READ_CHUNKS}, heavy=True)
            for (data,) in rows:
                yield bytes(data)
            if len(rows) < READ_CHUNKS:
                return
            seq += len(rows)

    async def delete_file(self, file_id: str, now: int) -> bool:
        return await self._change(sql.DELETE_FILE, {"id": file_id, "now": now}) > 0

    async def purge_files(self, now: int) -> int:
        removed = 0
        while True:  # a batch per statement: big files free many pages
            count = await self._change(sql.PURGE_FILES, {"now": now, "limit": PURGE_FILES_BATCH},
                                       heavy=True)
            removed += count
            if count < PURGE_FILES_BATCH:
                return removed
