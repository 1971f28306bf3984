"""The Responses service: from a validated request to a running response and back to storage.

``create`` does everything that can fail with an HTTP error before the first byte is sent:
model lookup, loading the previous context, normalising input, checking tool outputs, and
priming the backend (so a context overflow or an unreachable upstream is a 4xx/5xx, not a
broken stream). ``Run.events`` then yields the stream; a non-streaming reply is its fold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from respond.backends import Backend
from respond.domain import Delta, Finish, Generation, ReasoningDelta, TextDelta, ToolCallDelta
from respond.engine.events import Event, EventBuilder
from respond.engine.history import Item, media_parts, to_messages, turn_starts
from respond.engine.media import Media, MediaResolver
from respond.engine.toolloop import MAX_TOOL_TURNS, Connector, ServerTools
from respond.errors import (
    BackendError,
    ContextLengthExceeded,
    ContextOverflow,
    InvalidRequest,
    ModelNotFound,
    NotFound,
)
from respond.ids import new_id
from respond.network import EgressPolicy
from respond.protocol.items import normalize_input
from respond.protocol.request import CreateResponse
from respond.protocol.response import list_object, response_skeleton
from respond.protocol.tools import (
    McpServer,
    ToolPlan,
    mcp_servers,
    normalize_tools,
    plan_tools,
    response_format,
)
from respond.store import ItemPage, Store, StoredResponse

log = logging.getLogger(__name__)

MAX_TRUNCATION_ATTEMPTS = 8


@dataclasses.dataclass(slots=True)
class Prepared:
    """A validated response, ready to run: what to generate and how to report it."""

    req: CreateResponse
    backend: Backend
    builder: EventBuilder
    generation: Generation
    context: list[Item]
    record: StoredResponse | None
    new_items: list[Item]
    plan: ToolPlan
    servers: list[McpServer]
    approved: list[Item] = dataclasses.field(default_factory=list)  # requests to run first
    media: Media = dataclasses.field(default_factory=dict)  # the context's images and files


class Run:
    """One response in flight. Iterate ``events()`` exactly once."""

    def __init__(
        self,
        service: ResponsesService,
        prepared: Prepared,
        deltas: AsyncIterator[Delta],
        first: Delta,
        preamble: list[Event],
        tools: ServerTools | None,
        *,
        background: bool = False,
    ) -> None:
        self._background = background
        self._service = service
        self._prepared = prepared
        self.builder = prepared.builder
        self._deltas = deltas
        self._first = first
        self._preamble = preamble
        self._tools = tools
        self._record = prepared.record
        self._new_items = prepared.new_items
        self._spent = False  # the tool budget is used up: this turn is the last

    @property
    def response(self) -> dict[str, Any]:
        return self.builder.response

    async def events(self) -> AsyncIterator[Event]:
        """The stream. The final state is stored before the terminal event is yielded, so a
        client that chains on ``response.completed`` always finds the response."""
        builder = self.builder
        saved = False
        if self._record is not None and not self._background:
            self._service.live[self._record.id] = builder
        try:
            for event in self._preamble:
                yield event
            pending: list[Event] = []
            try:
                turn = 1
                while True:
                    finish: Finish | None = None
                    first_item = len(builder.response["output"])
                    async for delta in _chain(self._first, self._deltas):
                        if builder.open_server_call and _closes_call(delta, builder):
                            for event in builder.close_call():
                                yield event
                            assert self._tools is not None
                            for event in await self._tools.run(builder):
                                yield event
                        if isinstance(delta, Finish):
                            finish = delta
                            break
                        for event in self._apply(delta):
                            yield event
                    if finish is None:
                        raise BackendError("The model backend ended the stream without finishing.")
                    if not self._loop_goes_on(finish, first_item):
                        pending = builder.finish(finish)  # sent once stored
                        break
                    builder.add_usage(finish.usage)
                    await self._deltas.aclose()
                    turn += 1
                    self._deltas, self._first = await self._next_turn(turn)
            except BackendError as exc:
                log.warning("backend failed mid-stream: %s", exc.message)
                pending = builder.fail(exc.message)
            await self._service.save(self._record, builder.response, self._new_items)
            saved = True
            for event in pending:
                yield event
        finally:
            if self._record is not None:
                self._service.live.pop(self._record.id, None)
            if not builder.terminal:
                builder.cancel()
            await self._deltas.aclose()
            if self._tools is not None:
                await self._tools.aclose()
            if not saved:
                self._service.save_later(self._record, builder.response, self._new_items)

    def _loop_goes_on(self, finish: Finish, first_item: int) -> bool:
        """After a model turn: go on when respond ran tools in it and nothing waits on the
        client (no function call, no approval request) and the answer was not cut short."""
        if self._tools is None or self._spent or finish.reason in ("length", "content_filter"):
            return False
        made = self.builder.response["output"][first_item:]
        if not any(item["type"] == "mcp_call" for item in made):
            return False
        return not any(item["type"] in ("function_call", "mcp_approval_request") for item in made)

    async def _next_turn(self, turn: int) -> tuple[AsyncIterator[Delta], Delta]:
        prepared = self._prepared
        assert self._tools is not None
        req = prepared.req
        generation = prepared.generation
        limit = req.max_tool_calls
        spent = turn >= MAX_TOOL_TURNS or (limit is not None and self._tools.calls_run >= limit)
        context = prepared.context + self.builder.response["output"]
        generation = dataclasses.replace(
            generation,
            messages=to_messages(req.instructions, context, vision=prepared.backend.vision,
                                 media=prepared.media),
            tools=None if spent else generation.tools,
            tool_choice=None if spent or not generation.tools else "auto",
            parallel_tool_calls=None if spent else generation.parallel_tool_calls,
        )
        self.builder.calls_made = 0
        if spent:  # the last turn: no tools offered, and any call the model still makes is dropped
            self._spent = True
            self.builder.max_calls = 0
        deltas = prepared.backend.generate(generation)
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            raise BackendError("The model backend returned nothing.") from None
        except ContextOverflow:
            await deltas.aclose()
            raise BackendError("The conversation outgrew the model's context window during "
                               "tool calls.") from None
        except BaseException:
            await deltas.aclose()
            raise
        return deltas, first

    def _apply(self, delta: Delta) -> list[Event]:
        if isinstance(delta, TextDelta):
            return self.builder.text(delta.text)
        if isinstance(delta, ToolCallDelta):
            return self.builder.tool_call(delta.index, delta.id, delta.name, delta.arguments)
        if isinstance(delta, Finish):
            return self.builder.finish(delta)
        return []  # reasoning is not shown until reasoning items are supported

    async def fold(self) -> dict[str, Any]:
        """Run to the end without streaming and return the final response."""
        async for _ in self.events():
            pass
        return self.builder.response


async def _chain(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    yield first
    async for delta in rest:
        yield delta


def _closes_call(delta: Delta, builder: EventBuilder) -> bool:
    """Whether ``delta`` ends the open call (anything but more of the same call does)."""
    if isinstance(delta, ToolCallDelta):
        return delta.index != builder.open_call_key
    return not isinstance(delta, ReasoningDelta)


class ResponsesService:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend],
        *,
        retention_seconds: int,
        clock: Callable[[], float] = time.time,
        connector: Connector | None = None,
        media: MediaResolver | None = None,
    ) -> None:
        self.connector = connector  # opens sessions to remote MCP servers
        self.store = store
        # reads the images and files of a context (by default: public URLs only)
        self.media = media or MediaResolver(store, EgressPolicy(), clock=clock)
        self.backends = backends
        self.retention_seconds = retention_seconds
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self.live: dict[str, EventBuilder] = {}  # stored foreground responses being generated

    # -- create ----------------------------------------------------------------------------

    async def create(self, req: CreateResponse) -> Run:
        """Validate, load the context and start generating (foreground)."""
        return await self.start(await self.prepare(req))

    async def prepare(self, req: CreateResponse) -> Prepared:
        """Everything that can fail with a 4xx before any work: model, previous context,
        input items, tools. Returns the response to run, not yet started."""
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
        self._check_media(items, backend)
        items = await self._resolve_stored(items, req.input)
        new_items = self._check_context(inherited_ids, inherited, items)
        context = inherited + items
        media = await self.media.resolve(
            context, vision=backend.vision,
            params={item["id"]: f"input[{index}]" for index, item in enumerate(items)})

        response_id = new_id("response")
        skeleton = response_skeleton(req, response_id=response_id, created_at=now,
                                     model=req.model,
                                     status="queued" if req.background else "in_progress")
        record = None
        if skeleton["store"]:
            record = StoredResponse(
                id=response_id,
                body=skeleton,
                context_ids=inherited_ids + [item["id"] for item in items],
                output_ids=[],
                previous_response_id=req.previous_response_id,
                created_at=now,
                expires_at=now + self.retention_seconds,
            )
        prepared = self.plan(req, backend, skeleton, context, record, new_items, media)
        prepared.approved = self._approved_calls(items, context, prepared.servers)
        return prepared

    @staticmethod
    def _approved_calls(items: list[Item], context: list[Item],
                        servers: list[McpServer]) -> list[Item]:
        """The approval requests this input approves and that were not run yet (an approved
        call is made exactly once, a denied one never)."""
        requests = {i["id"]: i for i in context if i.get("type") == "mcp_approval_request"}
        done = {i.get("approval_request_id") for i in context if i.get("type") == "mcp_call"}
        labels = {server.label for server in servers}
        approved: list[Item] = []
        for index, item in enumerate(items):
            if item.get("type") != "mcp_approval_response":
                continue
            request = requests.get(item["approval_request_id"])
            if request is None:
                raise InvalidRequest(
                    f"No approval request found with id '{item['approval_request_id']}'.",
                    param=f"input[{index}].approval_request_id")
            if not item["approve"] or request["id"] in done or request in approved:
                continue
            if request["server_label"] not in labels:
                raise InvalidRequest(
                    f"The approved call needs the MCP server '{request['server_label']}', which "
                    "is not among this request's tools.", param="tools")
            approved.append(request)
        return approved

    def backend_for(self, model: str) -> Backend:
        backend = self.backends.get(model)
        if backend is None:
            raise ModelNotFound(model)
        return backend

    @staticmethod
    def plan(
        req: CreateResponse,
        backend: Backend,
        skeleton: dict[str, Any],
        context: list[Item],
        record: StoredResponse | None,
        new_items: list[Item],
        media: Media | None = None,
    ) -> Prepared:
        """The generation and the event builder for a response (fresh or restored);
        ``media``: the context's images and files, resolved (``MediaResolver.resolve``)."""
        media = media or {}
        tools = normalize_tools(req.tools)
        plan = plan_tools(tools, req.tool_choice)
        servers = mcp_servers(req.tools)
        fmt = response_format(req.text.format.model_dump(exclude_none=True)
                              if req.text and req.text.format else None)
        skeleton["tools"] = tools
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
        builder = EventBuilder(skeleton)
        if req.parallel_tool_calls is False:
            builder.max_calls = 1
        return Prepared(req, backend, builder, generation, context, record, new_items, plan,
                        servers, media=media)

    async def start(self, prepared: Prepared, *, background: bool = False) -> Run:
        """List remote tools, run approved calls, then prime the backend: the first delta
        arrives (or a 4xx/5xx is raised) before any byte of the response is sent."""
        builder = prepared.builder
        preamble = builder.in_progress() if background else builder.start()
        tools = None
        if prepared.servers:
            tools = ServerTools(prepared.servers, self.connector)
            try:
                preamble += await self._server_tools(prepared, tools)
            except BaseException:
                await tools.aclose()
                raise
        try:
            deltas, first = await self._prime(prepared.backend, prepared.generation,
                                              prepared.req, prepared.context, prepared.media)
        except BaseException:
            if tools is not None:
                await tools.aclose()
            raise
        return Run(self, prepared, deltas, first, preamble, tools, background=background)

    async def _server_tools(self, prepared: Prepared, tools: ServerTools) -> list[Event]:
        """Listings and approved calls, before the model's first turn; offers the tools."""
        builder = prepared.builder
        tools.reuse_listings(prepared.context)
        events = await tools.list_missing(builder)
        plan = prepared.plan
        forced_label = plan.forced_mcp[0] if plan.forced_mcp else None
        forced_tool = plan.forced_mcp[1] if plan.forced_mcp else None
        offered = tools.chat_tools({t["name"] for t in plan.tools},
                                   only=forced_label if forced_tool is None else None)
        builder.classify = tools.classify  # type: ignore[method-assign]
        for request in prepared.approved:
            events += builder.mcp_approved_call(request["server_label"], request["name"],
                                                request["arguments"], request["id"])
            events += await tools.run(builder)
        generation = prepared.generation
        functions = [] if forced_label else (generation.tools or [])
        choice = generation.tool_choice
        if plan.mode == "none":
            offered, choice = [], None
        elif forced_label is not None:
            name = tools.chat_name(forced_label, forced_tool) if forced_tool else None
            if name is not None:
                choice = {"type": "function", "function": {"name": name}}
            else:
                choice = "required" if offered else None
        elif offered and choice is None:
            choice = "auto"
        all_tools = functions + offered
        prepared.generation = dataclasses.replace(
            generation,
            messages=to_messages(prepared.req.instructions,
                                 prepared.context + builder.response["output"],
                                 vision=prepared.backend.vision, media=prepared.media),
            tools=all_tools or None,
            tool_choice=choice if all_tools else None,
        )
        return events

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

    @staticmethod
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

    @staticmethod
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

    async def _prime(
        self, backend: Backend, generation: Generation, req: CreateResponse, context: list[Item],
        media: Media,
    ) -> tuple[AsyncIterator[Delta], Delta]:
        """Start generating and wait for the first delta, truncating on overflow if allowed."""
        window = context
        for _attempt in range(MAX_TRUNCATION_ATTEMPTS):
            deltas = backend.generate(generation)
            try:
                first = await anext(deltas)
            except StopAsyncIteration:
                raise BackendError("The model backend returned nothing.") from None
            except ContextOverflow as overflow:
                await deltas.aclose()
                if req.truncation != "auto":
                    raise ContextLengthExceeded(
                        self._overflow_message(overflow, backend), param="input"
                    ) from None
                window = self._shorter(window, overflow)
                generation = dataclasses.replace(
                    generation,
                    messages=to_messages(req.instructions, window, vision=backend.vision,
                                         media=media),
                )
                continue
            except BaseException:
                await deltas.aclose()
                raise
            return deltas, first
        raise ContextLengthExceeded(
            "The input does not fit the model's context window even after truncation.",
            param="input",
        )

    @staticmethod
    def _overflow_message(overflow: ContextOverflow, backend: Backend) -> str:
        window = overflow.context_window or backend.context_window
        size = f" of {window} tokens" if window else ""
        used = f" ({overflow.prompt_tokens} tokens)" if overflow.prompt_tokens else ""
        return (f"Your input{used} exceeds the context window{size} of this model. Shorten "
                "the input, or set 'truncation' to 'auto' to drop the oldest items.")

    @staticmethod
    def _shorter(window: list[Item], overflow: ContextOverflow) -> list[Item]:
        """Drop whole turns from the oldest end: about as many as the overflow requires."""
        starts = [s for s in turn_starts(window) if s > 0]
        if not starts:
            raise ContextLengthExceeded(
                "The last turn alone exceeds the model's context window; it cannot be "
                "truncated further.", param="input",
            )
        keep_fraction = 0.5
        if overflow.prompt_tokens and overflow.context_window:
            keep_fraction = min(0.9, overflow.context_window / overflow.prompt_tokens * 0.85)
        sizes = [len(str(item)) for item in window]
        budget = sum(sizes) * keep_fraction
        cut = starts[0]
        for start in starts:
            cut = start
            if sum(sizes[start:]) <= budget:
                break
        return window[cut:]

    # -- persistence -----------------------------------------------------------------------

    def _final_record(self, record: StoredResponse, response: dict[str, Any]) -> StoredResponse:
        return StoredResponse(
            id=record.id,
            body=response,
            context_ids=record.context_ids,
            output_ids=[item["id"] for item in response["output"]],
            previous_response_id=record.previous_response_id,
            created_at=record.created_at,
            expires_at=record.expires_at,
        )

    async def save(
        self, record: StoredResponse | None, response: dict[str, Any], new_items: list[Item]
    ) -> None:
        if record is not None:
            await self.store.save_response(
                self._final_record(record, response), new_items + list(response["output"])
            )

    def save_later(
        self, record: StoredResponse | None, response: dict[str, Any], new_items: list[Item]
    ) -> None:
        """Persist a response whose consumer went away, outside the (cancelled) caller's task."""
        if record is None:
            return
        task = asyncio.get_running_loop().create_task(self.save(record, response, new_items))
        self._pending.add(task)
        task.add_done_callback(self._saved)

    def _saved(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not store a response", exc_info=task.exception())

    async def flush(self) -> None:
        """Wait until the writes of abandoned streams have reached the store."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- reads -----------------------------------------------------------------------------

    async def get(self, response_id: str) -> dict[str, Any]:
        live = self.live.get(response_id)
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
        self, response_id: str, *, limit: int, order: str, after: str | None, before: str | None
    ) -> dict[str, Any]:
        await self.flush()
        page: ItemPage | None = await self.store.list_input_items(
            response_id, limit=limit, order=order, after=after, before=before,  # type: ignore[arg-type]
            now=int(self.clock()),
        )
        if page is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return list_object(page.items, page.has_more)
