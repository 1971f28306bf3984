"""The ``Store`` contract for background work (the job queue) and event logs, on every
adapter. "Replicas" are several store instances on one database: two SQLiteStore objects on
one file, or two PostgresStore objects on one schema, each with its own connections."""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import time
from typing import Any

import pytest
from storekit import NOW, Backend, ids, message, response, save_turn

from respond.store import Job, Store, StoredResponse

# Waits are as long as a test may take: a waiter that returns was woken by what the test
# did, never by its timeout. How fast a wake-up comes is measured in bench/, not here.
FOREVER = 3600.0
HANG = 30.0  # seconds: only guards against a hang


def queued(response_id: str, *, expires_at: int = NOW + 1_000) -> StoredResponse:
    return response(response_id, [f"{response_id}_in"], [], status="queued",
                    expires_at=expires_at)


async def enqueue(store: Store, response_id: str, payload: dict[str, Any] | None = None) -> None:
    await store.enqueue(queued(response_id), [message(f"{response_id}_in", "hi")],
                        payload if payload is not None else {"n": response_id})


def event(n: int, text: str = "") -> dict[str, Any]:
    return {"type": "response.output_text.delta", "sequence_number": n, "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "delta": text or f"d{n}", "logprobs": []}


async def timed(awaitable: Any) -> float:
    started = time.monotonic()
    await asyncio.wait_for(awaitable, HANG)
    return time.monotonic() - started


async def eventually(check: Any) -> Any:
    """Poll ``check()`` until it returns something truthy (for state that another
    connection changes in its own time, e.g. a lock the server releases)."""
    deadline = time.monotonic() + HANG
    while not (result := await check()):
        assert time.monotonic() < deadline, "the state never came"
        await asyncio.sleep(0.05)
    return result


# -- the queue -------------------------------------------------------------------------------


async def test_enqueue_stores_the_response_and_one_claim_gets_the_job(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    payload = {"request": {"model": "m", "input": "Grüße 🦙", "temperature": 0.25,
                           "tools": [{"type": "function", "name": "f", "parameters": {}}]},
               "stream": True, "nothing": None}
    await store.enqueue(queued("resp_1"), [message("resp_1_in", "hi")], payload)

    stored = await other.get_response("resp_1", NOW)
    assert stored is not None and stored.body["status"] == "queued"
    loaded = await other.load_context("resp_1", NOW)
    assert loaded is not None and ids(loaded[1]) == ["resp_1_in"]

    job = await other.claim("worker-a", NOW, 30)
    assert job == Job(response_id="resp_1", payload=payload, attempts=1)
    assert list(job.payload) == list(payload)  # key order survives too
    assert await other.claim("worker-a", NOW, 30) is None
    assert await store.claim("worker-b", NOW, 30) is None


async def test_claims_take_the_oldest_job_first(store: Store) -> None:
    for name in ("resp_c", "resp_a", "resp_b"):
        await enqueue(store, name)
    claimed = [await store.claim("w", NOW, 30) for _ in range(4)]
    assert [job.response_id if job else None for job in claimed] == [
        "resp_c", "resp_a", "resp_b", None]


async def test_every_job_is_claimed_exactly_once_under_contention(
    backend: Backend, store: Store
) -> None:
    replicas = [store, await backend.open()]
    for n in range(50):
        await enqueue(replicas[n % 2], f"resp_{n:02d}")
    claims: list[str] = []

    async def claimer(replica: Store, name: str) -> None:
        deadline = time.monotonic() + 30
        while len(claims) < 50 and time.monotonic() < deadline:
            job = await replica.claim(name, time.time(), 30)
            if job is None:
                await asyncio.sleep(0.005)  # others may hold the rest (SKIP LOCKED)
                continue
            claims.append(job.response_id)
            await asyncio.sleep(0)  # let the others in between claims

    await asyncio.gather(*(claimer(replicas[k % 2], f"w{k}") for k in range(8)))
    counts = collections.Counter(claims)
    assert len(counts) == 50 and set(counts.values()) == {1}, counts.most_common(3)
    for replica in replicas:
        assert await replica.claim("late", time.time(), 30) is None


async def test_renew_extends_only_the_holders_lease(backend: Backend, store: Store) -> None:
    other = await backend.open()
    await enqueue(store, "resp_1")
    assert await store.renew("resp_1", "w1", NOW, 30) is False  # not claimed yet
    assert await store.claim("w1", NOW, 10) is not None

    assert await other.renew("resp_1", "w2", NOW + 5, 30) is False  # someone else's
    assert await other.renew("resp_1", "w1", NOW + 5, 30) is True
    assert await store.reap(NOW + 20) == []  # the renewed lease runs to NOW + 35
    assert await store.reap(NOW + 36) == ["resp_1"]
    assert await store.renew("resp_1", "w1", NOW + 36, 30) is False  # reaped: gone

    await enqueue(store, "resp_2")
    assert await store.claim("w1", NOW, 10) is not None
    await store.finish_job("resp_2")
    assert await store.renew("resp_2", "w1", NOW, 30) is False  # finished: gone
    assert await store.get_response("resp_2", NOW) is not None  # the response stays
    await store.finish_job("resp_2")  # finishing twice is harmless


async def test_reap_returns_only_expired_leases_and_removes_them(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    for name in ("resp_short", "resp_long", "resp_waiting"):
        await enqueue(store, name)
    short = await store.claim("w1", NOW, 10)
    long = await other.claim("w2", NOW, 100)
    assert short is not None and long is not None
    assert (short.response_id, long.response_id) == ("resp_short", "resp_long")

    assert await store.reap(NOW + 9) == []
    reaped = await asyncio.gather(other.reap(NOW + 50), store.reap(NOW + 50))
    assert sorted(reaped[0] + reaped[1]) == ["resp_short"]  # once, by one replica
    assert await store.reap(NOW + 50) == []
    # a reaped job is gone, not back in the queue: the service fails its response instead
    waiting = await store.claim("w3", NOW + 50, 10)
    assert waiting is not None and waiting.response_id == "resp_waiting"
    assert await store.claim("w3", NOW + 50, 10) is None
    assert await store.cancel_requested("resp_short") is False
    assert await store.request_cancel("resp_short") is False

    assert sorted(await other.reap(NOW + 1_000)) == ["resp_long", "resp_waiting"]
    assert await backend.count("jobs") == 0
    assert await backend.count("responses") == 3  # responses are the service's to settle


async def test_an_unclaimed_job_is_never_reaped(store: Store) -> None:
    await enqueue(store, "resp_1")
    assert await store.reap(NOW + 10**9) == []
    job = await store.claim("w", NOW, 1)
    assert job is not None and job.attempts == 1


async def test_request_cancel_flags_the_job_for_every_replica(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    assert await store.request_cancel("resp_1") is False  # no job
    await enqueue(store, "resp_1")
    await enqueue(store, "resp_2")
    assert await other.cancel_requested("resp_1") is False
    assert await store.request_cancel("resp_1") is True
    assert await other.cancel_requested("resp_1") is True
    assert await other.cancel_requested("resp_2") is False
    assert await store.claim("w", NOW, 30) is not None
    assert await other.cancel_requested("resp_1") is True  # claiming keeps the flag
    await other.finish_job("resp_1")
    assert await store.cancel_requested("resp_1") is False
    assert await store.request_cancel("resp_1") is False


async def test_enqueue_again_replaces_the_job(store: Store) -> None:
    await enqueue(store, "resp_1", {"v": 1})
    assert await store.claim("w1", NOW, 30) is not None
    await store.request_cancel("resp_1")
    await enqueue(store, "resp_1", {"v": 2})
    assert await store.renew("resp_1", "w1", NOW, 30) is False  # the old lease went with it
    assert await store.cancel_requested("resp_1") is False
    assert await store.claim("w2", NOW, 30) == Job("resp_1", {"v": 2}, 1)


async def test_wait_for_jobs_wakes_when_another_replica_enqueues(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    waiting = asyncio.create_task(store.wait_for_jobs(FOREVER))
    await asyncio.sleep(0.2)
    await enqueue(other, "resp_1")
    await asyncio.wait_for(waiting, HANG)
    assert await store.claim("w", NOW, 30) is not None


async def test_wait_for_jobs_wakes_at_once_on_the_same_replica(store: Store) -> None:
    waiting = asyncio.create_task(store.wait_for_jobs(FOREVER))
    await asyncio.sleep(0.05)
    await enqueue(store, "resp_1")
    await asyncio.wait_for(waiting, HANG)


async def test_wait_for_jobs_returns_at_once_when_a_job_waits(store: Store) -> None:
    await enqueue(store, "resp_1")
    await asyncio.wait_for(store.wait_for_jobs(FOREVER), HANG)


async def test_wait_for_jobs_times_out_when_nothing_comes(backend: Backend, store: Store) -> None:
    other = await backend.open()
    await enqueue(other, "resp_1")
    assert await other.claim("w", NOW, 30) is not None  # claimed jobs do not count
    await other.save_response(response("resp_2", [], []), [])  # nor do other writes
    await asyncio.sleep(0.3)  # a wake-up may say "a job may have come": let the enqueue's pass
    assert await timed(store.wait_for_jobs(0.6)) >= 0.55  # not woken early


# -- event logs ------------------------------------------------------------------------------


async def test_events_are_read_back_in_order_after_a_sequence_number(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    await save_turn(store, "resp_1", None)
    await save_turn(store, "resp_2", None)
    first = [event(0, "Hé 🦙 \u0000"), event(1)]
    await store.append_events("resp_1", first)
    await store.append_events("resp_2", [event(0, "other")])
    await other.append_events("resp_1", [event(2), event(3), event(4)])
    await store.append_events("resp_1", [])

    everything = await other.read_events("resp_1", -1)
    assert [e["sequence_number"] for e in everything] == [0, 1, 2, 3, 4]
    assert everything[:2] == first
    assert [list(e) for e in everything] == [list(event(0)) for _ in range(5)]  # key order
    assert [e["sequence_number"] for e in await store.read_events("resp_1", 1)] == [2, 3, 4]
    assert await store.read_events("resp_1", 4) == []
    assert await store.read_events("resp_nope", -1) == []
    assert await store.read_events("resp_2", -1) == [event(0, "other")]


async def test_appending_a_logged_sequence_number_again_keeps_the_first(store: Store) -> None:
    await save_turn(store, "resp_1", None)
    await store.append_events("resp_1", [event(0, "first"), event(1, "first")])
    await store.append_events("resp_1", [event(1, "retry"), event(2, "new")])
    assert [e["delta"] for e in await store.read_events("resp_1", -1)] == [
        "first", "first", "new"]


async def test_wait_for_events_wakes_when_another_replica_appends(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    await save_turn(store, "resp_1", None)
    await store.append_events("resp_1", [event(0)])
    waiting = asyncio.create_task(store.wait_for_events("resp_1", 0, FOREVER))
    await asyncio.sleep(0.2)
    await other.append_events("resp_1", [event(1), event(2)])
    await asyncio.wait_for(waiting, HANG)
    assert [e["sequence_number"] for e in await store.read_events("resp_1", 0)] == [1, 2]


async def test_many_followers_on_two_replicas_all_wake(backend: Backend, store: Store) -> None:
    other = await backend.open()
    await save_turn(store, "resp_1", None)
    followers = [asyncio.create_task(replica.wait_for_events("resp_1", -1, FOREVER))
                 for replica in (store, other) for _ in range(10)]
    await asyncio.sleep(0.1)
    await other.append_events("resp_1", [event(0)])
    await asyncio.wait_for(asyncio.gather(*followers), HANG)


async def test_wait_for_events_wakes_at_once_on_the_same_replica(store: Store) -> None:
    await save_turn(store, "resp_1", None)
    waiting = asyncio.create_task(store.wait_for_events("resp_1", -1, FOREVER))
    await asyncio.sleep(0.05)
    await store.append_events("resp_1", [event(0)])
    await asyncio.wait_for(waiting, HANG)


async def test_wait_for_events_returns_at_once_when_they_are_there(store: Store) -> None:
    await save_turn(store, "resp_1", None)
    await store.append_events("resp_1", [event(0), event(1)])
    await asyncio.wait_for(store.wait_for_events("resp_1", 0, FOREVER), HANG)


async def test_wait_for_events_times_out_when_nothing_new_comes(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    await save_turn(store, "resp_1", None)
    await save_turn(store, "resp_2", None)
    await store.append_events("resp_1", [event(0), event(1)])

    async def unrelated_writes() -> None:
        for n in range(5):
            await asyncio.sleep(0.1)
            await other.append_events("resp_2", [event(n)])  # another response's log
            await other.append_events("resp_1", [event(1, "old")])  # nothing after 1

    writes = asyncio.create_task(unrelated_writes())
    waited = await timed(store.wait_for_events("resp_1", 1, 0.8))
    await writes
    assert waited >= 0.75  # not woken early


# -- deletion and retention take the background state along -----------------------------------


async def test_delete_removes_the_job_and_the_event_log(backend: Backend, store: Store) -> None:
    await enqueue(store, "resp_1")
    await store.append_events("resp_1", [event(0), event(1)])
    assert await store.claim("w", NOW, 30) is not None

    assert await store.delete_response("resp_1", NOW) is True
    assert await backend.count("jobs") == 0
    assert await backend.count("events") == 0
    assert await store.renew("resp_1", "w", NOW, 30) is False  # the worker learns it is gone
    assert await store.read_events("resp_1", -1) == []


async def test_deleting_a_parent_drops_its_job_and_log_but_keeps_its_items(
    backend: Backend, store: Store
) -> None:
    await enqueue(store, "resp_p")
    await store.append_events("resp_p", [event(0)])
    parent = await store.get_response("resp_p", NOW)
    assert parent is not None
    child = await save_turn(store, "resp_c", parent)
    await enqueue(store, "resp_other")
    await store.append_events("resp_other", [event(0)])

    assert await store.delete_response("resp_p", NOW) is True
    assert await backend.fetch("SELECT response_id FROM jobs") == [("resp_other",)]
    assert await backend.fetch("SELECT response_id FROM events") == [("resp_other",)]
    loaded = await store.load_context(child.id, NOW)
    assert loaded is not None and ids(loaded[1])[0] == "resp_p_in"


async def test_purge_removes_jobs_and_event_logs(backend: Backend, store: Store) -> None:
    await store.enqueue(queued("resp_old", expires_at=NOW + 10), [], {})
    await store.append_events("resp_old", [event(0)])
    await store.enqueue(queued("resp_live", expires_at=NOW + 100), [], {})
    await store.append_events("resp_live", [event(0)])
    # a hidden parent that stays for its live child loses its job and log all the same
    await store.enqueue(queued("resp_parent", expires_at=NOW + 10), [], {})
    await store.append_events("resp_parent", [event(0)])
    parent = await store.get_response("resp_parent", NOW)
    assert parent is not None
    await save_turn(store, "resp_child", parent, expires_at=NOW + 100)

    assert await store.purge_expired(NOW + 10) == 1
    assert await backend.fetch("SELECT response_id FROM jobs") == [("resp_live",)]
    assert await backend.fetch("SELECT response_id FROM events") == [("resp_live",)]
    assert await store.load_context("resp_child", NOW + 10) is not None


# -- workers: a live process never loses its jobs ---------------------------------------------


async def test_register_worker_gives_a_new_name_of_this_process_each_time(store: Store) -> None:
    first, second = await store.register_worker(), await store.register_worker()
    assert first != second
    host, pid, rest = first.split(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and rest


async def test_the_jobs_of_a_live_worker_are_never_reaped(backend: Backend, store: Store) -> None:
    other = await backend.open()
    worker = await store.register_worker()
    await enqueue(store, "resp_live")
    await enqueue(store, "resp_unknown")
    live = await store.claim(worker, NOW, 10)
    unknown = await other.claim("elsewhere:1:gone", NOW, 10)
    assert live is not None and unknown is not None
    assert (live.response_id, unknown.response_id) == ("resp_live", "resp_unknown")

    # long past both leases, on either replica: only the job nobody vouches for goes
    assert await other.reap(NOW + 10**6) == ["resp_unknown"]
    assert await store.reap(NOW + 10**6) == []
    assert await other.reap(NOW + 10**9) == []
    assert await store.renew("resp_live", worker, NOW + 10**6, 10) is True  # still its own


async def test_the_jobs_of_a_closed_stores_worker_are_reaped(backend: Backend) -> None:
    holder, reaper = await backend.open(), await backend.open()
    worker = await holder.register_worker()
    await enqueue(holder, "resp_1")
    assert await holder.claim(worker, NOW, 10) is not None
    assert await reaper.reap(NOW + 100) == []
    await holder.aclose()

    async def reaped() -> list[str]:  # PostgreSQL frees the lock once the session has ended
        return await reaper.reap(NOW + 100)

    assert await eventually(reaped) == ["resp_1"]


# -- conditional saves: a final status never changes again ------------------------------------


async def test_save_unless_terminal_never_overwrites_a_final_status(
    backend: Backend, store: Store
) -> None:
    other = await backend.open()
    assert await store.save_response(queued("resp_1"), [message("resp_1_in", "hi")],
                                     unless_terminal=True) is True  # no row yet
    running = response("resp_1", ["resp_1_in"], [], status="in_progress")
    assert await other.save_response(running, [], unless_terminal=True) is True
    done = response("resp_1", ["resp_1_in"], ["resp_1_out"])
    assert await store.save_response(done, [message("resp_1_out", "bye", "assistant")],
                                     unless_terminal=True) is True
    assert await backend.count("items") == 2

    late = response("resp_1", ["resp_1_in"], ["resp_1_late"], status="in_progress")
    for replica in (store, other):
        assert await replica.save_response(
            late, [message("resp_1_late", "late", "assistant")], unless_terminal=True) is False
        assert await replica.get_response("resp_1", NOW) == done
        loaded = await replica.load_context("resp_1", NOW)
        assert loaded is not None and ids(loaded[1]) == ["resp_1_in", "resp_1_out"]
    assert await store.get_items(["resp_1_late"]) == {}  # nothing of the refused write
    assert await backend.count("items") == 2

    assert await store.save_response(late, []) is True  # without the guard: as always
    stored = await other.get_response("resp_1", NOW)
    assert stored is not None and stored.body["status"] == "in_progress"


@pytest.mark.parametrize("status", ["completed", "incomplete", "failed", "cancelled"])
async def test_every_final_status_is_kept(store: Store, status: str) -> None:
    final = response("resp_1", [], [], status=status)
    assert await store.save_response(final, []) is True
    again = response("resp_1", [], [], status="queued")
    assert await store.save_response(again, [], unless_terminal=True) is False
    stored = await store.get_response("resp_1", NOW)
    assert stored is not None and stored.body["status"] == status


async def test_save_unless_terminal_writes_over_any_other_status(store: Store) -> None:
    for n, status in enumerate(["queued", "in_progress", "requires_action", None]):
        body_status = {} if status is None else {"status": status}
        earlier = response("resp_1", [], [], status="x")
        earlier.body.pop("status")
        earlier.body.update(body_status)
        assert await store.save_response(earlier, []) is True
        later = response("resp_1", [], [f"out_{n}"], status="completed")
        assert await store.save_response(later, [message(f"out_{n}", "ok", "assistant")],
                                         unless_terminal=True) is True
        stored = await store.get_response("resp_1", NOW)
        assert stored is not None and stored.output_ids == [f"out_{n}"]


# -- opening ---------------------------------------------------------------------------------


async def test_replicas_opening_a_new_database_together_migrate_it_once(
    backend: Backend,
) -> None:
    stores = await asyncio.gather(*(backend.open() for _ in range(4)))
    assert await backend.fetch("SELECT version FROM schema_migrations ORDER BY version") == [
        (1,), (2,), (3,)]
    await enqueue(stores[0], "resp_1")
    assert await stores[3].claim("w", NOW, 30) is not None
    again = await backend.open()  # and once more on the migrated database
    assert await again.get_response("resp_1", NOW) is not None
    assert await backend.count("schema_migrations") == 3


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    closed = await backend.open()
    await closed.aclose()
    with pytest.raises(RuntimeError):
        await closed.claim("w", NOW, 30)
    with pytest.raises(RuntimeError):
        await closed.wait_for_jobs(0.1)
    with pytest.raises(RuntimeError):
        await closed.register_worker()
    await closed.aclose()  # twice is harmless
