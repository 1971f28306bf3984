"""The PostgreSQL store's own connection: it LISTENs for notifications and holds the advisory
locks that tell every replica which of this process's workers are alive.

Rules:
- One connection, outside the pool, never in a transaction: session-level advisory locks
  and LISTEN both live exactly as long as it does. When it drops, it is reconnected (with
  backoff), the channels are listened to again, every held lock is taken again, and every
  waiter is woken, since notifications were lost meanwhile.
- A lock that cannot be taken again at once (the server has not yet noticed that the old
  connection died, so it still holds it) is retried at every keepalive: meanwhile the old
  session still counts as alive, which is what the lock means anyway.
- Statements on the connection are serialised (asyncpg runs one at a time per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from respond.store import statements as sql
from respond.store.wakeups import Wakeups

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 10.0  # how often the connection proves it is alive
RECONNECT_MIN_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 5.0

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class Listener:
    def __init__(self, connect: Connect, callbacks: dict[str, Any], wakeups: Wakeups) -> None:
        self._connect = connect
        self._callbacks = callbacks
        self._wakeups = wakeups
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self._workers: dict[str, bool] = {}  # worker name -> whether its lock is held now

    async def start(self) -> None:
        """Connect and LISTEN; returns once listening, raises if the first attempt fails."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name="respond-pg-listener")
        await ready

    async def hold(self, worker: str) -> bool:
        """Take ``worker``'s advisory lock and keep it (again after every reconnect) until
        the store closes; False when another session holds it (the caller picks another
        name). While disconnected, the lock is taken on reconnecting."""
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._workers[worker] = False
                return True
            rendered = sql.PG_LOCK_WORKER.on("postgresql")
            taken = bool(await self._conn.fetchval(rendered.text, worker))
            if taken:
                self._workers[worker] = True
            return taken

    async def _take_locks(self, conn: asyncpg.Connection) -> None:
        rendered = sql.PG_LOCK_WORKER.on("postgresql")
        for worker, held in list(self._workers.items()):
            if not held:
                self._workers[worker] = bool(await conn.fetchval(rendered.text, worker))
                if not self._workers[worker]:
                    log.warning("worker %s: its lock is still held by a former connection; "
                                "retrying", worker)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        delay = RECONNECT_MIN_SECONDS
        while True:
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                async with self._lock:
                    self._conn = conn
                    for channel, callback in self._callbacks.items():
                        await conn.add_listener(channel, callback)
                    await self._take_locks(conn)
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
                    async with self._lock:
                        await conn.execute(sql.KEEPALIVE.on("postgresql").text,
                                           timeout=KEEPALIVE_SECONDS)
                        await self._take_locks(conn)
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
                for worker in self._workers:
                    self._workers[worker] = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def aclose(self) -> None:
        """Stop; closing the connection releases every lock it held."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
