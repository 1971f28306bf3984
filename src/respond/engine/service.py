"""The Responses service: the one lifecycle of a response, and reads of stored ones.

Every response goes through the same three steps, whatever carries it (SSE, a JSON body,
a background worker): intake (``intake.Intake``: validate, resolve the context, plan the
tools) → run (``run.start`` and ``Run.events``: model turns, server tools between them) →
record (``recording.Recorder``: the final state is stored before the terminal event).
This class composes them; it holds no logic of its own beyond the reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from respond.backends import Backend
from respond.engine.intake import Intake, Prepared
from respond.engine.media import MediaResolver
from respond.engine.recording import Recorder
from respond.engine.run import Run, start
from respond.errors import NotFound
from respond.protocol.request import CreateResponse
from respond.protocol.response import list_object
from respond.store import Store, StoredResponse
from respond.tools import Connector


class ResponsesService:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend],
        *,
        media: MediaResolver,
        retention_seconds: int,
        clock: Callable[[], float] = time.time,
        connector: Connector | None = None,
    ) -> None:
        self.store = store
        self.backends = backends  # public model name -> backend
        self.clock = clock
        self.connector = connector  # opens sessions to remote MCP servers
        self.intake = Intake(store, backends, media, retention_seconds=retention_seconds,
                             clock=clock)
        self.recorder = Recorder(store)

    def backend_for(self, model: str) -> Backend:
        return self.intake.backend_for(model)

    # -- the lifecycle ---------------------------------------------------------------------

    async def create(self, req: CreateResponse) -> Run:
        """Admit a request and start it (foreground)."""
        return await self.start(await self.prepare(req))

    async def prepare(self, req: CreateResponse) -> Prepared:
        """Everything that can fail with a 4xx before any work."""
        return await self.intake.admit(req)

    async def restore(self, stored: StoredResponse, req: CreateResponse) -> Prepared:
        """A queued background response, prepared as ``prepare`` would have."""
        return await self.intake.restore(stored, req)

    async def start(self, prepared: Prepared, *, sequence: int = 0) -> Run:
        """Listings, approved calls and the first model delta, before any byte is sent."""
        return await start(prepared, self.recorder, self.connector, sequence=sequence)

    async def flush(self) -> None:
        """Wait until the writes of abandoned runs have reached the store."""
        await self.recorder.flush()

    # -- reads -----------------------------------------------------------------------------

    async def get(self, response_id: str) -> dict[str, Any]:
        live = self.recorder.live.get(response_id)
        if live is not None:  # still generating here: show it as it stands
            return live.snapshot()
        await self.flush()
        stored = await self.store.get_response(response_id, int(self.clock()))
        if stored is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return stored.body

    async def delete(self, response_id: str) -> dict[str, Any]:
        await self.flush()
        if not await self.store.delete_response(response_id, int(self.clock())):
            raise NotFound(f"Response with id '{response_id}' not found.")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def input_items(
        self, response_id: str, *, limit: int, order: Literal["asc", "desc"],
        after: str | None, before: str | None,
    ) -> dict[str, Any]:
        await self.flush()
        page = await self.store.list_input_items(
            response_id, limit=limit, order=order, after=after, before=before,
            now=int(self.clock()),
        )
        if page is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return list_object(page.items, page.has_more)
