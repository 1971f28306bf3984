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

    async def aclose(self) -> None: ...
