"""PostgresStore's own behaviour: round trips (ground truth from asyncpg's query logger),
LISTEN/NOTIFY across connections, what happens when connections drop, URLs, migrations.
The ``Store`` contract itself is in test_contract.py and test_background.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from storekit import NOW, POSTGRES_URL, PostgresBackend, ids, message, response, save_turn

from respond.errors import ServerError
from respond.store import StoredResponse
from respond.store import listener as listener_module
from respond.store import postgres as postgres_module
from respond.store.migrations import apply_postgresql
from respond.store.postgres import PostgresStore, channel_names, connection_url


async def logged_queries(store: PostgresStore) -> list[str]:
    """Every statement the store's (single) pooled connection sends from now on."""
    queries: list[str] = []
    async with store._pool.acquire() as conn:
        conn.add_query_logger(lambda record: queries.append(record.query))
    return queries


FOREVER = 3600.0  # waits that only what the test does can end
HANG = 30.0  # seconds: only guards against a hang


def event(n: int) -> dict[str, Any]:
    return {"type": "response.in_progress", "sequence_number": n}


async def listener_pid(store: PostgresStore, *, not_: int | None = None) -> int:
    """The server pid of the store's listening connection (waits for a reconnect)."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        conn = store._listener._conn
        if conn is not None and not conn.is_closed() and conn.get_server_pid() != not_:
            return conn.get_server_pid()
        await asyncio.sleep(0.05)
    raise AssertionError("the listener did not reconnect")


# -- round trips -----------------------------------------------------------------------------


async def test_round_trips_stay_constant_with_depth(pg: PostgresBackend) -> None:
    store = await pg.open_with(min_size=1, max_size=1)
    queries = await logged_queries(store)
    turns: list[StoredResponse] = []
    parent = None
    for n in range(300):
        queries.clear()
        parent = await save_turn(store, f"resp_{n:03d}", parent, n_inputs=1 + n % 2)
        assert len(queries) == 1, queries  # the response and its items: one statement
        turns.append(parent)

    for turn in (turns[0], turns[9], turns[-1]):
        queries.clear()
        before = store.statements
        loaded = await store.load_context(turn.id, NOW)
        assert loaded is not None and ids(loaded[1]) == turn.context_ids + turn.output_ids
        assert len(queries) == 1, queries
        assert store.statements - before == 1
        queries.clear()
        assert await store.get_response(turn.id, NOW) == turn
        listed = await store.list_input_items(turn.id, limit=20, order="desc", after=None,
                                              before=None, now=NOW)
        assert listed is not None and len(listed.items) == min(20, len(turn.context_ids))
        assert len(queries) == 1 + 2, queries


async def test_a_context_this_process_holds_is_loaded_as_the_row_alone(
        pg: PostgresBackend) -> None:
    writer = await pg.open_with(min_size=1, max_size=1)
    parent = None
    for n in range(20):
        parent = await save_turn(writer, f"resp_{n:02d}", parent, n_inputs=1 + n % 2)
    assert parent is not None
    queries = await logged_queries(writer)
    loaded = await writer.load_context(parent.id, NOW)
    assert loaded is not None and ids(loaded[1]) == parent.context_ids + parent.output_ids
    assert len(queries) == 1 and "items" not in queries[0], queries

    # another replica has none of it in memory: one round trip that brings the items, and
    # the next load of the same context is the row alone there too
    replica = await pg.open_with(min_size=1, max_size=1)
    queries = await logged_queries(replica)
    for _ in range(2):
        loaded = await replica.load_context(parent.id, NOW)
        assert loaded is not None and ids(loaded[1]) == parent.context_ids + parent.output_ids
    assert len(queries) == 2 and "items" in queries[0] and "items" not in queries[1], queries

    # a deleted response is not served from memory
    assert await writer.delete_response(parent.id, NOW)
    assert await writer.load_context(parent.id, NOW) is None


async def test_background_calls_are_one_round_trip_each(pg: PostgresBackend) -> None:
    store = await pg.open_with(min_size=1, max_size=1)
    queries = await logged_queries(store)

    def calls(rid: str) -> list[Any]:
        return [
            store.enqueue(response(rid, [f"{rid}_in"], []), [message(f"{rid}_in", "hi")], {}),
            store.claim("w", NOW, 30),
            store.renew(rid, "w", NOW, 30),
            store.cancel_requested(rid),
            store.append_events(rid, [event(0), event(1), event(2)]),
            store.read_events(rid, -1),
            store.reap(NOW),
            store.save_response(response(rid, [f"{rid}_in"], [], status="completed"), [],
                                unless_terminal=True),
            store.finish_job(rid),
        ]

    for call in calls("resp_warm"):  # asyncpg looks types up once per connection
        await call
    for call in calls("resp_1"):
        queries.clear()
        await call
        assert len(queries) == 1, queries


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


@pytest.fixture
def no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores opened from now on poll once a minute: a prompt wake-up is NOTIFY's doing."""
    monkeypatch.setattr(postgres_module, "POLL_SECONDS", 60.0)


