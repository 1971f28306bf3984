"""Recording: a response's state goes to the store, and runs in flight can be seen.

A run stores its final state before it sends its terminal event, so a client that chains
on ``response.completed`` always finds it. A run whose consumer went away is stored
outside the consumer's (cancelled) task; ``flush`` waits for those writes, so a read that
follows a disconnect sees them. Background writes never overwrite a terminal status: once
a background response has ended (completed, failed, cancelled…) it stays as it ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from respond.engine.events import EventBuilder
from respond.engine.history import Item
from respond.store import Store, StoredResponse

log = logging.getLogger(__name__)


def with_body(record: StoredResponse, body: dict[str, Any]) -> StoredResponse:
    """``record`` holding ``body``, its output ids taken from the body."""
    return StoredResponse(
        id=record.id, body=body, context_ids=record.context_ids,
        output_ids=[item["id"] for item in body.get("output", ())],
        previous_response_id=record.previous_response_id,
        created_at=record.created_at, expires_at=record.expires_at,
    )


class Recorder:
    """Writes responses to the store and keeps the foreground runs in flight."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.live: dict[str, EventBuilder] = {}  # stored foreground responses being generated
        self._pending: set[asyncio.Task[bool]] = set()

    async def save(self, record: StoredResponse | None, response: dict[str, Any],
                   new_items: list[Item], *, background: bool = False) -> bool:
        """Store the response with its new input items and its output items. False when a
        background response had already ended elsewhere (cancelled, failed): it stays so."""
        if record is None:
            return True
        return await self.store.save_response(with_body(record, response),
                                              new_items + list(response["output"]),
                                              unless_terminal=background)

    def save_later(self, record: StoredResponse | None, response: dict[str, Any],
                   new_items: list[Item]) -> None:
        """Store a foreground response whose consumer went away, outside the caller's
        task (a background one is settled by its worker)."""
        if record is None:
            return
        task = asyncio.get_running_loop().create_task(self.save(record, response, new_items))
        self._pending.add(task)
        task.add_done_callback(self._saved)

    def _saved(self, task: asyncio.Task[bool]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not store a response", exc_info=task.exception())

    async def flush(self) -> None:
        """Wait until the writes of abandoned runs have reached the store."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
