"""PostgreSQL store: an ``asyncpg`` pool for the work, one more connection that LISTENs.

Rules:
- Round trips are the cost: every hot method is one statement (a write and the items it
  brings are one statement of data-modifying CTEs, which is atomic on its own), so saving
  a response or loading a context of any depth is one round trip. Items never change once
  stored, so the items this process stored or read stay in an ``ItemCache`` (bounded); a
  context whose every item it holds is loaded as the response row alone. Multi-statement work
  (deleting) runs in an explicit transaction. Pooled connections are not reset on release
  (no extra round trip): this store never leaves session state behind.
- Documents are ``json`` (exact text), id lists ``text[]``; see migrations/postgresql/0001.
- Deletion and retention follow the same rules, in the same SQL, as store/sqlite.py.
- Background work: ``claim`` is one ``UPDATE ... FOR UPDATE SKIP LOCKED`` statement, so
  replicas never take the same job and never wait on each other. Writes that others wait
  for ``pg_notify`` inside their own statement, so the notification goes out on commit and
  never for a write that failed. A dedicated connection LISTENs and wakes this process's
  waiters; it reconnects when it drops (waking everyone, since notifications were lost
  meanwhile), and a poll every ``POLL_SECONDS`` while anyone waits covers any other loss.
- Channels are per schema (``respond_jobs``/``respond_events`` in ``public``, suffixed
  otherwise): NOTIFY is database-wide, and deployments in other schemas must not wake us.
- ``asyncpg`` and network errors leave as ``ServerError`` (logged with their cause). A call
  cancelled by its caller may or may not have committed; PostgreSQL never keeps half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson

from respond.errors import ServerError
from respond.store import FilePage, Item, ItemPage, Job, StoredFile, StoredResponse
from respond.store.cache import ItemCache, fill
from respond.store.migrations import apply_postgresql, quote_identifier
from respond.store.pages import in_order, page
from respond.store.wakeups import Wakeups

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the longest a lost notification can delay a waiter
WHOLE_CONTEXTS = 4096  # responses remembered as held whole in the item cache
KEEPALIVE_SECONDS = 10.0  # how often the listening connection proves it is alive
RECONNECT_MIN_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 10.0
PURGE_BATCH = 500  # responses removed per statement, so a large purge never holds locks long
TOMBSTONE_EXPIRES_AT = 0
SCHEMES = ("postgresql", "postgres")

Connect = Callable[[], Awaitable[asyncpg.Connection]]

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_RESPONSE_COLUMNS = "body, context_ids, output_ids, previous_response_id, created_at, expires_at"

# A response and the items it introduces, in one statement. Items are immutable: a known id
# keeps its first content and owner. The parent row is inserted by the same statement; the
# items' foreign key is checked at its end, when it is there.
_SAVE_CTES = f"""
WITH saved AS (
    INSERT INTO responses (id, {_RESPONSE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (id) DO UPDATE SET
        body = excluded.body, context_ids = excluded.context_ids,
        output_ids = excluded.output_ids, previous_response_id = excluded.previous_response_id,
        created_at = excluded.created_at, expires_at = excluded.expires_at
    RETURNING id
), new_items AS (
    INSERT INTO items (id, response_id, data)
    SELECT n.id, $1, n.data::json FROM unnest($8::text[], $9::text[]) AS n (id, data)
    ON CONFLICT (id) DO NOTHING
)"""

_SAVE = _SAVE_CTES + "\nSELECT 1"

# A new job replaces any job the response had (and so the lease of whoever held it).
_ENQUEUE = _SAVE_CTES + """, job AS (
    INSERT INTO jobs (response_id, payload) VALUES ($1, $10)
    ON CONFLICT (response_id) DO UPDATE SET
        payload = excluded.payload, worker = NULL, lease_until = NULL, attempts = 0,
        cancel_requested = false, created_at = excluded.created_at
)
SELECT pg_notify($11, $1)"""

_SELECT_RESPONSE = f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = $1 AND expires_at > $2"

# The items of an id list as one JSON array body (without brackets), in the list's order.
_ITEMS_JSON = (
    "SELECT string_agg(i.data::text, ',' ORDER BY c.n) "
    "FROM unnest({ids}) WITH ORDINALITY AS c (id, n) JOIN items AS i ON i.id = c.id"
)

# The response row and its whole context in one round trip, whatever the depth.
_LOAD_CONTEXT = f"""
SELECT {_RESPONSE_COLUMNS}, ({_ITEMS_JSON.format(ids="r.context_ids || r.output_ids")})
FROM responses AS r WHERE r.id = $1 AND r.expires_at > $2
"""

_SELECT_ITEMS_IN_ORDER = _ITEMS_JSON.format(ids="$1::text[]")

_SELECT_ITEMS_BY_ID = "SELECT id, data FROM items WHERE id = ANY($1::text[])"

_SELECT_CONTEXT_IDS = "SELECT context_ids FROM responses WHERE id = $1 AND expires_at > $2"

# Tombstone the row (it may still be built on) and drop its job and events, which nothing
# can read any more.
_TOMBSTONE = f"""
WITH tomb AS (
    UPDATE responses SET body = '{{}}', context_ids = '{{}}', output_ids = '{{}}',
        expires_at = {TOMBSTONE_EXPIRES_AT}
    WHERE id = $1 AND expires_at > $2
    RETURNING id
), job AS (
    DELETE FROM jobs WHERE response_id IN (SELECT id FROM tomb)
), log AS (
    DELETE FROM events WHERE response_id IN (SELECT id FROM tomb)
)
SELECT count(*) FROM tomb
"""

# As in store/sqlite.py: the response if nothing builds on it, then each hidden ancestor left
# childless by the removal below it.
_DELETE_UNBUILT = """
DELETE FROM responses WHERE id IN (
    WITH RECURSIVE doomed (id, parent) AS (
        SELECT id, previous_response_id FROM responses
        WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM responses WHERE previous_response_id = $1)
        UNION
        SELECT p.id, p.previous_response_id
        FROM doomed AS d JOIN responses AS p ON p.id = d.parent
        WHERE p.expires_at <= $2 AND NOT EXISTS (
            SELECT 1 FROM responses AS c WHERE c.previous_response_id = p.id AND c.id <> d.id)
    )
    SELECT id FROM doomed
)
"""

# As in store/sqlite.py: hidden rows with no live descendant, a batch at a time.
_PURGE_BATCH = """
DELETE FROM responses WHERE id IN (
    SELECT id FROM responses
    WHERE expires_at <= $1 AND id NOT IN (
        WITH RECURSIVE keep (id) AS (
            SELECT p.id FROM responses AS p
            WHERE p.expires_at <= $1 AND EXISTS (
                SELECT 1 FROM responses AS c
                WHERE c.previous_response_id = p.id AND c.expires_at > $1)
            UNION
            SELECT p.id FROM keep AS k
            JOIN responses AS c ON c.id = k.id
            JOIN responses AS p ON p.id = c.previous_response_id
            WHERE p.expires_at <= $1
        )
        SELECT id FROM keep
    )
    LIMIT $2
)
"""

# Jobs and events of hidden rows that stay because a live response builds on them.
_DROP_HIDDEN_WORK = """
WITH job AS (
    DELETE FROM jobs WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= $1)
)
DELETE FROM events WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= $1)
"""

# -- background work -------------------------------------------------------------------------

# SKIP LOCKED: concurrent claimers pass over a row another one is taking instead of waiting
# for it; a row that changed under us is re-checked (worker IS NULL) before it is returned.
_CLAIM = """
UPDATE jobs SET worker = $1, lease_until = $2, attempts = attempts + 1
WHERE response_id = (
    SELECT response_id FROM jobs WHERE worker IS NULL
    ORDER BY created_at, response_id LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING response_id, payload, attempts
"""

_RENEW = "UPDATE jobs SET lease_until = $3 WHERE response_id = $1 AND worker = $2"

_FINISH = "DELETE FROM jobs WHERE response_id = $1"

_REAP = "DELETE FROM jobs WHERE worker IS NOT NULL AND lease_until < $1 RETURNING response_id"

_REQUEST_CANCEL = "UPDATE jobs SET cancel_requested = true WHERE response_id = $1"

_CANCEL_REQUESTED = "SELECT cancel_requested FROM jobs WHERE response_id = $1"

_HAS_UNCLAIMED = "SELECT EXISTS (SELECT 1 FROM jobs WHERE worker IS NULL)"

# -- event logs ------------------------------------------------------------------------------

# First write of a sequence number wins (a retried append never fails on a duplicate). The
# notification names the response and its last sequence number.
_APPEND_EVENTS = """
WITH appended AS (
    INSERT INTO events (response_id, sequence_number, data)
    SELECT $1, e.seq, e.data::json FROM unnest($2::int[], $3::text[]) AS e (seq, data)
    ON CONFLICT (response_id, sequence_number) DO NOTHING
)
SELECT pg_notify($4, $5)
"""

_READ_EVENTS = (
    "SELECT string_agg(data::text, ',' ORDER BY sequence_number) FROM events "
    "WHERE response_id = $1 AND sequence_number > $2"
)

_HAS_EVENT_AFTER = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE response_id = $1 AND sequence_number > $2)"
)

# The poll: whether a job waits, and the last sequence number of each followed response.
_PROBE = """
SELECT EXISTS (SELECT 1 FROM jobs WHERE worker IS NULL),
       ARRAY(SELECT (SELECT max(sequence_number) FROM events WHERE response_id = w.id)
             FROM unnest($1::text[]) WITH ORDINALITY AS w (id, n) ORDER BY w.n)
"""

# -- files -----------------------------------------------------------------------------------

UPLOAD_GRACE_SECONDS = 86400  # an unfinished upload is purged after this
READ_CHUNKS = 4  # chunks fetched per round trip when a file is read
PURGE_FILES_BATCH = 100

_FILE_COLUMNS = "id, filename, purpose, bytes, content_type, created_at, expires_at"

_INSERT_FILE = (
    f"INSERT INTO files ({_FILE_COLUMNS}, complete) VALUES ($1, $2, $3, $4, $5, $6, $7, false)"
)

_INSERT_CHUNK = "INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)"

_COMPLETE_FILE = "UPDATE files SET complete = true, expires_at = $2 WHERE id = $1"

_DROP_FILE = "DELETE FROM files WHERE id = $1"

_SELECT_FILE = (
    f"SELECT {_FILE_COLUMNS} FROM files WHERE id = $1 AND complete AND expires_at > $2"
)

# As in store/sqlite.py: upload order, resumed after the cursor's own row.
_LIST_FILES = {
    order: f"""
SELECT {_FILE_COLUMNS} FROM files
WHERE complete AND expires_at > $1 AND ($2::text IS NULL OR purpose = $2)
  AND ($3::text IS NULL OR ordinal {op} (SELECT ordinal FROM files WHERE id = $3))
ORDER BY ordinal {order.upper()} LIMIT $4
"""
    for order, op in (("asc", ">"), ("desc", "<"))
}

_READ_CHUNKS = (
    "SELECT data FROM file_chunks WHERE file_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
)

_DELETE_FILE = "DELETE FROM files WHERE id = $1 AND complete AND expires_at > $2"

_PURGE_FILES = (
    "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE expires_at <= $1 LIMIT $2)"
)


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


class PostgresStore:
    """The ``Store`` protocol on PostgreSQL. Open with ``await PostgresStore.open(url)``.

    ``schema`` (created if missing) puts every table in that schema, through the
    connections' ``search_path``; tests use a fresh one each. ``statements`` counts the
    statements sent so far (one round trip each, ``BEGIN``/``COMMIT`` included).
    """

    def __init__(self, pool: asyncpg.Pool, connect: Connect, channels: tuple[str, str]) -> None:
        self._pool = pool
        self._closed = False
        self.statements = 0
        # items by id (store/cache.py), and the responses whose every item it holds
        self._cache = ItemCache()
        self._whole: OrderedDict[str, None] = OrderedDict()
        self._jobs_channel, self._events_channel = channels
        self._wakeups = Wakeups(self._probe, POLL_SECONDS)
        self._listener = _Listener(connect, {
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
                current = await conn.fetchval("SELECT current_schema()")
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

    # -- round trips ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        self._check_open()
        self.statements += 1
        try:
            return await self._pool.fetchrow(sql, *args)
        except _ERRORS as exc:
            raise _failure(sql, exc) from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self._check_open()
        self.statements += 1
        try:
            return await self._pool.fetch(sql, *args)
        except _ERRORS as exc:
            raise _failure(sql, exc) from exc

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        self._check_open()
        self.statements += 1
        try:
            return await self._pool.fetchval(sql, *args)
        except _ERRORS as exc:
            raise _failure(sql, exc) from exc

    async def _execute(self, sql: str, *args: Any) -> int:
        """Run a writing statement; the number of rows it touched."""
        self._check_open()
        self.statements += 1
        try:
            status = await self._pool.execute(sql, *args)
        except _ERRORS as exc:
            raise _failure(sql, exc) from exc
        return int(status.rsplit(" ", 1)[-1])

    # -- Store ---------------------------------------------------------------------------------

    async def save_response(self, response: StoredResponse, new_items: list[Item]) -> None:
        args = _response_args(response, new_items)
        await self._fetchval(_SAVE, *args)
        self._note_saved(response, args[-1])

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

    async def get_response(self, response_id: str, now: int) -> StoredResponse | None:
        row = await self._fetchrow(_SELECT_RESPONSE, response_id, now)
        return None if row is None else _stored_response(response_id, row)

    async def get_items(self, item_ids: list[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        rows = await self._fetch(_SELECT_ITEMS_BY_ID, item_ids)
        return {item_id: orjson.loads(data) for item_id, data in rows}

    async def load_context(
        self, response_id: str, now: int
    ) -> tuple[StoredResponse, list[Item]] | None:
        if response_id not in self._whole:
            row = await self._fetchrow(_LOAD_CONTEXT, response_id, now)
            if row is None:
                return None
            response = _stored_response(response_id, row)
            ids = response.context_ids + response.output_ids
            items = in_order(response_id, ids, _json_list(row[6]))
            if items and len(items) == len(ids):
                self._cache.put_many(items, len(row[6]) // len(items))
                self._whole[response_id] = None
            return response, items
        # this process stored or read the whole context: the row alone, items from memory
        row = await self._fetchrow(_SELECT_RESPONSE, response_id, now)
        if row is None:
            return None
        response = _stored_response(response_id, row)
        ids = response.context_ids + response.output_ids
        cached, missing = self._cache.lookup(ids)
        read: list[Item] = []
        if missing:  # some were evicted since: read those (a second round trip, rare)
            text = await self._fetchval(_SELECT_ITEMS_IN_ORDER, missing)
            read = in_order(response_id, missing, _json_list(text))
        return response, fill(ids, cached, read)

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
        ids = await self._fetchval(_SELECT_CONTEXT_IDS, response_id, now)
        if ids is None:
            return None
        if order == "desc":
            ids.reverse()
        page_ids, has_more = page(ids, limit=limit, after=after, before=before)
        items: list[Item] = []
        if page_ids:
            text = await self._fetchval(_SELECT_ITEMS_IN_ORDER, page_ids)
            items = in_order(response_id, page_ids, _json_list(text))
        return ItemPage(items=items, has_more=has_more)

    async def delete_response(self, response_id: str, now: int) -> bool:
        self._check_open()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                self.statements += 2  # BEGIN, then the tombstone
                if await conn.fetchval(_TOMBSTONE, response_id, now) == 0:
                    self.statements += 1  # COMMIT
                    return False
                self.statements += 2  # the delete, then COMMIT
                await conn.execute(_DELETE_UNBUILT, response_id, now)
                return True
        except _ERRORS as exc:
            raise _failure(_TOMBSTONE, exc) from exc

    async def purge_expired(self, now: int) -> int:
        removed = 0
        while True:  # one statement per batch, so other writes get in between
            count = await self._execute(_PURGE_BATCH, now, PURGE_BATCH)
            removed += count
            if count < PURGE_BATCH:
                break
        await self._execute(_DROP_HIDDEN_WORK, now)
        return removed

    # -- background work -----------------------------------------------------------------------

    async def enqueue(
        self, response: StoredResponse, new_items: list[Item], payload: dict[str, Any]
    ) -> None:
        await self._fetchval(
            _ENQUEUE, *_response_args(response, new_items), orjson.dumps(payload).decode(),
            self._jobs_channel,
        )
        self._wakeups.jobs_enqueued()

    async def claim(self, worker: str, now: float, lease_seconds: float) -> Job | None:
        row = await self._fetchrow(_CLAIM, worker, float(now + lease_seconds))
        if row is None:
            return None
        return Job(response_id=row[0], payload=orjson.loads(row[1]), attempts=row[2])

    async def renew(self, response_id: str, worker: str, now: float, lease_seconds: float) -> bool:
        return await self._execute(_RENEW, response_id, worker, float(now + lease_seconds)) > 0

    async def finish_job(self, response_id: str) -> None:
        await self._execute(_FINISH, response_id)

    async def reap(self, now: float) -> list[str]:
        return [row[0] for row in await self._fetch(_REAP, float(now))]

    async def request_cancel(self, response_id: str) -> bool:
        return await self._execute(_REQUEST_CANCEL, response_id) > 0

    async def cancel_requested(self, response_id: str) -> bool:
        return bool(await self._fetchval(_CANCEL_REQUESTED, response_id))

    async def wait_for_jobs(self, timeout: float) -> None:
        self._check_open()
        await self._wakeups.wait_for_jobs(timeout, self._has_unclaimed)

    async def _has_unclaimed(self) -> bool:
        return bool(await self._fetchval(_HAS_UNCLAIMED))

    # -- event logs ----------------------------------------------------------------------------

    async def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        sequence = [event["sequence_number"] for event in events]
        data = [orjson.dumps(event).decode() for event in events]
        last = max(sequence)
        await self._fetchval(_APPEND_EVENTS, response_id, sequence, data,
                             self._events_channel, f"{response_id} {last}")
        self._wakeups.events_appended(response_id, last)

    async def read_events(self, response_id: str, after: int) -> list[dict[str, Any]]:
        return _json_list(await self._fetchval(_READ_EVENTS, response_id, after))

    async def wait_for_events(self, response_id: str, after: int, timeout: float) -> None:
        self._check_open()

        async def check() -> bool:
            return bool(await self._fetchval(_HAS_EVENT_AFTER, response_id, after))

        await self._wakeups.wait_for_events(response_id, after, timeout, check)

    # -- files ---------------------------------------------------------------------------------

    async def save_file(self, file: StoredFile, chunks: AsyncIterable[bytes]) -> None:
        await self._execute(_INSERT_FILE, file.id, file.filename, file.purpose, file.bytes,
                            file.content_type, file.created_at,
                            file.created_at + UPLOAD_GRACE_SECONDS)
        try:
            seq = size = 0
            async for chunk in chunks:
                await self._execute(_INSERT_CHUNK, file.id, seq, chunk)
                seq += 1
                size += len(chunk)
            if size != file.bytes:
                raise ValueError(f"file {file.id}: {size} bytes written, {file.bytes} declared")
            await self._execute(_COMPLETE_FILE, file.id, file.expires_at)
        except BaseException:
            try:
                await asyncio.shield(self._execute(_DROP_FILE, file.id))
            except Exception:  # the purge removes it later; the cause is what matters
                log.warning("could not remove the unfinished upload %s", file.id, exc_info=True)
            raise

    async def get_file(self, file_id: str, now: int) -> StoredFile | None:
        row = await self._fetchrow(_SELECT_FILE, file_id, now)
        return None if row is None else StoredFile(*row)

    async def list_files(
        self, *, purpose: str | None, limit: int, order: Literal["asc", "desc"],
        after: str | None, now: int,
    ) -> FilePage:
        rows = await self._fetch(_LIST_FILES[order], now, purpose, after, limit + 1)
        return FilePage([StoredFile(*row) for row in rows[:limit]], len(rows) > limit)

    async def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        seq = 0
        while True:
            rows = await self._fetch(_READ_CHUNKS, file_id, seq, READ_CHUNKS)
            for row in rows:
                yield row[0]
            if len(rows) < READ_CHUNKS:
                return
            seq += len(rows)

    async def delete_file(self, file_id: str, now: int) -> bool:
        return await self._execute(_DELETE_FILE, file_id, now) > 0

    async def purge_files(self, now: int) -> int:
        removed = 0
        while True:  # a batch per statement: big files free many pages
            count = await self._execute(_PURGE_FILES, now, PURGE_FILES_BATCH)
            removed += count
            if count < PURGE_FILES_BATCH:
                return removed

    # -- wake-ups ------------------------------------------------------------------------------

    def _on_jobs(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wakeups.jobs_enqueued()

    def _on_events(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        response_id, _, last = payload.rpartition(" ")
        try:
            self._wakeups.events_appended(response_id, int(last))
        except ValueError:  # not ours to parse: wake that response's followers anyway
            self._wakeups.events_appended(payload, None)

    async def _probe(
        self, watched: dict[str, int], jobs: bool
    ) -> tuple[bool, dict[str, int | None]]:
        ids = list(watched)
        row = await self._fetchrow(_PROBE, ids)
        return bool(row[0]) and jobs, dict(zip(ids, row[1], strict=True))

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


class _Listener:
    """One connection that LISTENs on the store's channels, reconnecting when it drops."""

    def __init__(self, connect: Connect, callbacks: dict[str, Any], wakeups: Wakeups) -> None:
        self._connect = connect
        self._callbacks = callbacks
        self._wakeups = wakeups
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        """Connect and LISTEN; returns once listening, raises if the first attempt fails."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name="respond-pg-listener")
        await ready

    async def _run(self, ready: asyncio.Future[None]) -> None:
        delay = RECONNECT_MIN_SECONDS
        while True:
            lost = asyncio.Event()
            try:
                self._conn = await self._connect()
                self._conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for channel, callback in self._callbacks.items():
                    await self._conn.add_listener(channel, callback)
                if ready.done():
                    log.info("listening for PostgreSQL notifications again")
                    self._wakeups.wake_all()  # whatever was notified meanwhile is lost
                else:
                    ready.set_result(None)
                delay = RECONNECT_MIN_SECONDS
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), KEEPALIVE_SECONDS)
                        continue
                    await self._conn.execute("SELECT 1", timeout=KEEPALIVE_SECONDS)
                log.warning("the PostgreSQL listening connection closed; reconnecting")
            except Exception as exc:  # noqa: BLE001 - it must outlive any failure; logged
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.warning("the PostgreSQL listening connection failed (%r); reconnecting "
                            "in %.2f s", exc, delay)
            finally:
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _response_args(response: StoredResponse, new_items: list[Item]) -> tuple[Any, ...]:
    return (
        response.id,
        orjson.dumps(response.body).decode(),
        response.context_ids,
        response.output_ids,
        response.previous_response_id,
        response.created_at,
        response.expires_at,
        [item["id"] for item in new_items],
        [orjson.dumps(item).decode() for item in new_items],
    )


def _stored_response(response_id: str, row: Any) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        body=orjson.loads(row[0]),
        context_ids=row[1],
        output_ids=row[2],
        previous_response_id=row[3],
        created_at=row[4],
        expires_at=row[5],
    )


def _json_list(body: str | None) -> list[Any]:
    """``string_agg`` of JSON documents (None when there were none) as a list."""
    return [] if body is None else orjson.loads("[" + body + "]")


def _failure(what: str, exc: BaseException) -> ServerError:
    log.error("PostgreSQL error in %s", what.strip().splitlines()[0], exc_info=exc)
    return ServerError("The response store failed; try again later.")
