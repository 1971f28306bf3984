"""The embedded llama.cpp backend, against the real bundled SmolLM2-135M model."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema
import pytest
import pytest_asyncio

from respond.backends import Backend
from respond.backends.llamacpp import LlamaCppBackend, bundled_model_path
from respond.backends.toolcalls import CallPlan, tool_instructions
from respond.domain import Delta, Finish, Generation, TextDelta
from respond.errors import BackendError, ContextOverflow, InvalidRequest
from respond.settings import ConfigError, LlamaCppModel

pytestmark = pytest.mark.asyncio(loop_scope="module")

# guards against a hang only: every wait ends on an event long before this
HANG = 60.0

CONTEXT = 1024
HELLO = [{"role": "user", "content": "Say hello to Ada in one short sentence."}]
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    loaded = await LlamaCppBackend.load(
        LlamaCppModel(backend="llamacpp", context=CONTEXT, parallel=2, threads=2)
    )
    yield loaded
    await loaded.aclose()


async def collect(backend: LlamaCppBackend, request: Generation) -> list[Delta]:
    return [delta async for delta in backend.generate(request)]


def finish_of(deltas: list[Delta]) -> Finish:
    """The closing ``Finish``, checking it is the only one and comes last."""
    assert isinstance(deltas[-1], Finish)
    assert not any(isinstance(d, Finish) for d in deltas[:-1])
    return deltas[-1]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


def endless(messages: list[dict[str, str]], tokens: int) -> Generation:
    """A generation that runs exactly ``tokens`` tokens (the model may not stop early)."""
    return Generation(messages, max_output_tokens=tokens, extra={"ignore_eos": True})


async def test_bundled_model_is_found_and_a_missing_package_is_named() -> None:
    assert bundled_model_path().suffix == ".gguf"
    with pytest.raises(ConfigError, match="'no-such-model-package' package"):
        bundled_model_path("no-such-model-package")


async def test_is_a_backend(backend: LlamaCppBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.context_window == CONTEXT
    assert backend.vision is False


async def test_streams_text_then_one_finish_with_real_usage(backend: LlamaCppBackend) -> None:
    deltas = await collect(backend, Generation(HELLO, max_output_tokens=64, temperature=0))

    finish = finish_of(deltas)
    assert finish.reason == "stop"
    assert all(isinstance(d, TextDelta) for d in deltas[:-1])
    assert text_of(deltas).strip()
    assert finish.usage is not None
    assert finish.usage.input_tokens > 0
    text_deltas = len(deltas) - 1  # one per token
    assert finish.usage.output_tokens == text_deltas + 1  # + the silent end-of-turn token


async def test_max_output_tokens_ends_with_length(backend: LlamaCppBackend) -> None:
    deltas = await collect(backend, Generation(STORY, max_output_tokens=8, temperature=0))

    finish = finish_of(deltas)
    assert finish.reason == "length"
    assert finish.usage is not None and finish.usage.output_tokens == 8
    assert len(deltas) == 8 + 1


async def test_count_tokens_equals_what_the_engine_bills(backend: LlamaCppBackend) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "Three more, please."},
    ]
    counted = await backend.count_tokens(messages)

    deltas = await collect(backend, Generation(messages, max_output_tokens=1))
    usage = finish_of(deltas).usage
    assert usage is not None and counted == usage.input_tokens


async def test_count_tokens_with_tools_counts_the_tool_block_too(
        backend: LlamaCppBackend) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris?"}]

    def spelled_out(tool_choice: object) -> list[dict[str, str]]:
        """The messages with the tool block written into the system message by hand."""
        plan = CallPlan.of([WEATHER], tool_choice, None)
        assert plan is not None
        return [{"role": "system", "content": f"You are terse.\n\n{tool_instructions(plan)}"},
                messages[1]]

    bare = await backend.count_tokens(messages)
    counted = await backend.count_tokens(messages, tools=[WEATHER])
    assert bare is not None and counted is not None
    assert counted == await backend.count_tokens(spelled_out(None))
    block = spelled_out(None)[0]["content"].removeprefix("You are terse.")
    assert len(block) / 6 < counted - bare < len(block) / 2  # a few characters a token

    # it is what the engine bills for a generation offered the tool
    deltas = await collect(backend, Generation(messages, max_output_tokens=1, tools=[WEATHER]))
    usage = finish_of(deltas).usage
    assert usage is not None and counted == usage.input_tokens

    # tool_choice counts as generate renders it: "none" offers nothing; the block's last
    # line differs when a call is required or forced
    assert await backend.count_tokens(messages, tools=[WEATHER], tool_choice="none") == bare
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        assert await backend.count_tokens(messages, tools=[WEATHER], tool_choice=choice) \
            == await backend.count_tokens(spelled_out(choice))


async def test_an_over_long_prompt_raises_context_overflow(backend: LlamaCppBackend) -> None:
    messages = [{"role": "user", "content": "lighthouse " * 1500}]
    received: list[Delta] = []

    with pytest.raises(ContextOverflow) as caught:
        async for delta in backend.generate(Generation(messages, max_output_tokens=8)):
            received.append(delta)

    assert received == []
    assert caught.value.context_window == CONTEXT
    assert caught.value.prompt_tokens is not None and caught.value.prompt_tokens > CONTEXT
    assert caught.value.prompt_tokens == await backend.count_tokens(messages)


async def test_json_schema_in_extra_constrains_the_output(backend: LlamaCppBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
        "required": ["colour", "bright"],
        "additionalProperties": False,
    }
    deltas = await collect(
        backend,
        Generation(HELLO, max_output_tokens=64, temperature=0, extra={"json_schema": schema}),
    )

    assert finish_of(deltas).reason == "stop"
    jsonschema.validate(json.loads(text_of(deltas)), schema)


async def test_a_request_the_engine_refuses_is_invalid(backend: LlamaCppBackend) -> None:
    with pytest.raises(InvalidRequest, match="bogus"):
        await collect(backend, Generation(HELLO, extra={"json_schema": {"type": "bogus"}}))


class Watched:
    """A llama.cpp engine that notes, for every blocking call into it, the thread it ran on
    and, once it returned, how many chunks it produced (the test keeps the lists, never the
    engine: its last reference must go where the backend drops it)."""

    def __init__(self, engine: Any, threads: list[int], produced: list[int]) -> None:
        self.engine, self.threads, self.produced = engine, threads, produced

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def handle_chat_completions(self, body: Any, on_chunk: Any) -> Any:
        self.threads.append(threading.get_ident())
        chunks = 0

        def counted(chunk: Any) -> Any:
            nonlocal chunks
            chunks += 1
            return on_chunk(chunk)

        try:
            return self.engine.handle_chat_completions(body, counted)
        finally:
            self.produced.append(chunks)


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(HANG):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def test_two_generations_run_in_parallel_slots(backend: LlamaCppBackend) -> None:
    threads: list[int] = []
    produced: list[int] = []
    engine = backend._server
    backend._server = Watched(engine, threads, produced)
    try:
        first = backend.generate(endless(STORY, 900))
        second = backend.generate(endless(STORY, 900))
        assert isinstance(await anext(first), TextDelta)
        assert isinstance(await anext(second), TextDelta)
        # with one slot, the second would have waited for the first to run its 900 tokens
        assert produced == [], "the second generation waited for the first to end"
        await first.aclose()
        await second.aclose()
        await until(lambda: len(produced) == 2, "the generations did not stop")
    finally:
        backend._server = engine


async def test_abandoned_generations_stop_free_their_slots_and_never_block_the_loop(
    backend: LlamaCppBackend,
) -> None:
    threads: list[int] = []
    produced: list[int] = []
    engine = backend._server
    backend._server = Watched(engine, threads, produced)
    try:
        # one consumer closes its stream, the other is cancelled, while both slots run
        # 900-token generations
        closed = backend.generate(endless(STORY, 900))
        for _ in range(3):
            assert isinstance(await anext(closed), TextDelta)

        reading = asyncio.Event()

        async def consume() -> None:
            count = 0
            async for _ in backend.generate(endless(STORY, 900)):
                count += 1
                if count == 3:
                    reading.set()

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(reading.wait(), HANG)
        await closed.aclose()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer

        # the engine's calls return (their slots free) with the generations cut short
        await until(lambda: len(produced) == 2, "the abandoned generations are still running")
        assert all(chunks < 900 for chunks in produced), (
            f"the engine ran the abandoned generations on: {produced} chunks")

        # the freed slots serve the next request
        deltas = await asyncio.wait_for(collect(backend, endless(HELLO, 8)), HANG)
    finally:
        backend._server = engine

    assert finish_of(deltas).reason == "length"
    # llama.cpp's blocking calls run on the backend's threads, never on the event loop
    assert len(threads) == 3 and threading.get_ident() not in threads


async def test_aclose_ends_a_running_stream_with_an_error_and_refuses_new_work() -> None:
    own = await LlamaCppBackend.load(LlamaCppModel(backend="llamacpp", context=CONTEXT,
                                                   parallel=1))
    threads: list[int] = []
    produced: list[int] = []
    own._server = Watched(own._server, threads, produced)
    stream = own.generate(endless(STORY, 900))
    assert isinstance(await anext(stream), TextDelta)

    await asyncio.wait_for(own.aclose(), HANG)

    assert len(produced) == 1 and produced[0] < 900, (
        f"aclose let the generation run on: {produced} chunks")
    with pytest.raises(BackendError, match="shut down"):
        async for _ in stream:
            pass
    with pytest.raises(BackendError):
        await collect(own, Generation(HELLO))
    await own.aclose()  # idempotent
