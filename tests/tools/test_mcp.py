"""The MCP client adapter against a real MCP server (``McpTestServer``, the ``mcp`` SDK's own
server) on loopback, which the tests allow with ``EgressPolicy(["127.0.0.1/32"])``."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator

import mcp_types as types
import pytest

from respond.network import EgressPolicy
from respond.testing.mcp_server import McpTestServer, ToolCall
from respond.tools import ToolError, ToolSpec
from respond.tools.mcp import (
    McpHttpError,
    McpProtocolError,
    McpSession,
    McpToolExecutionError,
    result_text,
)

# guards against a hang only: every wait below ends on an event long before this
HANG = 60.0

TOKEN = "secret-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK = EgressPolicy(["127.0.0.1/32"])


@pytest.fixture(scope="module")
def server() -> Iterator[McpTestServer]:
    with McpTestServer(token=TOKEN) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()


def handshakes(server: McpTestServer) -> int:
    counts = server.rpc_counts()
    return counts["initialize"] + counts["server/discover"]


def mcp_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mcp ")]


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(HANG):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the happy path -----------------------------------------------------------------------------


async def test_lists_the_servers_tools(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        tools = await session.list_tools()
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"add", "echo", "get_weather", "fail", "slow"}
    add = by_name["add"]
    assert isinstance(add, ToolSpec) and add.description == "Add two integers."
    assert add.input_schema["type"] == "object"
    assert set(add.input_schema["properties"]) == {"a", "b"}
    assert by_name["get_weather"].input_schema["properties"]["unit"]["enum"] == ["c", "f"]
    assert server.list_calls == 1


async def test_calls_a_tool_once(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        assert await session.call("add", {"a": 2, "b": 3}) == "5"
        weather = await session.call("get_weather", {"city": "Paris", "unit": "f"})
    assert weather == "The weather in Paris is sunny, 70°F."
    assert server.calls == [ToolCall("add", {"a": 2, "b": 3}),
                            ToolCall("get_weather", {"city": "Paris", "unit": "f"})]


async def test_the_headers_go_on_every_request(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        await session.list_tools()
        await session.call("echo", {"text": "hi"})
    assert len(server.requests) >= 3
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)


async def test_one_connection_serves_many_calls(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        await session.list_tools()
        for i in range(5):
            assert await session.call("add", {"a": i, "b": 1}) == str(i + 1)
        await session.list_tools()
    assert handshakes(server) == 1
    assert len(server.calls) == 5
    assert len(server.connections()) == 1  # one TCP connection, kept alive


async def test_concurrent_calls_share_the_session(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        results = await asyncio.gather(
            session.call("slow", {"seconds": 0.2}),
            *(session.call("add", {"a": i, "b": i}) for i in range(4)),
        )
    assert results == ["slept 0.2 s", "0", "2", "4", "6"]
    assert handshakes(server) == 1


async def test_a_handshake_era_server_is_initialized_once(server: McpTestServer) -> None:
    server.legacy = True  # refuses the 2026 discover probe: the client falls back to initialize
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        await session.list_tools()
        assert await session.call("add", {"a": 2, "b": 3}) == "5"
        assert await session.call("echo", {"text": "again"}) == "again"
    assert server.rpc_counts()["initialize"] == 1
    assert len(server.calls) == 2


async def test_falls_back_to_sse_when_the_post_is_refused(server: McpTestServer) -> None:
    async with McpSession.open(server.sse_url, HEADERS, LOOPBACK, server_label="test") as session:
        assert session.transport == "sse"
        assert "add" in {t.name for t in await session.list_tools()}
        assert await session.call("add", {"a": 2, "b": 3}) == "5"
    assert any(r.method == "GET" and r.path == "/sse" for r in server.requests)
    assert any(r.path.startswith("/messages") for r in server.requests)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)
    assert server.calls == [ToolCall("add", {"a": 2, "b": 3})]


# -- failures become ToolError ------------------------------------------------------------------


async def test_a_tool_error_result_raises_with_its_text(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        with pytest.raises(McpToolExecutionError, match="the tool failed, as scripted") as caught:
            await session.call("fail", {})
        assert caught.value.error_object() == {
            "type": "mcp_tool_execution_error",
            "content": [{"type": "text", "text": str(caught.value)}]}
        assert await session.call("add", {"a": 1, "b": 2}) == "3"  # the session survives
    assert [c.name for c in server.calls] == ["fail", "add"]


@pytest.mark.parametrize("endpoint", ["url", "sse_url"])
async def test_a_wrong_token_is_refused_without_leaking_it(
    server: McpTestServer, endpoint: str
) -> None:
    wrong = "Bearer wrong-token-0123456789"
    with pytest.raises(McpHttpError) as caught:
        async with McpSession.open(getattr(server, endpoint), {"Authorization": wrong}, LOOPBACK,
                                   server_label="test"):
            pass
    message = str(caught.value)
    assert caught.value.code == 401
    assert message.startswith("MCP server 'test' refused the request: HTTP 401")
    assert "wrong-token" not in message and TOKEN not in message
    assert server.calls == [] and server.requests  # it was asked, and nothing ran


async def test_http_errors_and_garbage(server: McpTestServer) -> None:
    server.http_error = 500
    with pytest.raises(McpHttpError, match="MCP server 'test' answered HTTP 500") as caught:
        async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test"):
            pass
    assert caught.value.code == 500
    server.http_error, server.garbage = None, True
    with pytest.raises(McpProtocolError, match="MCP server 'test' sent an invalid response"):
        async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test"):
            pass
    assert mcp_tasks() == []


async def test_an_unknown_tool_is_a_tool_error(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        with pytest.raises(ToolError, match="nope"):
            await session.call("nope", {})


async def test_a_dead_server_fails_fast() -> None:
    """A refused connection is reported at once, not after the time-out (600 s here: the
    guard, not the session's time-out, would end a client that waited for it)."""
    url = f"http://127.0.0.1:{unused_port()}/mcp"
    with pytest.raises(ToolError, match=r"MCP server 'dead' could not be reached at http://127"):
        async with asyncio.timeout(HANG), McpSession.open(url, HEADERS, LOOPBACK,
                                                           server_label="dead", timeout=600):
            pass
    assert mcp_tasks() == []


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_server_stopped_mid_call_fails_the_call(how: str) -> None:
    server = McpTestServer(token=TOKEN).start()
    try:
        # the call and the session's time-out both outlast the guard: only the server going
        # away can end the call in time
        async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="gone",
                                   timeout=600) as session:
            call = asyncio.create_task(session.call("slow", {"seconds": 600}))
            await until(lambda: bool(server.calls), "the tool never started on the server")
            await asyncio.to_thread(getattr(server, how))
            with pytest.raises(ToolError, match="MCP server 'gone'") as caught:
                await asyncio.wait_for(call, HANG)
            logging.getLogger(__name__).info("%s: %s", how, caught.value)
            with pytest.raises(ToolError, match="MCP server 'gone'"):  # and stays failed
                await session.call("add", {"a": 1, "b": 1})
    finally:
        server.stop()
    assert mcp_tasks() == []


