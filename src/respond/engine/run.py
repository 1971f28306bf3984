"""The run loop: one response in flight, from its first model turn to its recorded end.

``start`` does what must happen before the first byte: it lists the remote tools the
conversation has not listed yet, makes the calls an approval allowed, and primes the
backend (``truncation.prime``). ``Run.events`` then yields the stream: model turns, with
the server-side tools they call run between them, until the model answers or a call waits
on the client. Every transport consumes this one stream: SSE, a JSON body (its fold), and
the event log of a background response.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from respond.domain import Delta, Finish, Generation, ReasoningDelta, TextDelta, ToolCallDelta
from respond.engine.events import Event, EventBuilder
from respond.engine.history import to_messages
from respond.engine.intake import Prepared
from respond.engine.recording import Recorder
from respond.engine.toolloop import MAX_TOOL_TURNS, ServerTools
from respond.engine.truncation import prime
from respond.errors import BackendError, ContextOverflow
from respond.tools import Connector

log = logging.getLogger(__name__)

Deltas = AsyncGenerator[Delta, None]


async def start(prepared: Prepared, recorder: Recorder, connector: Connector | None, *,
                sequence: int = 0) -> Run:
    """Everything before the first model delta; raises the request's 4xx/5xx if it fails.

    ``sequence``: the number of the run's first event (a background run's log already holds
    its ``response.created`` and ``response.queued``)."""
    tools = ServerTools(prepared.servers, connector) if prepared.servers else None
    builder = EventBuilder(prepared.response, sequence=sequence,
                           classify=tools.classify if tools is not None else _function)
    preamble = builder.in_progress() if prepared.background else builder.start()
    try:
        if tools is not None:
            preamble += await _server_tools(prepared, tools, builder)
        deltas, first = await prime(prepared.backend, prepared.generation, prepared.req,
                                    prepared.context, prepared.media)
    except BaseException:
        if tools is not None:
            await tools.aclose()
        raise
    return Run(prepared, builder, recorder, deltas, first, preamble, tools)


def _function(name: str) -> tuple[str, ...]:
    return ("function",)


async def _server_tools(prepared: Prepared, tools: ServerTools,
                        builder: EventBuilder) -> list[Event]:
    """Listings and approved calls, before the model's first turn; offers the tools."""
    tools.reuse_listings(prepared.context)
    events = await tools.list_missing(builder)
    plan = prepared.plan
    forced_label = plan.forced_mcp[0] if plan.forced_mcp else None
    forced_tool = plan.forced_mcp[1] if plan.forced_mcp else None
    offered = tools.chat_tools({t["name"] for t in plan.tools},
                               only=forced_label if forced_tool is None else None)
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


