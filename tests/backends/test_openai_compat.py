"""OpenAICompatBackend against a real HTTP upstream (``respond.testing.upstream``) on loopback.

Prompt sizes below follow the upstream's rule: 3 tokens per message plus its words.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Self

import aiohttp
import pytest

from respond.backends import Backend
from respond.backends.openai_compat import OpenAICompatBackend
from respond.domain import Delta, Finish, Generation, TextDelta, ToolCallDelta, Usage
from respond.errors import BackendError, BackendTimeout, ContextOverflow
from respond.settings import OpenAIModel
from respond.testing.upstream import UpstreamServer

HELLO = Generation(messages=[{"role": "user", "content": "hello there world"}])  # 6 tokens
ALL_TOKENS = "".join(f" tok{i}" for i in range(16)).lstrip()


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tokens=16) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_upstream(upstream: UpstreamServer) -> None:
    upstream.reset()


def make_backend(base_url: str, **config: object) -> OpenAICompatBackend:
    return OpenAICompatBackend(
        OpenAIModel.model_validate({"backend": "openai", "base_url": base_url, **config}),
        "public-name",
    )


@pytest.fixture
async def backend(upstream: UpstreamServer) -> AsyncIterator[OpenAICompatBackend]:
    backend = make_backend(upstream.base_url)
    yield backend
    await backend.aclose()


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


async def wait_for(condition: Callable[[], bool], within: float = 60.0) -> bool:
    """Whether ``condition`` comes true; ``within`` only guards against a hang."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_is_a_backend_with_the_configured_capabilities(upstream: UpstreamServer) -> None:
    backend = make_backend(upstream.base_url, vision=True, context=4096)
    try:
        assert isinstance(backend, Backend)
        assert backend.vision is True
        assert backend.context_window == 4096
        assert await backend.count_tokens(HELLO.messages) is None
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        assert await backend.count_tokens(HELLO.messages, tools=tools, tool_choice="auto") is None
    finally:
        await backend.aclose()


