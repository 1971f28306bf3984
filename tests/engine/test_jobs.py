"""The background Worker on a real SQLite store, with a scripted model that waits to be told
to answer: what the worker does while every one of its slots is taken."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from respond.backends.scripted import ScriptedBackend
from respond.domain import TextDelta
from respond.engine.background import Background
from respond.engine.media import MediaResolver
from respond.engine.service import ResponsesService
from respond.engine.worker import Worker
from respond.protocol.request import CreateResponse
from respond.sealing import Sealer
from respond.store.sqlite import SQLiteStore
from respond.web.static import StaticFetcher


class Spinning(BaseException):
    """Ends a worker loop that calls the store far more often than it should (a loop that
    never suspends could not be stopped otherwise)."""


class CountingStore:
    """The store, counting the calls the worker loop makes."""

    LIMIT = 50

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.claims = 0
        self.waits = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def claim(self, *args: object) -> object:
        self.claims += 1
        if self.claims > self.LIMIT:
            raise Spinning
        return await self._store.claim(*args)  # type: ignore[arg-type]

    async def wait_for_jobs(self, timeout: float) -> None:
        self.waits += 1
        if self.waits > self.LIMIT:
            raise Spinning
        await self._store.wait_for_jobs(timeout)


class GatedBackend(ScriptedBackend):
    """Answers only once ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__([[TextDelta("done")]])
        self.gate = asyncio.Event()

    async def generate(self, request):  # type: ignore[no-untyped-def, override]
        await self.gate.wait()
        async for delta in super().generate(request):
            yield delta


async def test_a_full_worker_waits_for_a_free_slot_without_spinning(tmp_path: Path) -> None:
    """With every slot busy and jobs still queued, the loop must neither spin (a store whose
    calls finish without suspending would starve every running job) nor poll the queue
    over and over: it waits for a job to finish."""
    sqlite = await SQLiteStore.open(tmp_path / "respond.db")
    store = CountingStore(sqlite)
    backend = GatedBackend()
    service = ResponsesService(store, {"m": backend}, retention_seconds=3600,  # type: ignore[arg-type]
                               media=MediaResolver(store, StaticFetcher()))  # type: ignore[arg-type]
    sealer = Sealer(b"test")
    background = Background(service, sealer)
    worker = Worker(service, sealer, concurrency=1, lease_seconds=30)
    ids = []
    for n in range(3):
        req = CreateResponse.model_validate({"model": "m", "input": f"job {n}",
                                             "background": True})
        ids.append((await background.submit(await service.prepare(req))).id)
    loop_task = asyncio.create_task(worker.run_forever())
    try:
        await asyncio.sleep(0.5)  # one job runs, blocked on the gate; two stay queued
        assert not loop_task.done()
        assert store.claims <= 3 and store.waits <= 2, (store.claims, store.waits)
        backend.gate.set()
        for response_id in ids:
            for _ in range(100):
                stored = await sqlite.get_response(response_id, int(time.time()))
                assert stored is not None
                if stored.body["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert stored.body["status"] == "completed"
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await worker.aclose()
        await sqlite.aclose()


class MidwayBackend(ScriptedBackend):
    """Yields its first delta, then waits for ``gate`` before the rest."""

    def __init__(self) -> None:
        super().__init__([[TextDelta("first "), TextDelta("rest")]])
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def generate(self, request):  # type: ignore[no-untyped-def, override]
        async for delta in super().generate(request):
            yield delta
            if not self.started.is_set():
                self.started.set()
                await self.gate.wait()


async def test_a_response_that_ended_elsewhere_stays_as_it_ended(tmp_path: Path) -> None:
    """The run finishes after the response was settled as cancelled by someone else: the
    stored status stays cancelled and its event log never claims it completed."""
    store = await SQLiteStore.open(tmp_path / "respond.db")
    backend = MidwayBackend()
    service = ResponsesService(store, {"m": backend}, retention_seconds=3600,
                               media=MediaResolver(store, StaticFetcher()))
    sealer = Sealer(b"test")
    worker = Worker(service, sealer, concurrency=1, lease_seconds=30)
    req = CreateResponse.model_validate({"model": "m", "input": "go", "background": True,
                                         "stream": True})
    record = await Background(service, sealer).submit(await service.prepare(req))
    loop_task = asyncio.create_task(worker.run_forever())
    try:
        await asyncio.wait_for(backend.started.wait(), 60)
        stored = await store.get_response(record.id, int(time.time()))
        assert stored is not None
        settled = dict(stored.body, status="cancelled")
        assert await store.save_response(dataclasses.replace(stored, body=settled), [],
                                         unless_terminal=True)
        backend.gate.set()
        await asyncio.wait_for(_until_idle(worker), 60)
        final = await store.get_response(record.id, int(time.time()))
        assert final is not None and final.body["status"] == "cancelled"
        kinds = [e["type"] for e in await store.read_events(record.id, -1)]
        assert "response.completed" not in kinds, kinds
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await worker.aclose()
        await store.aclose()


async def _until_idle(worker: Worker) -> None:
    while True:
        await asyncio.sleep(0.02)
        if not worker._running:
            return