async def test_a_slow_call_times_out_and_the_session_goes_on(server: McpTestServer) -> None:
    # the time-out leaves the handshake and the quick call room on a busy machine; the slow
    # call would outlast the guard if the time-out did not end it
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test",
                               timeout=2) as session:
        with pytest.raises(ToolError, match=r"^MCP server 'test' did not answer within 2 s$"):
            await asyncio.wait_for(session.call("slow", {"seconds": 600}), HANG)
        assert await session.call("add", {"a": 2, "b": 2}) == "4"


async def test_a_server_that_never_answers_times_out_on_connect() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        with pytest.raises(ToolError, match=r"MCP server 'mute' did not answer within 0\.5 s"):
            async with asyncio.timeout(HANG), McpSession.open(url, HEADERS, LOOPBACK,
                                                               server_label="mute", timeout=0.5):
                pass
    assert mcp_tasks() == []


async def test_loopback_is_refused_by_the_default_policy(server: McpTestServer) -> None:
    with pytest.raises(ToolError) as caught:
        async with McpSession.open(server.url, HEADERS, EgressPolicy(), server_label="local"):
            pass
    assert str(caught.value) == (
        "MCP server 'local' was not contacted: The URL's host resolves to 127.0.0.1, a loopback "
        "address, which is not allowed. Add it to [network] allow to permit it."
    )
    assert server.requests == []


