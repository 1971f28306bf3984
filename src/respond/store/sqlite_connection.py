"""SQLite connections: how they are opened, the thread that runs the store's heavy and
blocked jobs, and the statement-counting wrapper the store's jobs see (store/sqlite.py).

Rules:
- Every connection is in WAL mode with foreign keys on and ``respond_worker_alive`` defined
  (the ``{alive}`` of store/dialect.py). The thread's connection waits up to
  ``BUSY_TIMEOUT_MS`` for a lock; the inline one never waits and never checkpoints.
- A worker name ``host:pid:...`` is alive when it is registered in this process by an open
  store (``LIVE_WORKERS``), or names another live process on this host. Names that do not
  parse so are never alive: their jobs are reaped once their lease runs out.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from respond.store import statements as sql
from respond.store.migrations import apply_sqlite

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
CHECKPOINT_WAIT_MS = 100  # the longest a checkpoint waits for other processes

_BEGIN_WRITE = sql.BEGIN_WRITE.on("sqlite").text
_COMMIT = sql.COMMIT.on("sqlite").text
_ROLLBACK = sql.ROLLBACK.on("sqlite").text
_WAIT_FOR_LOCKS = f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"
# both connections: durable at checkpoints (WAL), and the schema's foreign keys enforced
_PRAGMAS = ("PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON")

LIVE_WORKERS: set[str] = set()  # registered by this process's open stores
_HOST = socket.gethostname()


def worker_alive(name: str | None) -> bool:
    """Whether the worker ``name`` (``host:pid:random``) may still be running."""
    if name is None:
        return False
    host, _, rest = name.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return name in LIVE_WORKERS
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process: it exists
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


class Counter(Protocol):
    statements: int

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


class Worker:
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


class Db:
    """One connection, as the job functions see it: statements counted, writes wrapped."""

    __slots__ = ("_store", "conn", "writes")

    def __init__(self, conn: sqlite3.Connection, store: Counter) -> None:
        self.conn = conn
        self._store = store
        self.writes = 0  # write transactions committed through this connection

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._store.statements += 1
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[Any]) -> None:
        self._store.statements += 1
        self.conn.executemany(sql, rows)

    def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(self, *args)`` inside one write transaction."""
        self.execute(_BEGIN_WRITE)
        try:
            result = fn(self, *args)
            self.execute(_COMMIT)
        except BaseException:
            if self.conn.in_transaction:
                self.execute(_ROLLBACK)
            raise
        self.writes += 1
        return result

    # One statement each, for the store's primitives (store/core.py).

    def row(self, sql: str, values: Any) -> Any:
        return self.execute(sql, values).fetchone()

    def rows(self, sql: str, values: Any) -> list[Any]:
        return self.execute(sql, values).fetchall()

    def value(self, sql: str, values: Any) -> Any:
        row = self.execute(sql, values).fetchone()
        return None if row is None else row[0]

    def change(self, sql: str, values: Any) -> int:
        """One writing statement; on its own it is a transaction that takes the write lock
        before it reads, so it needs no BEGIN IMMEDIATE."""
        changed = self.execute(sql, values).rowcount
        self.writes += 1
        return changed

    def take(self, probe: str, probe_values: Any, write: str, values: Any) -> list[Any]:
        """``write`` in a write transaction, only when ``probe`` (a plain read) says that
        there is something to take: idle callers never queue behind writers."""
        if not self.execute(probe, probe_values).fetchone()[0]:
            return []
        return self.write(lambda db: db.execute(write, values).fetchall())


def run_job(db: Db, job: Callable[..., T], args: tuple[Any, ...], write: bool) -> T:
    return db.write(job, *args) if write else job(db, *args)


def busy(exc: sqlite3.OperationalError) -> bool:
    """Whether another connection holds a lock the statement needed (SQLITE_BUSY/LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def checkpoint(db: Db) -> None:
    # RESTART: copies the whole log and makes the next writer start it over, so the log stays
    # as small as the writes between two checkpoints. This store's writes queue behind this
    # job meanwhile; readers go on. It waits at most CHECKPOINT_WAIT_MS for other processes'
    # readers and writers: when they keep it from finishing, the next checkpoint goes on
    # from where this one stopped, and this process's writes were held up only that long.
    db.conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        db.conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    finally:
        db.conn.execute(_WAIT_FOR_LOCKS)


def checkpoint_and_close(conn: sqlite3.Connection) -> None:
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


def connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we write BEGIN/COMMIT ourselves. check_same_thread=False only
    # because the connection object is created here and closed by a later job, always on
    # this same worker thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(_WAIT_FOR_LOCKS)
        _use_wal(conn)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        _define_functions(conn)
        apply_sqlite(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_inline(path: str) -> sqlite3.Connection:
    """The connection used on the event loop: it never waits for a lock (busy_timeout 0:
    the job moves to the store's thread instead) and never checkpoints (the thread does)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        _define_functions(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _define_functions(conn: sqlite3.Connection) -> None:
    # not deterministic: a process can die between two statements
    conn.create_function("respond_worker_alive", 1, worker_alive)