async def test_streams_text_deltas_then_finish_with_usage(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    deltas = await collect(backend.generate(HELLO))

    texts = [d for d in deltas if isinstance(d, TextDelta)]
    assert len(texts) == len(deltas) - 1 == 16  # one delta per streamed chunk
    assert "".join(d.text for d in texts) == ALL_TOKENS
    assert deltas[-1] == Finish("stop", Usage(input_tokens=6, output_tokens=16))
    [received] = upstream.requests
    assert received.path == "/v1/chat/completions"
    assert received.body["model"] == "public-name"
    assert received.body["messages"] == HELLO.messages
    assert received.body["stream"] is True
    assert received.body["stream_options"] == {"include_usage": True}


async def test_configured_model_id_is_sent_upstream(upstream: UpstreamServer) -> None:
    backend = make_backend(upstream.base_url, model="org/real-model-id")
    try:
        await collect(backend.generate(HELLO))
    finally:
        await backend.aclose()
    assert upstream.requests[0].body["model"] == "org/real-model-id"


async def test_max_output_tokens_ends_with_length(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    deltas = await collect(backend.generate(Generation(HELLO.messages, max_output_tokens=3)))

    assert deltas == [
        TextDelta("tok0"),
        TextDelta(" tok1"),
        TextDelta(" tok2"),
        Finish("length", Usage(input_tokens=6, output_tokens=3)),
    ]
    assert upstream.requests[0].body["max_tokens"] == 3


async def test_streamed_tool_call_fragments_reassemble(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    upstream.configure(
        tokens=0,
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
            {"name": "search", "arguments": '{"query": "respond server"}'},
        ],
    )

    deltas = await collect(backend.generate(HELLO))

    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert {d.index for d in calls} == {0, 1}
    assembled = {}
    for index in (0, 1):
        parts = [d for d in calls if d.index == index]
        assert len([p for p in parts if p.arguments]) > 1  # really streamed in fragments
        assert parts[0].id and parts[0].name
        assert all(p.id is None and p.name is None for p in parts[1:])
        assembled[parts[0].name] = json.loads("".join(p.arguments for p in parts))
    assert assembled == {
        "get_weather": {"city": "Paris", "unit": "celsius"},
        "search": {"query": "respond server"},
    }
    assert isinstance(deltas[-1], Finish) and deltas[-1].reason == "tool_calls"


async def test_sends_only_the_parameters_that_are_set(upstream: UpstreamServer) -> None:
    backend = make_backend(upstream.base_url, api_key="sk-upstream")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = Generation(
        HELLO.messages,
        max_output_tokens=64,
        temperature=0.25,
        tools=tools,
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        extra={"seed": 7, "stop": None},
    )
    try:
        await collect(backend.generate(request))
    finally:
        await backend.aclose()

    [received] = upstream.requests
    body = received.body
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.25
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_object"}
    assert body["seed"] == 7
    assert "top_p" not in body and "stop" not in body
    assert None not in body.values()
    assert received.headers["authorization"] == "Bearer sk-upstream"


async def test_no_authorization_header_without_api_key(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    await collect(backend.generate(HELLO))
    assert "authorization" not in upstream.requests[0].headers
    assert "temperature" not in upstream.requests[0].body


async def test_wrong_api_key_is_a_backend_error(upstream: UpstreamServer) -> None:
    upstream.api_key = "sk-right"
    backend = make_backend(upstream.base_url, api_key="sk-wrong")
    try:
        with pytest.raises(BackendError) as caught:
            await collect(backend.generate(HELLO))
    finally:
        upstream.api_key = None
        await backend.aclose()
    assert caught.value.status == 502
    assert "401" in caught.value.message and "Incorrect API key" in caught.value.message


async def test_upstream_500_is_a_backend_error_502(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    upstream.configure(error_status=500, error_message="the GPU caught fire")

    with pytest.raises(BackendError) as caught:
        await collect(backend.generate(HELLO))

    assert not isinstance(caught.value, BackendTimeout)
    assert caught.value.status == 502
    assert "the GPU caught fire" in caught.value.message


async def test_a_redirect_is_not_followed(upstream: UpstreamServer) -> None:
    """A redirect (here a 307 to a working upstream, which a following client would POST to
    again) is an error: respond talks to the address it was configured with."""
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: "
                     + f"{upstream.base_url}/chat/completions".encode()
                     + b"\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = make_backend(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(BackendError) as caught:
            await collect(backend.generate(HELLO))
    finally:
        await backend.aclose()
        server.close()
        await server.wait_closed()
    assert "307" in caught.value.message
    assert upstream.requests == []


async def test_non_json_error_body_is_quoted(upstream: UpstreamServer) -> None:
    backend = make_backend(upstream.base_url.removesuffix("/v1"))  # no such route: 404
    try:
        with pytest.raises(BackendError) as caught:
            await collect(backend.generate(HELLO))
    finally:
        await backend.aclose()
    assert "404" in caught.value.message and "Not Found" in caught.value.message


async def test_context_length_error_is_context_overflow(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    upstream.configure(context_limit=100)
    long = Generation([{"role": "user", "content": "word " * 150}])

    with pytest.raises(ContextOverflow) as caught:
        await collect(backend.generate(long))
    assert "maximum context length is 100 tokens" in str(caught.value)

    # a prompt that fits is answered normally
    deltas = await collect(backend.generate(HELLO))
    assert deltas[-1] == Finish("stop", Usage(6, 16))


async def test_silent_upstream_times_out_with_504(upstream: UpstreamServer) -> None:
    # the upstream stays silent for longer than the hang guard: only the time-out ends it
    upstream.configure(delay=600)
    backend = make_backend(upstream.base_url, timeout=0.3)
    try:
        with pytest.raises(BackendTimeout) as caught:
            await asyncio.wait_for(collect(backend.generate(HELLO)), 60)
    finally:
        await backend.aclose()
    assert caught.value.status == 504
    # clients learn which model failed, never the internal address of its upstream
    assert "'public-name'" in caught.value.message
    assert upstream.base_url not in caught.value.message


async def test_unreachable_upstream_is_a_backend_error() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    backend = make_backend(base_url)
    try:
        with pytest.raises(BackendError) as caught:
            await collect(backend.generate(HELLO))
    finally:
        await backend.aclose()
    assert caught.value.status == 502
    assert "Cannot reach the upstream of model 'public-name'" in caught.value.message
    assert base_url not in caught.value.message


async def test_stream_broken_midway_raises_after_the_deltas_received(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    upstream.configure(break_after=4)
    received: list[Delta] = []

    with pytest.raises(BackendError) as caught:
        async for delta in backend.generate(HELLO):
            received.append(delta)

    assert received == [
        TextDelta("tok0"),
        TextDelta(" tok1"),
        TextDelta(" tok2"),
        TextDelta(" tok3"),
    ]
    assert not isinstance(caught.value, BackendTimeout)
    assert "broke off" in caught.value.message


async def test_closing_the_stream_early_disconnects_the_upstream(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    upstream.configure(delay=0.05, tokens=200)
    stream = backend.generate(HELLO)

    first = await anext(stream)
    second = await anext(stream)
    await stream.aclose()

    assert [first, second] == [TextDelta("tok0"), TextDelta(" tok1")]
    assert await wait_for(lambda: upstream.disconnects == 1)


async def test_cancelling_the_consumer_disconnects_the_upstream(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    upstream.configure(delay=0.05, tokens=200)
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.generate(HELLO):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await wait_for(lambda: upstream.disconnects == 1)


async def test_connections_are_kept_alive_between_generations(
    backend: OpenAICompatBackend, upstream: UpstreamServer
) -> None:
    for _ in range(3):
        await collect(backend.generate(HELLO))

    ports = {received.client for received in upstream.requests}
    assert len(upstream.requests) == 3
    assert len(ports) == 1


async def test_shared_session_is_left_open(upstream: UpstreamServer) -> None:
    async with aiohttp.ClientSession() as session:
        config = OpenAIModel(backend="openai", base_url=upstream.base_url)
        backend = OpenAICompatBackend(config, "public-name", session)
        deltas = await collect(backend.generate(HELLO))
        await backend.aclose()

        assert deltas[-1] == Finish("stop", Usage(6, 16))
        async with session.get(f"{upstream.base_url}/models") as answer:
            assert answer.status == 200


def hi() -> bytes:
    """A whole stream answering "Hi"."""
    return (f"data: {chunk({'content': 'Hi'})}\n\ndata: {chunk({}, 'stop')}\n\n"
            "data: [DONE]\n\n").encode()


async def answer_three_times(raw: RawUpstream) -> None:
    """Three generations in a row from one backend, each answered "Hi"."""
    backend = OpenAICompatBackend(OpenAIModel(backend="openai", base_url=raw.base_url), "m")
    try:
        for _ in range(3):
            deltas = await collect(backend.generate(HELLO))
            assert deltas[0] == TextDelta("Hi")
    finally:
        await backend.aclose()


async def test_idle_connection_closed_by_the_upstream_is_not_an_error() -> None:
    """A server that closes each connection after answering (as one whose keep-alive ran
    out would): the next request goes out on a new connection, not a dead one."""
    async with RawUpstream([hi()], close=True) as raw:
        await answer_three_times(raw)
        assert raw.connections == 3


async def test_request_on_a_connection_the_upstream_just_dropped_is_sent_again() -> None:
    """The race a keep-alive pool cannot rule out: the upstream closes a pooled connection
    just as a request goes out on it. The request is sent again on a new connection."""
    async with RawUpstream([hi()], answers_per_connection=1) as raw:
        await answer_three_times(raw)
        assert raw.dropped == 2  # the 2nd and 3rd requests each met a dropped connection
        assert raw.connections == 3  # each retry opened a new one


# -- wire details a real upstream might produce, written byte by byte by a raw server -------


class RawUpstream:
    """An HTTP/1.1 server on loopback that answers every request with ``blocks``: a header
    block, then each block written and flushed separately (chunked transfer encoding, or
    ``close``: no length, the end of the body is the end of the connection).
    ``answers_per_connection``: after that many answers, the next request read on the
    connection is dropped unanswered (the connection closed without a word)."""

    def __init__(self, blocks: list[bytes], content_type: str = "text/event-stream",
                 *, close: bool = False, answers_per_connection: int | None = None) -> None:
        self.blocks = blocks
        self.content_type = content_type
        self.close = close
        self.answers_per_connection = answers_per_connection
        self.connections = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if answered == self.answers_per_connection:
                    self.dropped += 1
                    break
                answered += 1
                framing = b"connection: close" if self.close else b"transfer-encoding: chunked"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + self.content_type.encode()
                             + b"\r\n" + framing + b"\r\n\r\n")
                for block in self.blocks:
                    writer.write(block if self.close else b"%x\r\n%s\r\n" % (len(block), block))
                    await writer.drain()
                    await asyncio.sleep(0.001)
                if self.close:
                    break
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def generate_from(
    blocks: list[bytes], content_type: str = "text/event-stream"
) -> list[Delta]:
    async with RawUpstream(blocks, content_type) as raw:
        config = OpenAIModel(backend="openai", base_url=raw.base_url)
        backend = OpenAICompatBackend(config, "m")
        try:
            return await collect(backend.generate(HELLO))
        finally:
            await backend.aclose()


def chunk(delta: dict, finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


async def test_sse_comments_crlf_and_events_split_across_reads() -> None:
    stream = (
        f": keep-alive\r\n\r\ndata: {chunk({'content': 'Hel'})}\r\n\r\n"
        f"event: message\ndata:{chunk({'content': 'lo'})}\n\n"
        f"data: {chunk({}, 'stop')}\n\n"
        'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2}}\n\n'
        "data: [DONE]\n\n"
    ).encode()
    blocks = [stream[i : i + 7] for i in range(0, len(stream), 7)]

    assert await generate_from(blocks) == [
        TextDelta("Hel"),
        TextDelta("lo"),
        Finish("stop", Usage(2, 2)),
    ]


async def test_whole_json_answer_is_accepted() -> None:
    body = {
        "choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    deltas = await generate_from([json.dumps(body).encode()], "application/json")
    assert deltas == [TextDelta("Hi"), Finish("stop", Usage(3, 1))]


@pytest.mark.parametrize(
    "stream",
    [
        b"data: {not json\n\n",
        b'data: {"error": {"message": "engine crashed"}}\n\n',
        ("data: " + chunk({"content": "cut short"}) + "\n\n").encode(),  # no finish, no [DONE]
    ],
    ids=["bad-json", "error-chunk", "ends-early"],
)
async def test_bad_streams_are_backend_errors(stream: bytes) -> None:
    with pytest.raises(BackendError):
        await generate_from([stream])
