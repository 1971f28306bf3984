"""SQLiteStore's own behaviour: statement counts (ground truth from SQLite's trace hook),
locking, another process on the same file, opening and migrations. The ``Store`` contract
itself is in test_contract.py and test_background.py, for every adapter."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storekit import NOW, ids, response, save_turn

from respond.store import StoredResponse
from respond.store.migrations import apply_sqlite, load, sqlite_statements
from respond.store.sqlite import SQLiteStore, database_path
from respond.store.sqlite_connection import LIVE_WORKERS, worker_alive

FOREVER = 3600.0  # waits that only what the test does can end
HANG = 30.0  # seconds: only guards against a hang


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "respond.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(f"sqlite:///{db_path}")
    yield opened
    await opened.aclose()


def traced(store: SQLiteStore) -> list[str]:
    """Every statement the store's inline connection (the one every light job uses while
    no other connection holds a lock) runs from now on (SQLite's own trace hook)."""
    statements: list[str] = []
    store._inline.conn.set_trace_callback(statements.append)
    return statements


async def test_600_turn_chain_loads_with_two_statements(store: SQLiteStore) -> None:
    turns: list[StoredResponse] = []
    parent = None
    for n in range(600):
        parent = await save_turn(store, f"resp_{n:03d}", parent, n_inputs=1 + n % 2)
        turns.append(parent)
    statements = traced(store)
    for turn in (turns[0], turns[9], turns[-1]):
        statements.clear()
        loaded = await store.load_context(turn.id, NOW)
        assert loaded is not None and ids(loaded[1]) == turn.context_ids + turn.output_ids
        assert len(statements) <= 2, statements


async def test_a_chained_turn_reads_only_the_items_not_read_before(store: SQLiteStore) -> None:
    """Loading turn N caches its items, so loading turn N+1 reads just that turn's new ones,
    and the context comes out whole and in order either way."""
    parent = None
    for n in range(50):
        parent = await save_turn(store, f"resp_{n:02d}", parent, n_inputs=1 + n % 2)
    assert parent is not None
    loaded = await store.load_context(parent.id, NOW)
    assert loaded is not None and ids(loaded[1]) == parent.context_ids + parent.output_ids
    held = len(store._cache)
    assert held == len(parent.context_ids) + 1

    child = await save_turn(store, "resp_50", parent, n_inputs=2)
    loaded = await store.load_context(child.id, NOW)
    assert loaded is not None and ids(loaded[1]) == child.context_ids + child.output_ids
    assert len(store._cache) == held + 3  # the two new inputs and the new output


async def test_idle_workers_never_take_the_write_lock(store: SQLiteStore) -> None:
    """claim and reap with nothing to take are one read each: no BEGIN IMMEDIATE that would
    queue behind every writer of every replica, once a second per worker."""
    statements = traced(store)
    assert await store.claim("w", NOW, 30) is None
    assert await store.reap(NOW) == []
    assert await store.cancel_requested("resp_nope") is False
    assert len(statements) == 3, statements
    assert not any("BEGIN" in s for s in statements)

    await store.enqueue(response("resp_1", [], []), [], {})
    statements.clear()
    assert await store.claim("w", NOW, 30) is not None
    assert any("BEGIN IMMEDIATE" in s for s in statements)


async def test_a_held_write_lock_does_not_stall_the_event_loop(db_path: Path,
                                                                store: SQLiteStore) -> None:
    """Another connection holds the write lock: the save waits for it on the store's thread
    while the loop goes on, then commits."""
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def ticked(n: int) -> None:
        while ticks < n:
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    saving = asyncio.create_task(save_turn(store, "resp_1", None))
    try:
        await asyncio.wait_for(ticked(10), HANG)  # the loop runs while the save waits
        assert not saving.done()
        other.execute("COMMIT")
        await asyncio.wait_for(saving, HANG)
    finally:
        ticker.cancel()
        other.close()
    assert await store.get_response("resp_1", NOW) is not None


async def test_the_write_ahead_log_is_checkpointed(db_path: Path, store: SQLiteStore) -> None:
    """The inline connection never checkpoints; the thread does, every so many writes, so the
    log does not grow with the number of writes (3,000 turns unchecked would be ~100 MB)."""
    parent = None
    for n in range(3000):
        parent = await save_turn(store, f"resp_{n}", None if n % 50 == 0 else parent)
        await asyncio.sleep(0)  # as a server does between requests
    assert await store.get_response("resp_2999", NOW) is not None
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size < 16 * 2**20


async def test_a_waiter_notices_another_process(db_path: Path, store: SQLiteStore) -> None:
    """Another process on the same file: no in-process wake-up, only the data_version poll."""
    await store.save_response(response("resp_1", [], []), [])
    script = (
        "import asyncio, sys\n"
        "from respond.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    store = await SQLiteStore.open(sys.argv[1])\n"
        "    await asyncio.sleep(0.3)\n"
        "    await store.append_events('resp_1', [{'sequence_number': 0, 'type': 'x'}])\n"
        "    await store.aclose()\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, f"sqlite:///{db_path}")
    try:  # only the poll can wake it: the wait itself would last an hour
        await asyncio.wait_for(store.wait_for_events("resp_1", -1, FOREVER), HANG)
    finally:
        await asyncio.wait_for(child.wait(), HANG)
    assert child.returncode == 0
    assert await store.read_events("resp_1", -1) == [{"sequence_number": 0, "type": "x"}]


async def test_a_worker_in_another_live_process_keeps_its_jobs(
    db_path: Path, store: SQLiteStore
) -> None:
    """Liveness on SQLite is the holder's process: alive while it runs, however late its
    lease; once it is gone (killed: it closed nothing), its job is reaped."""
    await store.enqueue(response("resp_1", [], [], status="queued"), [], {})
    script = (
        "import asyncio, sys\n"
        "from respond.store.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    store = await SQLiteStore.open(sys.argv[1])\n"
        "    worker = await store.register_worker()\n"
        "    job = await store.claim(worker, 1000, 10)\n"
        "    print(worker, job.response_id, flush=True)\n"
        "    sys.stdin.readline()\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, f"sqlite:///{db_path}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        worker, claimed = (await asyncio.wait_for(child.stdout.readline(), HANG)).split()
        assert claimed == b"resp_1" and worker.decode().split(":")[1] == str(child.pid)
        assert await store.reap(NOW + 10**6) == []
        assert await store.renew("resp_1", worker.decode(), NOW + 10**6, 10)
    finally:
        child.kill()
        await asyncio.wait_for(child.wait(), HANG)
    assert await store.reap(NOW + 10**7) == ["resp_1"]


def test_worker_liveness_on_this_host() -> None:
    host, pid = socket.gethostname(), os.getpid()
    mine = f"{host}:{pid}:abc"
    assert worker_alive(mine) is False  # this process, but no open store registered it
    LIVE_WORKERS.add(mine)
    try:
        assert worker_alive(mine) is True
    finally:
        LIVE_WORKERS.discard(mine)
    assert worker_alive(f"{host}:{os.getppid()}:x") is True  # another live process
    assert worker_alive(f"not-{host}:{os.getppid()}:x") is False  # another host: unknown
    for name in ("w1", "", f"{host}:", f"{host}:abc:x", None):
        assert worker_alive(name) is False


async def test_concurrent_opens_of_a_new_file_apply_migrations_once(db_path: Path) -> None:
    stores = await asyncio.gather(*(SQLiteStore.open(db_path) for _ in range(4)))
    try:
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert [v for (v,) in rows] == [1, 2, 3]
    finally:
        for opened in stores:
            await opened.aclose()


# -- opening and migrations ------------------------------------------------------------------


async def test_open_twice_applies_migrations_once_and_keeps_data(db_path: Path) -> None:
    first = await SQLiteStore.open(f"sqlite:///{db_path}")
    await save_turn(first, "resp_1", None)
    await first.aclose()

    second = await SQLiteStore.open(db_path)
    try:
        assert await second.get_response("resp_1", NOW) is not None
    finally:
        await second.aclose()
    with sqlite3.connect(db_path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [m.version for m in load("sqlite")] == [1, 2, 3]
        conn.isolation_level = None
        assert apply_sqlite(conn) == []


async def test_open_sets_pragmas_and_creates_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await SQLiteStore.open("sqlite:///nested/dir/respond.db")
    try:
        assert (tmp_path / "nested" / "dir" / "respond.db").is_file()
        assert store._threaded is not None
        inline, threaded = store._inline.conn, store._threaded.conn
        for conn in (inline, threaded):
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # the loop's connection never waits for a lock nor checkpoints; the thread's does
        assert inline.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        assert inline.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert threaded.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        await store.aclose()
    with pytest.raises(RuntimeError):
        await store.get_response("resp_1", NOW)


async def test_in_memory_database() -> None:
    store = await SQLiteStore.open("sqlite:///:memory:")
    try:
        await save_turn(store, "resp_1", None)
        loaded = await store.load_context("resp_1", NOW)
        assert loaded is not None and ids(loaded[1]) == ["resp_1_in0", "resp_1_out"]
    finally:
        await store.aclose()


def test_database_path() -> None:
    assert database_path("sqlite:///data/respond.db") == "data/respond.db"
    assert database_path("sqlite:////var/lib/respond.db") == "/var/lib/respond.db"
    assert database_path("sqlite:///:memory:") == ":memory:"
    assert database_path(Path("plain.db")) == "plain.db"
    with pytest.raises(ValueError):
        database_path("postgresql://localhost/test")


def test_sqlite_statements_keep_triggers_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER t_ai AFTER INSERT ON t BEGIN
        UPDATE t SET x = x || ';' WHERE rowid = new.rowid;
    END;
    -- trailing comment
    """
    statements = sqlite_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError):
        sqlite_statements("CREATE TABLE t (x)")
