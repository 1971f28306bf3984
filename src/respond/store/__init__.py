"""store: persistence of responses, items and (later) event logs, behind the ``Store`` protocol.

Rule: a store speaks SQL to its database and nothing else; it imports only ``errors`` and
plain data types. Items are stored once, as the JSON the wire shows; a response records the
ordered ids of the items that formed its context, so rebuilding any conversation is one
query for the response row and one for its items, never a walk of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    body: dict[str, Any]  # the Response object as returned by GET /responses/{id}
    context_ids: list[str]  # ordered ids of the input context (inherited + this request's input)
    output_ids: list[str]  # ordered ids of this response's output items
    previous_response_id: str | None
    created_at: int  # unix seconds
    expires_at: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Job:
    """A background response waiting for (or held by) a worker."""

    response_id: str
    payload: dict[str, Any]  # what the worker needs to run it, as given to ``enqueue``
    attempts: int  # how many times a worker has claimed it (1 on the first claim)


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: list[Item]
    has_more: bool


class Store(Protocol):
    """Durable state. All methods are coroutines; none blocks the event loop.

    Writes are atomic: a response and the items it introduces are saved in one transaction,
    so a failed write leaves nothing half-stored.
    """

    async def save_response(self, response: StoredResponse, new_items: list[Item]) -> None:
        """Insert or replace ``response`` and insert ``new_items`` (items carry their ``id``).

        Items already stored under the same id are left as they are (items are immutable).
        """
        ...

    async def get_response(self, response_id: str, now: int) -> StoredResponse | None:
        """The response, or None when unknown, deleted or expired at ``now``."""
        ...

    async def get_items(self, item_ids: list[str]) -> dict[str, Item]:
        """The stored items among ``item_ids``, by id (missing ids are simply absent)."""
        ...

    async def load_context(
        self, response_id: str, now: int
    ) -> tuple[StoredResponse, list[Item]] | None:
        """The response and its full context in order: context items, then output items.

        At most two queries whatever the depth of the conversation.
        """
        ...

    async def list_input_items(
        self,
        response_id: str,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        before: str | None,
        now: int,
    ) -> ItemPage | None:
        """A page of the response's context items; None when the response is unknown.

        ``order`` "desc" pages the context from its end. ``after`` / ``before`` are item
        ids: the page holds items strictly after / before that id in ``order`` (with only
        ``before``, the ``limit`` items just before it). An unknown cursor gives an empty
        page. ``has_more``: more items lie beyond the page in the direction of travel.
        """
        ...

    async def delete_response(self, response_id: str, now: int) -> bool:
        """Delete the response. Its items go too, unless a later response still builds on
        them (they then stay until no live response needs them). False when it was unknown
        or already hidden at ``now``."""
        ...

    async def purge_expired(self, now: int) -> int:
        """Delete every response (and its items) whose ``expires_at`` is past; return the count.

        A hidden response that a live one still builds on keeps its items until that one goes.
        """
        ...

    # -- background work ---------------------------------------------------------------------
    # A job row lives from ``enqueue`` until ``finish_job``. A worker that claims it holds a
    # lease that it renews; a lease that runs out means the worker died (see ``reap``).

    async def enqueue(
        self, response: StoredResponse, new_items: list[Item], payload: dict[str, Any]
    ) -> None:
        """Save the (queued) response, its new items and its job in one transaction, and
        wake waiting workers on every replica."""
        ...

    async def claim(self, worker: str, now: float, lease_seconds: float) -> Job | None:
        """Atomically take the oldest unclaimed job (exactly one worker across all replicas
        gets it), leased to ``worker`` until ``now + lease_seconds``; None when none waits."""
        ...

    async def renew(self, response_id: str, worker: str, now: float, lease_seconds: float) -> bool:
        """Extend ``worker``'s lease; False when the job is gone or held by another worker."""
        ...

    async def finish_job(self, response_id: str) -> None:
        """Remove the job (the response row stays)."""
        ...

    async def reap(self, now: float) -> list[str]:
        """Remove jobs whose lease ran out (their worker died) and return their response ids."""
        ...

    async def request_cancel(self, response_id: str) -> bool:
        """Flag the job for cancellation; False when no job exists for it any more."""
        ...

    async def cancel_requested(self, response_id: str) -> bool:
        """Whether ``request_cancel`` was called for this job."""
        ...

    async def wait_for_jobs(self, timeout: float) -> None:
        """Return when a job may have been enqueued (on any replica) or after ``timeout``."""
        ...

    # -- event logs (background streams, for resume) ---------------------------------------

    async def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        """Append events (each has a ``sequence_number``) in order, in one transaction, and
        wake followers of this response on every replica."""
        ...

    async def read_events(self, response_id: str, after: int) -> list[dict[str, Any]]:
        """Logged events with ``sequence_number > after``, in order."""
        ...

    async def wait_for_events(self, response_id: str, after: int, timeout: float) -> None:
        """Return when an event after ``after`` may exist for the response (or after
        ``timeout``); callers re-read with ``read_events``."""
        ...

    async def aclose(self) -> None: ...
