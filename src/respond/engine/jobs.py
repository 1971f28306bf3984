"""Background responses: a durable queue in the store, workers on every replica.

Life of a background response:

1. ``submit`` stores it with status ``queued`` (and, for ``stream: true``, the first two
   events of its log), then enqueues its job; every replica's workers are woken.
2. Exactly one worker ``claim``s the job, holding a lease it renews while it runs. It runs
   the same ``Run`` as a foreground response, writing the response body every
   ``FLUSH_SECONDS`` (so polling shows the output grow) and, for streams, appending every
   event to the log that ``follow`` replays on any replica.
3. ``cancel`` flags the job; the worker notices at its next heartbeat, stops generating and
   stores status ``cancelled``.
4. A worker that dies (kill -9, lost machine) stops renewing; any replica ``reap``s the
   expired lease and marks the response ``failed`` with a clear error. It is not re-run:
   a partial stream was already delivered, and re-running it would contradict it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from respond.engine.events import Event, EventBuilder
from respond.engine.service import Prepared, ResponsesService
from respond.errors import APIError, InvalidRequest, NotFound
from respond.ids import new_id
from respond.protocol.request import CreateResponse
from respond.sealing import Sealer, SealError
from respond.store import Job, Store, StoredResponse

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
FLUSH_SECONDS = 0.1
FOLLOW_WAIT_SECONDS = 1.0
TERMINAL_EVENT_GRACE_SECONDS = 10.0
CANCEL_WAIT_SECONDS = 10.0
SHUTDOWN_MESSAGE = (
    "The server running this background response shut down before it finished; the "
    "response was not retried. Create it again."
)
ORPHAN_MESSAGE = (
    "The server running this background response stopped before it finished; the response "
    "was not retried. Create it again."
)


def seal_request(req: CreateResponse, sealer: Sealer) -> dict[str, Any]:
    """The request as a job payload, MCP ``headers`` sealed: the database never holds them
    in plaintext."""
    request = req.model_dump(mode="json", exclude_unset=True)
    secrets: dict[str, Any] = {}
    for index, tool in enumerate(request.get("tools") or ()):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            for key in ("headers", "authorization"):
                if tool.get(key):
                    secrets[f"{index}.{key}"] = tool.pop(key)
    payload: dict[str, Any] = {"request": request}
    if secrets:
        payload["sealed"] = sealer.seal(secrets)
    return payload


def unseal_request(payload: dict[str, Any], sealer: Sealer) -> CreateResponse:
    request = payload["request"]
    if payload.get("sealed"):
        try:
            secrets = sealer.open(payload["sealed"])
        except SealError:
            raise InvalidRequest(
                "The MCP credentials of this background response cannot be unsealed here: "
                "every replica must share the same [server] secret_key.") from None
        assert isinstance(secrets, dict)
        for place, value in secrets.items():
            index, key = place.split(".")
            request["tools"][int(index)][key] = value
    return CreateResponse.model_validate(request)


class Background:
    """Submitting, cancelling and following background responses (any replica)."""

    def __init__(self, service: ResponsesService, sealer: Sealer) -> None:
        self.service = service
        self.store: Store = service.store
        self.sealer = sealer

    async def submit(self, prepared: Prepared) -> StoredResponse:
        req = prepared.req
        if prepared.record is None:
            raise InvalidRequest("Background responses must be stored: 'store' cannot be false "
                                 "when 'background' is true.", param="store")
        record = prepared.record
        await self.store.save_response(record, prepared.new_items)
        if req.stream:
            await self.store.append_events(record.id, prepared.builder.queued())
        payload = {**seal_request(req, self.sealer), "stream": bool(req.stream)}
        await self.store.enqueue(record, [], payload)
        return record

    async def cancel(self, response_id: str) -> dict[str, Any]:
        stored = await self._get(response_id)
        if not stored.body.get("background"):
            raise InvalidRequest("Cannot cancel a synchronous response.")
        if stored.body["status"] in TERMINAL:
            return stored.body
        await self.store.request_cancel(response_id)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            stored = await self._get(response_id)
            if stored.body["status"] in TERMINAL:
                return stored.body
        # no worker took it up in time (all busy): settle it here
        body = dict(stored.body, status="cancelled")
        await self.store.save_response(_with_body(stored, body), [])
        await self.store.finish_job(response_id)
        return body

    async def _get(self, response_id: str) -> StoredResponse:
        stored = await self.store.get_response(response_id, int(self.service.clock()))
        if stored is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return stored

    async def check_streamable(self, response_id: str) -> None:
        stored = await self._get(response_id)
        if not stored.body.get("background") or not await self.store.read_events(response_id, -1):
            raise InvalidRequest(
                f"Response '{response_id}' was not created with background=true and "
                "stream=true, so it cannot be streamed.", param="stream")

    async def follow(self, response_id: str, after: int | None) -> AsyncIterator[Event]:
        """Replay the logged events after ``after``, then follow live ones to the end."""
        last = -1 if after is None else after
        ended_at: float | None = None  # when the response was first seen terminal
        while True:
            events = await self.store.read_events(response_id, last)
            for event in events:
                yield event
                last = event["sequence_number"]
                if event["type"] in TERMINAL_EVENTS:
                    return
            if events:
                continue
            stored = await self.store.get_response(response_id, int(self.service.clock()))
            if stored is None or stored.body["status"] == "cancelled":
                return  # cancelled responses have no terminal event: the stream just ends
            if stored.body["status"] in TERMINAL:
                # the final state is stored a moment before its terminal event is logged
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > TERMINAL_EVENT_GRACE_SECONDS:
                    log.warning("response %s ended without a logged terminal event", response_id)
                    return
            await self.store.wait_for_events(response_id, last, FOLLOW_WAIT_SECONDS)


def _with_body(stored: StoredResponse, body: dict[str, Any]) -> StoredResponse:
    return StoredResponse(
        id=stored.id, body=body, context_ids=stored.context_ids,
        output_ids=[item["id"] for item in body.get("output", [])],
        previous_response_id=stored.previous_response_id,
        created_at=stored.created_at, expires_at=stored.expires_at,
    )


class Worker:
    """Claims and runs background jobs; one per replica, ``concurrency`` jobs at a time."""

    def __init__(self, service: ResponsesService, sealer: Sealer, *, concurrency: int = 8,
                 lease_seconds: float = 30.0) -> None:
        self.sealer = sealer
        self.service = service
        self.store: Store = service.store
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.name = f"{socket.gethostname()}:{os.getpid()}:{new_id('item')[-8:]}"
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                await self._reap()
                while len(self._running) < self.concurrency:
                    job = await self.store.claim(self.name, time.time(), self.lease_seconds)
                    if job is None:
                        break
                    task = asyncio.create_task(self._run_job(job))
                    self._running[job.response_id] = task
                    task.add_done_callback(lambda _t, rid=job.response_id:
                                           self._running.pop(rid, None))
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

    async def aclose(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _reap(self) -> None:
        for response_id in await self.store.reap(time.time()):
            log.warning("background response %s lost its worker; marking it failed", response_id)
            await self._fail_orphan(response_id)

    async def _fail_orphan(self, response_id: str) -> None:
        stored = await self.store.get_response(response_id, int(self.service.clock()))
        if stored is None or stored.body["status"] in TERMINAL:
            return
        events = await self.store.read_events(response_id, -1)
        builder = EventBuilder(dict(stored.body))
        builder.sequence = events[-1]["sequence_number"] + 1 if events else 0
        failure = builder.fail(ORPHAN_MESSAGE)
        await self.store.save_response(_with_body(stored, builder.response), [])
        if events:
            await self.store.append_events(response_id, failure)

    async def _run_job(self, job: Job) -> None:
        response_id = job.response_id
        try:
            await self._execute(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background response %s failed", response_id)
        finally:
            with contextlib.suppress(Exception):
                await self.store.finish_job(response_id)

    async def _execute(self, job: Job) -> None:
        response_id = job.response_id
        stored = await self.store.get_response(response_id, int(self.service.clock()))
        if stored is None or stored.body["status"] in TERMINAL:
            return
        stream = bool(job.payload.get("stream"))
        if await self.store.cancel_requested(response_id):
            await self.store.save_response(_with_body(stored, dict(stored.body,
                                                                   status="cancelled")), [])
            return
        items = await self.store.get_items(stored.context_ids)
        context = [items[i] for i in stored.context_ids if i in items]
        sink = _Sink(self.store, stored, stream)
        try:
            req = unseal_request(job.payload, self.sealer)
            backend = self.service.backend_for(req.model or "")
            media = await self.service.media.resolve(context, vision=backend.vision)
            prepared = self.service.plan(req, backend, dict(stored.body), context, stored, [],
                                         media)
            prepared.builder.sequence = 2  # after response.created and response.queued
            sink.builder = prepared.builder
            run = await self.service.start(prepared, background=True)
        except APIError as exc:
            await sink.fail(exc.message)
            return
        heartbeat = asyncio.create_task(self._heartbeat(response_id, asyncio.current_task()))
        try:
            async for event in run.events():
                await sink.add(event)
            await sink.flush(final=True)
        except asyncio.CancelledError:
            await self.service.flush()  # the cancelled state, saved by the run
            if heartbeat.done() and heartbeat.result() == "cancel":
                await sink.flush(final=True)
                return
            # shutting down (or the lease was lost): say so rather than leave "cancelled"
            await sink.flush(final=True)
            await sink.fail_after_cancel(SHUTDOWN_MESSAGE)
            raise
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, response_id: str, runner: asyncio.Task[Any] | None) -> str:
        """Renew the lease and watch for cancellation; cancels ``runner`` when asked to, or
        when the lease is lost. A failing database is retried until the lease would run out."""
        interval = min(0.25, self.lease_seconds / 4)
        renew_every = self.lease_seconds / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            verdict = None
            try:
                if await self.store.cancel_requested(response_id):
                    verdict = "cancel"
                elif time.monotonic() - renewed >= renew_every:
                    if await self.store.renew(response_id, self.name, time.time(),
                                              self.lease_seconds):
                        renewed = time.monotonic()
                    else:
                        log.error("lost the lease of %s; stopping it", response_id)
                        verdict = "lost"
            except Exception:
                log.warning("heartbeat of %s failed; retrying", response_id, exc_info=True)
                if time.monotonic() - renewed >= self.lease_seconds:
                    verdict = "lost"  # by now another replica may have reaped it
            if verdict is not None:
                if runner is not None:
                    runner.cancel()
                return verdict


class _Sink:
    """Writes a running background response to the store: its body now and then, and for
    streams every event, batched every ``FLUSH_SECONDS``."""

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
            await self.store.save_response(_with_body(self.stored, self.builder.snapshot()), [])
        if self._events:
            events, self._events = self._events, []
            await self.store.append_events(self.stored.id, events)

    async def fail_after_cancel(self, message: str) -> None:
        if self.builder is None:
            return
        events = self.builder.fail(message)
        await self.store.save_response(_with_body(self.stored, self.builder.response), [])
        if self.stream:
            await self.store.append_events(self.stored.id, events)

    async def fail(self, message: str) -> None:
        builder = EventBuilder(dict(self.stored.body))
        builder.sequence = 2
        events = builder.in_progress() + builder.fail(message)
        await self.store.save_response(_with_body(self.stored, builder.response), [])
        if self.stream:
            await self.store.append_events(self.stored.id, events)