class Run:
    """One response in flight. Iterate ``events()`` exactly once."""

    def __init__(self, prepared: Prepared, builder: EventBuilder, recorder: Recorder,
                 deltas: Deltas, first: Delta, preamble: list[Event],
                 tools: ServerTools | None) -> None:
        self._prepared = prepared
        self.builder = builder
        self._recorder = recorder
        self._deltas = deltas
        self._first = first
        self._preamble = preamble
        self._tools = tools
        self._spent = False  # the tool budget is used up: this turn is the last
        # calls the model may make in one turn; the backend's call indexes seen this turn
        self._call_limit: int | None = 1 if prepared.req.parallel_tool_calls is False else None
        self._calls: set[int] = set()
        self._dropped: set[int] = set()
        self._pending: list[Event] = []  # the terminal events, sent once stored

    @property
    def response(self) -> dict[str, Any]:
        return self.builder.response

    async def events(self) -> AsyncIterator[Event]:
        """The stream. The final state is stored before the terminal event is yielded, so a
        client that chains on ``response.completed`` always finds the response."""
        builder, prepared, recorder = self.builder, self._prepared, self._recorder
        record, background = prepared.record, prepared.background
        saved = False
        if record is not None and not background:
            recorder.live[record.id] = builder
        try:
            for event in self._preamble:
                yield event
            try:
                async for event in self._turns():
                    yield event
                pending = self._pending
            except BackendError as exc:
                log.warning("backend failed mid-stream: %s", exc.message)
                pending = builder.fail(exc.message)
            if not await recorder.save(record, builder.response, prepared.new_items,
                                       background=background):
                pending = []  # it ended elsewhere meanwhile: its log must not say otherwise
            saved = True
            for event in pending:
                yield event
        finally:
            if record is not None:
                recorder.live.pop(record.id, None)
            if not builder.terminal:
                builder.cancel()
            await self._deltas.aclose()
            if self._tools is not None:
                await self._tools.aclose()
            if not saved and not background:  # a worker settles its own (cancel or fail)
                recorder.save_later(record, builder.response, prepared.new_items)

    async def _turns(self) -> AsyncIterator[Event]:
        """Model turns until the response ends; its terminal events are left in
        ``_pending`` (they are sent once the response is stored)."""
        builder = self.builder
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
                self._pending = builder.finish(finish)
                return
            builder.add_usage(finish.usage)
            await self._deltas.aclose()
            turn += 1
            self._deltas, self._first = await self._next_turn(turn)

    def _loop_goes_on(self, finish: Finish, first_item: int) -> bool:
        """After a model turn: go on when respond ran tools in it and nothing waits on the
        client (no function call, no approval request) and the answer was not cut short."""
        if self._tools is None or self._spent or finish.reason in ("length", "content_filter"):
            return False
        made = self.builder.response["output"][first_item:]
        if not any(item["type"] == "mcp_call" for item in made):
            return False
        return not any(item["type"] in ("function_call", "mcp_approval_request") for item in made)

    async def _next_turn(self, turn: int) -> tuple[Deltas, Delta]:
        prepared = self._prepared
        assert self._tools is not None
        req = prepared.req
        limit = req.max_tool_calls
        spent = turn >= MAX_TOOL_TURNS or (limit is not None and self._tools.calls_run >= limit)
        generation: Generation = prepared.generation
        context = prepared.context + self.builder.response["output"]
        generation = dataclasses.replace(
            generation,
            messages=to_messages(req.instructions, context, vision=prepared.backend.vision,
                                 media=prepared.media),
            tools=None if spent else generation.tools,
            tool_choice=None if spent or not generation.tools else "auto",
            parallel_tool_calls=None if spent else generation.parallel_tool_calls,
        )
        self._calls, self._dropped = set(), set()
        if spent:  # the last turn: no tools offered, and any call the model still makes is dropped
            self._spent = True
            self._call_limit = 0
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
            if self._over_limit(delta.index):
                return []
            return self.builder.tool_call(delta.index, delta.id, delta.name, delta.arguments)
        if isinstance(delta, Finish):
            return self.builder.finish(delta)
        return []  # reasoning is not shown until reasoning items are supported

    def _over_limit(self, index: int) -> bool:
        """Whether the backend's call ``index`` is one more than this turn allows (all of a
        dropped call's fragments are dropped)."""
        if index in self._calls:
            return False
        if index in self._dropped:
            return True
        if self._call_limit is not None and len(self._calls) >= self._call_limit:
            self._dropped.add(index)
            return True
        self._calls.add(index)
        return False

    async def fold(self) -> dict[str, Any]:
        """Run to the end without streaming and return the final response."""
        async for _ in self.events():
            pass
        return self.builder.response


async def _chain(first: Delta, rest: Deltas) -> AsyncIterator[Delta]:
    yield first
    async for delta in rest:
        yield delta


def _closes_call(delta: Delta, builder: EventBuilder) -> bool:
    """Whether ``delta`` ends the open call (anything but more of the same call does)."""
    if isinstance(delta, ToolCallDelta):
        return delta.index != builder.open_call_key
    return not isinstance(delta, ReasoningDelta)