async def test_notify_wakes_waiters_on_another_connection(
    pg: PostgresBackend, no_polling: None
) -> None:
    waiter, writer = await pg.open(), await pg.open()
    await save_turn(writer, "resp_1", None)

    follow = asyncio.create_task(waiter.wait_for_events("resp_1", -1, FOREVER))
    jobs = asyncio.create_task(waiter.wait_for_jobs(FOREVER))
    await asyncio.sleep(0.2)
    await writer.append_events("resp_1", [event(0)])
    await writer.enqueue(response("resp_2", [], []), [], {})
    await asyncio.wait_for(asyncio.gather(follow, jobs), HANG)  # no poll for a minute


async def test_other_schemas_do_not_wake_us(pg: PostgresBackend, no_polling: None) -> None:
    neighbour = await PostgresBackend.create(POSTGRES_URL)
    try:
        ours, theirs = await pg.open(), await neighbour.open()
        await save_turn(ours, "resp_1", None)
        await save_turn(theirs, "resp_1", None)  # the same response id, elsewhere

        async def write_there() -> None:
            await asyncio.sleep(0.1)
            await theirs.append_events("resp_1", [event(0)])
            await theirs.enqueue(response("resp_2", [], []), [], {})

        waits = [asyncio.create_task(ours.wait_for_events("resp_1", -1, FOREVER)),
                 asyncio.create_task(ours.wait_for_jobs(FOREVER))]
        await write_there()
        await asyncio.sleep(0.5)  # time for their notifications to arrive (and be ignored)
        assert not any(wait.done() for wait in waits)
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    finally:
        await neighbour.aclose()


async def test_a_lost_notification_delays_a_follower_by_one_poll(pg: PostgresBackend) -> None:
    waiter, writer = await pg.open(), await pg.open()
    await save_turn(writer, "resp_1", None)
    listening = waiter._listener._conn
    assert listening is not None
    await listening.execute(f'UNLISTEN "{waiter._events_channel}"')  # notifications lost

    follow = asyncio.create_task(waiter.wait_for_events("resp_1", -1, FOREVER))
    await asyncio.sleep(0.1)
    await writer.append_events("resp_1", [event(0)])
    await asyncio.wait_for(follow, HANG)  # the poll's doing: no notification came


async def test_the_listener_reconnects_after_its_connection_is_killed(
    pg: PostgresBackend, no_polling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "RECONNECT_MIN_SECONDS", 0.5)
    waiter, writer = await pg.open(), await pg.open()
    await save_turn(writer, "resp_1", None)
    pid = await listener_pid(waiter)

    # A follower waiting through the outage is woken when the listener comes back, since
    # whatever was notified in between is lost.
    follow = asyncio.create_task(waiter.wait_for_events("resp_1", -1, FOREVER))
    await asyncio.sleep(0.1)
    await pg.execute(f"SELECT pg_terminate_backend({pid})")
    await asyncio.sleep(0.1)  # down: this notification goes nowhere
    await writer.append_events("resp_1", [event(0)])
    await asyncio.wait_for(follow, HANG)
    new_pid = await listener_pid(waiter, not_=pid)
    assert new_pid != pid

    # and notifications flow again
    follow = asyncio.create_task(waiter.wait_for_events("resp_1", 0, FOREVER))
    await asyncio.sleep(0.1)
    await writer.append_events("resp_1", [event(1)])
    await asyncio.wait_for(follow, HANG)