@pytest.mark.parametrize("endpoint", ["url", "sse_url"])
async def test_every_connection_goes_through_the_policy(
    server: McpTestServer, endpoint: str
) -> None:
    # mcp.test exists only in the policy's resolver, so the SDK's requests can only arrive
    # if they were resolved, checked and connected by the policy's transport
    async def dns(host: str, port: int) -> list[str]:
        return {"mcp.test": ["127.0.0.1"]}[host]

    url = getattr(server, endpoint).replace("127.0.0.1", "mcp.test")
    async with McpSession.open(url, HEADERS, EgressPolicy(["mcp.test"], resolver=dns),
                               server_label="named") as session:
        assert await session.call("add", {"a": 2, "b": 3}) == "5"
    assert server.requests
    assert all(r.headers["host"] == f"mcp.test:{server.port}" for r in server.requests)
    refusing = EgressPolicy(["other.test"], resolver=dns)  # the name is not allowed here
    with pytest.raises(ToolError, match="host mcp.test resolves to 127.0.0.1, a loopback"):
        async with McpSession.open(url, HEADERS, refusing, server_label="named"):
            pass


async def test_a_link_local_url_is_refused() -> None:
    with pytest.raises(ToolError, match="169.254.169.254, a link-local address, which is not"):
        async with McpSession.open("http://169.254.169.254/mcp", HEADERS, LOOPBACK,
                                   server_label="metadata"):
            pass


async def test_a_closed_session_refuses_calls(server: McpTestServer) -> None:
    session = McpSession(server.url, HEADERS, LOOPBACK, server_label="test")
    assert await session.call("add", {"a": 1, "b": 1}) == "2"  # connects lazily
    await session.aclose()
    with pytest.raises(ToolError, match="MCP server 'test'"):
        await session.call("add", {"a": 1, "b": 1})
    assert mcp_tasks() == []


# -- secrets ------------------------------------------------------------------------------------


async def test_header_values_never_reach_messages_or_logs(
    server: McpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx2's included
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        await session.list_tools()
        assert await session.call("add", {"a": 1, "b": 2}) == "3"
    with pytest.raises(ToolError) as caught:
        async with McpSession.open(server.url, {"Authorization": "Bearer wrong-token-abcdef"},
                                   LOOPBACK, server_label="test"):
            pass
    assert "wrong-token-abcdef" not in str(caught.value)
    assert all(r.headers.get("authorization") for r in server.requests)  # they were sent
    assert TOKEN not in caplog.text and "wrong-token-abcdef" not in caplog.text


async def test_a_server_echoing_a_secret_gets_it_scrubbed(server: McpTestServer) -> None:
    async with McpSession.open(server.url, HEADERS, LOOPBACK, server_label="test") as session:
        assert await session.call("echo", {"text": f"the token is {TOKEN}"}) == (
            "the token is [redacted]")
        with pytest.raises(ToolError) as caught:
            await session.call(f"tool-{TOKEN}", {})  # the server's error names the tool
    assert "[redacted]" in str(caught.value) and TOKEN not in str(caught.value)


# -- results ------------------------------------------------------------------------------------


def test_result_text_joins_text_and_summarizes_the_rest() -> None:
    result = types.CallToolResult(content=[
        types.TextContent(type="text", text="first"),
        types.ImageContent(type="image", data="QUJD" * 100, mime_type="image/png"),
        types.TextContent(type="text", text="second"),
    ])
    text = result_text(result)
    first, image, second = text.split("\n")
    assert (first, second) == ("first", "second")
    assert '"type":"image"' in image and '"mimeType":"image/png"' in image
    assert "QUJD" not in image and "400 characters of base64 omitted" in image
    structured = types.CallToolResult(content=[], structured_content={"result": 5})
    assert result_text(structured) == '{"result": 5}'
