"""Intake: from a validated request to a ``Prepared`` response, ready to run.

Everything that can fail with a 4xx happens here, before any work is done: the model, the
previous context, item references, duplicate ids and orphan tool outputs, images sent to a
text-only model, approvals. ``admit`` does it for a new request. ``restore`` takes up a
queued background response from what ``admit`` stored when it was submitted. Both end in
the same ``_ready`` step (the context's images and files, the tools, the approved calls
to make first, the first generation), so a response runs the same wherever it runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from respond.backends import Backend
from respond.domain import Generation
from respond.engine.history import Item, media_parts, to_messages
from respond.engine.media import Media, MediaResolver
from respond.errors import InvalidRequest, ModelNotFound, NotFound
from respond.ids import new_id
from respond.protocol.items import normalize_input
from respond.protocol.request import CreateResponse
from respond.protocol.response import response_skeleton
from respond.protocol.tools import (
    McpServer,
    ToolPlan,
    mcp_servers,
    normalize_tools,
    plan_tools,
    response_format,
)
from respond.store import ResponseStore, StoredResponse


@dataclasses.dataclass(slots=True)
class Prepared:
    """A response ready to run: what to generate and where its result goes."""

    req: CreateResponse
    backend: Backend
    response: dict[str, Any]  # the Response object, as it will be built
    context: list[Item]  # inherited items, then this request's input
    record: StoredResponse | None  # None when ``store`` is false
    new_items: list[Item]  # this request's input items not stored before
    media: Media  # the context's images and files, resolved for the backend
    plan: ToolPlan
    servers: list[McpServer]
    generation: Generation  # the first model turn
    approved: list[Item]  # approval requests whose calls run before the model's first turn
    background: bool


class Intake:
    """Admits requests and restores queued ones."""

    def __init__(self, store: ResponseStore, backends: Mapping[str, Backend],
                 media: MediaResolver, *, retention_seconds: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.backends = backends
        self.media = media
        self.retention_seconds = retention_seconds
        self.clock = clock

    def backend_for(self, model: str) -> Backend:
        backend = self.backends.get(model)
        if backend is None:
            raise ModelNotFound(model)
        return backend

    async def admit(self, req: CreateResponse) -> Prepared:
        """Validate a new request and resolve its context."""
        assert req.model is not None
        backend = self.backend_for(req.model)
        now = int(self.clock())
        inherited: list[Item] = []
        inherited_ids: list[str] = []
        if req.previous_response_id:
            loaded = await self.store.load_context(req.previous_response_id, now)
            if loaded is None:
                raise InvalidRequest(
                    f"Previous response with id '{req.previous_response_id}' not found.",
                    param="previous_response_id", code="previous_response_not_found",
                )
            previous, inherited = loaded
            inherited_ids = previous.context_ids + previous.output_ids

        items = normalize_input(req.input)
        _check_media(items, backend)
        items = await self._resolve_stored(items, req.input)
        new_items = _check_context(inherited_ids, inherited, items)
        context = inherited + items
        _check_approvals(items, context, mcp_servers(req.tools))

        response_id = new_id("response")
        response = response_skeleton(req, response_id=response_id, created_at=now,
                                     model=req.model,
                                     status="queued" if req.background else "in_progress")
        record = None
        if response["store"]:
            record = StoredResponse(
                id=response_id, body=response,
                context_ids=inherited_ids + [item["id"] for item in items], output_ids=[],
                previous_response_id=req.previous_response_id, created_at=now,
                expires_at=now + self.retention_seconds,
            )
        params = {item["id"]: f"input[{index}]" for index, item in enumerate(items)}
        return await self._ready(req, backend, response, context, record, new_items,
                                 background=bool(req.background), params=params)

    async def restore(self, stored: StoredResponse, req: CreateResponse) -> Prepared:
        """A queued background response, as ``admit`` stored it, ready to run."""
        backend = self.backend_for(req.model or "")
        found = await self.store.get_items(stored.context_ids)
        missing = [i for i in stored.context_ids if i not in found]
        if missing:
            raise InvalidRequest(f"The context of this response lost item '{missing[0]}'.",
                                 param="input")
        context = [found[i] for i in stored.context_ids]
        return await self._ready(req, backend, dict(stored.body), context, stored, [],
                                 background=True, params=None)

    async def _ready(self, req: CreateResponse, backend: Backend, response: dict[str, Any],
                     context: list[Item], record: StoredResponse | None,
                     new_items: list[Item], *, background: bool,
                     params: dict[str, str] | None) -> Prepared:
        """Media, tools, approvals and the first generation: the same for every response."""
        media = await self.media.resolve(context, vision=backend.vision, params=params)
        tools = normalize_tools(req.tools)
        plan = plan_tools(tools, req.tool_choice)
        servers = mcp_servers(req.tools)
        fmt = response_format(req.text.format.model_dump(exclude_none=True)
                              if req.text and req.text.format else None)
        response["tools"] = tools
        chat_tools = plan.chat_tools()
        generation = Generation(
            messages=to_messages(req.instructions, context, vision=backend.vision, media=media),
            max_output_tokens=req.max_output_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            tools=chat_tools,
            tool_choice=plan.chat_tool_choice(),
            parallel_tool_calls=False if chat_tools and req.parallel_tool_calls is False else None,
            response_format=fmt,
        )
        approved = approved_calls(context, {server.label for server in servers})
        return Prepared(req, backend, response, context, record, new_items, media, plan,
                        servers, generation, approved, background)

    async def _resolve_stored(self, items: list[Item], raw: Any) -> list[Item]:
        """Replace ``item_reference``s by the stored items, and refuse an item sent with the
        id of a stored item but different content (history must read as it was sent)."""
        supplied = [item["id"] for item, sent in zip(items, raw, strict=True)
                    if isinstance(sent, dict) and sent.get("id")] if isinstance(raw, list) else []
        if not supplied:
            return items
        found = await self.store.get_items(supplied)
        out = []
        for index, item in enumerate(items):
            stored = found.get(item["id"])
            if item.get("type") == "item_reference":
                if stored is None:
                    raise NotFound(f"Item with id '{item['id']}' not found.",
                                   param=f"input[{index}].id")
                item = stored
            elif stored is not None and stored != item:
                raise InvalidRequest(
                    f"An item with id '{item['id']}' is already stored with different "
                    "content. Send a changed item without an id (or with a new one).",
                    param=f"input[{index}].id",
                )
            out.append(item)
        return out


def approved_calls(context: list[Item], labels: set[str]) -> list[Item]:
    """The approval requests approved in ``context`` whose calls were not made yet, in the
    order of their approvals: an approved call is made exactly once, a denied one never."""
    requests, done = _approval_requests(context)
    approved: list[Item] = []
    for item in context:
        if item.get("type") != "mcp_approval_response" or not item.get("approve"):
            continue
        request = requests.get(item.get("approval_request_id", ""))
        if (request is None or request["id"] in done or request in approved
                or request["server_label"] not in labels):
            continue
        approved.append(request)
    return approved


def _approval_requests(context: list[Item]) -> tuple[dict[str, Item], set[str]]:
    """The approval requests of ``context`` by id, and the ids of those whose call was made."""
    requests = {i["id"]: i for i in context if i.get("type") == "mcp_approval_request"}
    done = {i["approval_request_id"] for i in context
            if i.get("type") == "mcp_call" and i.get("approval_request_id")}
    return requests, done


def _check_approvals(items: list[Item], context: list[Item], servers: list[McpServer]) -> None:
    """Refuse approvals of unknown requests, and approved calls whose server is missing."""
    requests, done = _approval_requests(context)
    labels = {server.label for server in servers}
    for index, item in enumerate(items):
        if item.get("type") != "mcp_approval_response":
            continue
        request = requests.get(item["approval_request_id"])
        if request is None:
            raise InvalidRequest(
                f"No approval request found with id '{item['approval_request_id']}'.",
                param=f"input[{index}].approval_request_id")
        if item["approve"] and request["id"] not in done and request["server_label"] not in labels:
            raise InvalidRequest(
                f"The approved call needs the MCP server '{request['server_label']}', which "
                "is not among this request's tools.", param="tools")


def _check_media(items: list[Item], backend: Backend) -> None:
    """Refuse images for a text-only model, naming the part of this request's input."""
    if backend.vision:
        return
    for i, item in enumerate(items):
        found = media_parts(item)
        if found is None:
            continue
        field, parts = found
        for j, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") == "input_image":
                raise InvalidRequest(
                    "This model does not accept images: it is a text-only model. Remove "
                    "the image input or use a model configured with vision = true.",
                    param=f"input[{i}].{field}[{j}]", code="invalid_value",
                )


def _check_context(inherited_ids: list[str], inherited: list[Item],
                   items: list[Item]) -> list[Item]:
    """Refuse duplicate ids and orphan tool outputs; return the items that are new."""
    seen = set(inherited_ids)
    calls = {i["call_id"] for i in inherited if i.get("type") == "function_call"}
    fresh: list[Item] = []
    for index, item in enumerate(items):
        if item["id"] in seen:
            raise InvalidRequest(
                f"Duplicate item found with id {item['id']}. Remove duplicate items from "
                "your input and try again.", param=f"input[{index}]",
            )
        seen.add(item["id"])
        if item.get("type") == "function_call":
            calls.add(item["call_id"])
        elif item.get("type") == "function_call_output" and item["call_id"] not in calls:
            raise InvalidRequest(
                f"No tool call found for function call output with call_id "
                f"{item['call_id']}.", param=f"input[{index}]",
            )
        fresh.append(item)
    answered = {i["call_id"] for i in (*inherited, *items)
                if i.get("type") == "function_call_output"}
    for call_id in calls - answered:
        raise InvalidRequest(f"No tool output found for function call {call_id}.",
                             param="input")
    return fresh