# -- worker locks ----------------------------------------------------------------------------


async def lock_holders(pg: PostgresBackend, worker: str) -> list[int]:
    """The server pids holding ``worker``'s advisory lock."""
    rows = await pg.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND ((classid::bigint << 32) | objid::bigint) = hashtextextended("
        f"'{worker}', 0)")
    return [pid for (pid,) in rows]


async def test_a_worker_lock_is_held_by_the_stores_own_connection_until_it_closes(
    pg: PostgresBackend,
) -> None:
    store = await pg.open()
    worker = await store.register_worker()
    assert await lock_holders(pg, worker) == [await listener_pid(store)]
    await store.aclose()
    deadline = time.monotonic() + HANG
    while await lock_holders(pg, worker):  # the server ends the session in its own time
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_worker_locks_are_taken_again_when_the_connection_comes_back(
    pg: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "RECONNECT_MIN_SECONDS", 0.1)
    holder, reaper = await pg.open(), await pg.open()
    workers = [await holder.register_worker() for _ in range(2)]
    await holder.enqueue(response("resp_1", [], []), [], {})
    assert await holder.claim(workers[0], NOW, 10) is not None
    pid = await listener_pid(holder)

    await pg.execute(f"SELECT pg_terminate_backend({pid})")
    new_pid = await listener_pid(holder, not_=pid)
    deadline = time.monotonic() + HANG
    while [await lock_holders(pg, worker) for worker in workers] != [[new_pid]] * 2:
        assert time.monotonic() < deadline, "the locks were not taken again"
        await asyncio.sleep(0.05)
    assert await reaper.reap(NOW + 10**6) == []


async def test_a_killed_pool_connection_is_replaced(pg: PostgresBackend) -> None:
    store = await pg.open_with(min_size=1, max_size=1)
    await save_turn(store, "resp_1", None)
    async with store._pool.acquire() as conn:
        pid = conn.get_server_pid()
    await pg.execute(f"SELECT pg_terminate_backend({pid})")
    await asyncio.sleep(0.2)  # the server closes the socket; asyncpg notices
    assert await store.get_response("resp_1", NOW) is not None
    async with store._pool.acquire() as conn:
        assert conn.get_server_pid() != pid


# -- opening ---------------------------------------------------------------------------------


async def test_postgres_scheme_is_accepted_too(pg: PostgresBackend) -> None:
    url = "postgres://" + POSTGRES_URL.split("://", 1)[1]
    store = await PostgresStore.open(url, schema=pg.schema)
    try:
        await save_turn(store, "resp_1", None)
        assert await store.get_response("resp_1", NOW) is not None
    finally:
        await store.aclose()


def test_connection_url_refuses_other_schemes() -> None:
    assert connection_url("postgresql://u@h/db") == "postgresql://u@h/db"
    for url in ("sqlite:///x.db", "mysql://u@h/db", "localhost:5432"):
        with pytest.raises(ValueError):
            connection_url(url)


async def test_an_unreachable_server_is_a_server_error() -> None:
    with pytest.raises(ServerError):
        await PostgresStore.open("postgresql://postgres@127.0.0.1:1/test")


async def test_a_missing_schema_is_created_and_migrations_are_idempotent(
    pg: PostgresBackend,
) -> None:
    await pg.execute(f"DROP SCHEMA {pg.schema}")
    store = await pg.open()
    await save_turn(store, "resp_1", None)
    admin = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": pg.schema})
    try:
        assert await apply_postgresql(admin) == []
        versions = await admin.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [row[0] for row in versions] == [1, 2, 3]
        assert await admin.fetchval("SELECT count(*) FROM responses") == 1
    finally:
        await admin.close()


def test_channel_names_fit_postgres_identifiers() -> None:
    assert channel_names("public") == ("respond_jobs", "respond_events")
    jobs, events = channel_names("t_0123")
    assert (jobs, events) == ("respond_jobs.t_0123", "respond_events.t_0123")
    long_a, long_b = channel_names("s" * 63), channel_names("s" * 62 + "t")
    assert all(len(name.encode()) <= 63 for name in long_a + long_b)
    assert long_a != long_b
