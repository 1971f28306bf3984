"""Background responses: submitting, cancelling and following them, on any replica.

Life of a background response:

1. ``submit`` stores it with status ``queued`` (and, for ``stream: true``, the first two
   events of its log) with its job; every replica's workers are woken.
2. Exactly one worker claims the job and runs it (``worker.Worker``): the same lifecycle as
   a foreground response, with its events written to the log that ``follow`` replays.
3. ``cancel`` flags the job; the worker notices, stops generating and stores ``cancelled``.
4. A worker whose process is gone stops renewing its lease; a replica reaps the job and
   marks the response ``failed``. It is not re-run: a partial stream was already
   delivered, and re-running it would contradict it.

A background response that has ended never changes again: every background write is
conditional on the stored status not being terminal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from respond.engine.events import Event, EventBuilder
from respond.engine.intake import Prepared
from respond.engine.recording import with_body
from respond.engine.service import ResponsesService
from respond.errors import InvalidRequest, NotFound
from respond.protocol.request import CreateResponse
from respond.sealing import Sealer, SealError
from respond.store import TERMINAL_STATUSES, Store, StoredResponse

log = logging.getLogger(__name__)

TERMINAL = TERMINAL_STATUSES
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
FOLLOW_WAIT_SECONDS = 1.0
TERMINAL_EVENT_GRACE_SECONDS = 10.0
CANCEL_WAIT_SECONDS = 10.0


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
            await self.store.append_events(record.id, EventBuilder(prepared.response).queued())
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
        if not await self.store.save_response(with_body(stored, body), [],
                                              unless_terminal=True):
            return (await self._get(response_id)).body  # it ended meanwhile
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
