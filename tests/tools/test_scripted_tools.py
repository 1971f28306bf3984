"""The scripted tool sessions keep the ``ToolSession`` contract the engine relies on."""

from __future__ import annotations

from typing import Any

import pytest

from respond.protocol.tools import McpServer
from respond.tools import ToolError, ToolSpec
from respond.tools.scripted import ScriptedToolSession, scripted_connector

OBJECT = {"type": "object", "properties": {}}
ADD = ToolSpec("add", "Add", OBJECT)
FAIL = ToolSpec("fail", "Fails", OBJECT)
LISTED = ToolSpec("listed", "Listed without a result", OBJECT)


def server(label: str) -> McpServer:
    return McpServer(label=label, url=f"https://{label}.test/mcp", headers={"k": "v"},
                     allowed=None, approval="never", description=None, echo={})


async def test_calls_answer_from_the_script_and_are_recorded() -> None:
    broken = ToolError("it broke", kind="execution")
    session = ScriptedToolSession([ADD, FAIL, LISTED], {
        "add": lambda args: str(args["a"] + args["b"]), "fail": broken, "ghost": "boo"})
    assert await session.list_tools() == [ADD, FAIL, LISTED]
    assert await session.call("add", {"a": 2, "b": 3}) == "5"
    with pytest.raises(ToolError) as failed:
        await session.call("fail", {})
    assert failed.value is broken
    for name in ("listed", "ghost"):  # no result, or a result for a tool it does not offer
        with pytest.raises(ToolError, match=f"Unknown tool: {name}") as unknown:
            await session.call(name, {})
        assert unknown.value.error_object()["code"] == -32602
    assert session.calls == [("add", {"a": 2, "b": 3}), ("fail", {}), ("listed", {}),
                             ("ghost", {})]
    session.list_error = ToolError("gone")
    with pytest.raises(ToolError, match="gone"):
        await session.list_tools()
    assert session.lists == 2


async def test_the_connector_opens_the_session_of_each_label() -> None:
    a, b = ScriptedToolSession([ADD], {"add": "1"}), ScriptedToolSession([FAIL])
    sessions: dict[str, Any] = {"a": a, "b": b, "down": ToolError("MCP server 'down' is down")}
    connect = scripted_connector(sessions)
    async with connect(server("a")) as opened:
        assert opened is a and await opened.call("add", {}) == "1"
    async with connect(server("b")) as opened:
        assert opened is b
    with pytest.raises(ToolError, match="is down"):
        async with connect(server("down")):
            pass
    with pytest.raises(ToolError, match="'elsewhere' could not be reached"):
        async with connect(server("elsewhere")):
            pass
    assert [s.label for s in a.opened] == ["a"] and a.closed == 1 and b.closed == 1

    one = scripted_connector(a)  # one session for every server
    async with one(server("x")) as opened, one(server("y")) as again:
        assert opened is again is a
    assert [s.label for s in a.opened] == ["a", "x", "y"] and a.closed == 3
