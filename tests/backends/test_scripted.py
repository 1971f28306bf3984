"""ScriptedBackend: the fake that engine tests and demos rely on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from respond.backends import Backend
from respond.backends.scripted import ScriptedBackend
from respond.domain import Delta, Finish, Generation, TextDelta, ToolCallDelta, Usage
from respond.errors import BackendError, ContextOverflow

HELLO = Generation(messages=[{"role": "user", "content": "hello"}])


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


async def test_plays_a_turn_and_appends_finish_with_usage() -> None:
    backend = ScriptedBackend([[TextDelta("Hi"), TextDelta(" there")]])

    deltas = await collect(backend.generate(HELLO))

    expected_input = len(str(HELLO.messages)) // 4
    assert deltas == [
        TextDelta("Hi"),
        TextDelta(" there"),
        Finish("stop", Usage(input_tokens=expected_input, output_tokens=2)),
    ]
    assert isinstance(backend, Backend)


async def test_explicit_finish_is_kept_and_not_doubled() -> None:
    finish = Finish("tool_calls", Usage(10, 3))
    turn: list[Delta] = [ToolCallDelta(0, "call_1", "f"), ToolCallDelta(0, arguments="{}"), finish]

    deltas = await collect(ScriptedBackend([turn]).generate(HELLO))

    assert deltas == turn


async def test_turns_are_consumed_in_order_and_the_last_repeats() -> None:
    backend = ScriptedBackend([[TextDelta("one")], [TextDelta("two")]])
    requests = [Generation([{"role": "user", "content": str(i)}]) for i in range(3)]

    texts = []
    for request in requests:
        first = (await collect(backend.generate(request)))[0]
        assert isinstance(first, TextDelta)
        texts.append(first.text)

    assert texts == ["one", "two", "two"]
    assert backend.requests == requests


async def test_exception_turn_raises_before_any_delta() -> None:
    backend = ScriptedBackend([ContextOverflow("too long", 200, 100), [TextDelta("ok")]])

    with pytest.raises(ContextOverflow):
        await anext(backend.generate(HELLO))
    assert (await collect(backend.generate(HELLO)))[0] == TextDelta("ok")


async def test_exception_inside_a_turn_raises_after_the_deltas_before_it() -> None:
    backend = ScriptedBackend([[TextDelta("a"), BackendError("boom"), TextDelta("never")]])
    received = []

    with pytest.raises(BackendError, match="boom"):
        async for delta in backend.generate(HELLO):
            received.append(delta)
    assert received == [TextDelta("a")]
    assert backend.cancelled is False


async def test_closing_early_is_recorded() -> None:
    backend = ScriptedBackend([[TextDelta("a"), TextDelta("b"), TextDelta("c")]], delay=0.01)
    stream = backend.generate(HELLO)

    assert await anext(stream) == TextDelta("a")
    assert backend.cancelled is False
    await stream.aclose()
    assert backend.cancelled is True


async def test_cancelling_the_consumer_is_recorded() -> None:
    backend = ScriptedBackend([[TextDelta("x")] * 100], delay=0.05)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.generate(HELLO):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cancelled is True


async def test_a_full_run_is_not_cancelled() -> None:
    backend = ScriptedBackend([[TextDelta("a")]], delay=0.001)
    await collect(backend.generate(HELLO))
    assert backend.cancelled is False


async def test_count_tokens_grows_with_the_text() -> None:
    backend = ScriptedBackend([[]], vision=True, context_window=512)
    short = [{"role": "user", "content": "x" * 40}]
    longer = [{"role": "system", "content": "y" * 80}, {"role": "user", "content": "x" * 40}]

    assert await backend.count_tokens(short) == 40 // 4 + 4
    assert await backend.count_tokens(longer) == 120 // 4 + 8
    assert await backend.count_tokens([{"role": "assistant", "content": None}]) == 4
    assert (backend.vision, backend.context_window) == (True, 512)


async def test_count_tokens_grows_with_the_tools_offered() -> None:
    backend = ScriptedBackend([[]])
    messages = [{"role": "user", "content": "x" * 40}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    assert await backend.count_tokens(messages, tools=tools) == \
        (40 + len(json.dumps(tools))) // 4 + 4
    assert await backend.count_tokens(messages, tools=tools, tool_choice="none") == 40 // 4 + 4
    assert await backend.count_tokens(messages, tools=[]) == 40 // 4 + 4


def test_needs_a_turn() -> None:
    with pytest.raises(ValueError):
        ScriptedBackend([])
