"""The background worker: claims queued responses and runs them, one per replica.

Rules:
- A claimed job is watched from the claim on, not from its first token: while it waits for
  a free slot of the model it is already renewed and already cancellable.
- Leases never fail live work. The store reaps a job only when its lease ran out AND its
  holder is gone (its process, or its database session, no longer exists), so a process
  that is merely slow, starved of CPU, or waiting for a slot keeps its jobs whatever the
  clock says. Only a dead worker's job is failed, and its message says so.
- A response prepared here goes through the same intake and run as a foreground one
  (``ResponsesService.restore`` and ``start``): approvals, media, server tools and
  truncation behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from respond.engine.background import TERMINAL, unseal_request
from respond.engine.events import Event, EventBuilder
from respond.engine.recording import with_body
from respond.engine.service import ResponsesService
from respond.errors import APIError
from respond.sealing import Sealer
from respond.store import Job, Store, StoredResponse

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
WATCH_SECONDS = 0.25  # how soon a running job notices a cancel request
QUEUED_EVENTS = 2  # response.created and response.queued, logged when it was submitted
SHUTDOWN_MESSAGE = (
    "The server running this background response shut down before it finished; the "
    "response was not retried. Create it again."
)
ORPHAN_MESSAGE = (
    "The server running this background response stopped before it finished; the response "
    "was not retried. Create it again."
)


class Worker:
    """Claims and runs background jobs, ``concurrency`` at a time."""

    def __init__(self, service: ResponsesService, sealer: Sealer, *, concurrency: int = 8,
                 lease_seconds: float = 30.0) -> None:
        self.sealer = sealer
        self.service = service
        self.store: Store = service.store
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.name: str | None = None  # given by the store when the loop starts
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run_forever(self) -> None:
        while self.name is None:  # the loop must survive a database that is not up yet
            try:
                self.name = await self.store.register_worker()
            except Exception:
                log.exception("background worker could not register; retrying")
                await asyncio.sleep(1.0)
        while True:
            try:
                await self._reap()
                while len(self._running) < self.concurrency:
                    job = await self.store.claim(self.name, time.time(), self.lease_seconds)
                    if job is None:
                        break
                    self._start(job)
            except Exception:  # the loop must survive a database hiccup
                log.exception("background worker loop failed; retrying")
            pause = min(1.0, self.lease_seconds / 3)
            if len(self._running) >= self.concurrency:
                # every slot is taken: waiting for jobs would return at once while any is
                # queued, so wait for a slot (reaping again after the same pause)
                await asyncio.wait(list(self._running.values()), timeout=pause,
                                   return_when=asyncio.FIRST_COMPLETED)
            else:
                await self.store.wait_for_jobs(pause)

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job))
        self._running[job.response_id] = task

        def done(_task: asyncio.Task[None], response_id: str = job.response_id) -> None:
            self._running.pop(response_id, None)

        task.add_done_callback(done)

    async def aclose(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _reap(self) -> None:
        for response_id in await self.store.reap(time.time()):
            log.warning("background response %s lost its worker (its holder is gone); "
                        "marking it failed", response_id)
            await self._fail_orphan(response_id)

    async def _fail_orphan(self, response_id: str) -> None:
        stored = await self.store.get_response(response_id, int(self.service.clock()))
        if stored is None or stored.body["status"] in TERMINAL:
            return
        events = await self.store.read_events(response_id, -1)
        builder = EventBuilder(dict(stored.body),
                               sequence=events[-1]["sequence_number"] + 1 if events else 0)
        failure = builder.fail(ORPHAN_MESSAGE)
        body = builder.response  # its output items were shown, never stored: store them now
        if await self.store.save_response(with_body(stored, body), list(body["output"]),
                                          unless_terminal=True) and events:
            await self.store.append_events(response_id, failure)

    async def _run_job(self, job: Job) -> None:
        response_id = job.response_id
        watch = asyncio.create_task(self._watch(response_id, asyncio.current_task()))
        try:
            await self._execute(job, watch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background response %s failed", response_id)
        finally:
            watch.cancel()
            with contextlib.suppress(Exception):
                await self.store.finish_job(response_id)

    async def _execute(self, job: Job, watch: asyncio.Task[str]) -> None:
        response_id = job.response_id
        stored = await self.store.get_response(response_id, int(self.service.clock()))
        if stored is None or stored.body["status"] in TERMINAL:
            return
        sink = _Sink(self.store, stored, bool(job.payload.get("stream")))
        if await self.store.cancel_requested(response_id):
            await sink.cancelled()
            return
        try:
            req = unseal_request(job.payload, self.sealer)
            prepared = await self.service.restore(stored, req)
            run = await self.service.start(prepared, sequence=QUEUED_EVENTS)
            sink.builder = run.builder
            async for event in run.events():
                await sink.add(event)
            await sink.flush(final=True)
        except APIError as exc:  # refused before the run began (the run reports its own)
            await sink.fail(exc.message)
        except asyncio.CancelledError:
            verdict = watch.result() if watch.done() and not watch.cancelled() else None
            await sink.flush(final=True)
            if verdict == "cancel":
                await sink.cancelled()
                return
            if verdict == "gone":
                return  # its job was removed (response deleted, or cancelled elsewhere)
            await sink.fail(SHUTDOWN_MESSAGE)  # this server is shutting down
            raise

    async def _watch(self, response_id: str, runner: asyncio.Task[Any] | None) -> str:
        """From the claim on: renew the lease and watch for cancellation. Cancels ``runner``
        when the job is to be cancelled ("cancel") or was removed ("gone"). A failing
        database is retried for as long as it takes: while this process lives, nobody
        reaps its jobs."""
        assert self.name is not None
        renew_every = self.lease_seconds / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            verdict = None
            try:
                if await self.store.cancel_requested(response_id):
                    verdict = "cancel"
                elif time.monotonic() - renewed >= renew_every:
                    if await self.store.renew(response_id, self.name, time.time(),
                                              self.lease_seconds):
                        renewed = time.monotonic()
                    else:
                        log.info("the job of %s was removed; stopping it", response_id)
                        verdict = "gone"
            except Exception:
                log.warning("watching %s failed; retrying", response_id, exc_info=True)
            if verdict is not None:
                if runner is not None:
                    runner.cancel()
                return verdict


class _Sink:
    """Writes a running background response to the store: its body now and then, and for
    streams every event, batched every ``FLUSH_SECONDS``. Never over a terminal status."""

    def __init__(self, store: Store, stored: StoredResponse, stream: bool) -> None:
        self.store = store
        self.stored = stored
        self.stream = stream
        self.builder: EventBuilder | None = None
        self._events: list[Event] = []
        self._last_flush = 0.0

    async def add(self, event: Event) -> None:
        if self.stream:
            self._events.append(event)
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            await self.flush()

    async def flush(self, final: bool = False) -> None:
        self._last_flush = time.monotonic()
        if self.builder is not None and not final:
            # the run stores the final state itself; in between, show progress to pollers
            await self.store.save_response(with_body(self.stored, self.builder.snapshot()), [],
                                           unless_terminal=True)
        if self._events:
            events, self._events = self._events, []
            await self.store.append_events(self.stored.id, events)

    async def cancelled(self) -> None:
        """Cancelled before it ran, or while it ran (the run's state, marked cancelled)."""
        body = (dict(self.stored.body, status="cancelled") if self.builder is None
                else self.builder.response)
        await self.store.save_response(with_body(self.stored, body), list(body["output"]),
                                       unless_terminal=True)

    async def fail(self, message: str) -> None:
        """End with ``response.failed``: from the state the run reached, or from queued."""
        builder = self.builder
        events: list[Event] = []
        if builder is None:
            builder = EventBuilder(dict(self.stored.body), sequence=QUEUED_EVENTS)
            events = builder.in_progress()
        elif builder.response["status"] in ("completed", "incomplete", "failed"):
            return
        events += builder.fail(message)
        body = builder.response
        if await self.store.save_response(with_body(self.stored, body), list(body["output"]),
                                          unless_terminal=True) and self.stream:
            await self.store.append_events(self.stored.id, events)
