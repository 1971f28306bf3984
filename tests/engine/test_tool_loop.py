"""The server-side tool loop, with the scripted backend and a scripted MCP session.

These pin the engine's behaviour (item order, events, approvals, the loop's end); the real
MCP server over HTTP is exercised end to end in tests/http.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from wire import check_response, check_stream

from respond.backends.scripted import ScriptedBackend
from respond.domain import Finish, TextDelta, ToolCallDelta, Usage
from respond.engine.media import MediaResolver
from respond.engine.service import ResponsesService
from respond.protocol.request import CreateResponse
from respond.store.sqlite import SQLiteStore
from respond.tools import ToolError, ToolSpec
from respond.tools.scripted import ScriptedToolSession, scripted_connector
from respond.web.static import StaticFetcher

ADD = ToolSpec("add", "Add two integers", {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"]}, {"readOnlyHint": True})
ECHO = ToolSpec("echo", "Echo text", {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})



def mcp_tool(approval: Any = "never", **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": "https://calc.example/mcp",
            "headers": {"Authorization": "Bearer s3cret"}, "require_approval": approval,
            **extra}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = await SQLiteStore.open(f"sqlite:///{tmp_path / 'r.db'}")
    calc = ScriptedToolSession([ADD, ECHO], {
        "add": lambda args: str(args["a"] + args["b"]),
        "echo": ToolError("echo is broken", kind="execution"),
    })
    yield {"store": store, "calc": calc}
    await store.aclose()


def service(env: dict[str, Any], turns: list[Any]) -> tuple[ResponsesService, ScriptedBackend]:
    backend = ScriptedBackend(turns)
    svc = ResponsesService(env["store"], {"m": backend}, retention_seconds=3600,
                           media=MediaResolver(env["store"], StaticFetcher()),
                           connector=scripted_connector(env["calc"]))
    return svc, backend


def call(name: str, args: dict[str, Any], index: int = 0) -> list[Any]:
    text = orjson.dumps(args).decode()
    return [ToolCallDelta(index, "call_x", name, text[:5]), ToolCallDelta(index, None, None,
                                                                             text[5:])]


async def run(svc: ResponsesService, **body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = await svc.create(CreateResponse.model_validate({"model": "m", **body}))
    events = [e async for e in run.events()]
    return run.response, events


async def test_calls_run_server_side_until_the_model_answers(env: dict[str, Any]) -> None:
    svc, backend = service(env, [
        [*call("add", {"a": 2, "b": 3}), Finish("tool_calls", Usage(10, 5))],
        [TextDelta("The sum is 5."), Finish("stop", Usage(20, 4))],
    ])
    response, events = await run(svc, input="add 2 and 3", tools=[mcp_tool()])
    check_stream(events)
    check_response(response)
    assert [i["type"] for i in response["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    listing, mcp_call, _ = response["output"]
    assert [t["name"] for t in listing["tools"]] == ["add", "echo"]
    assert mcp_call["output"] == "5" and mcp_call["error"] is None
    assert mcp_call["arguments"] == '{"a":2,"b":3}'
    assert env["calc"].calls == [("add", {"a": 2, "b": 3})]
    assert response["usage"]["input_tokens"] == 30 and response["usage"]["output_tokens"] == 9
    kinds = [e["type"] for e in events]
    assert kinds[2:6] == ["response.output_item.added", "response.mcp_list_tools.in_progress",
                          "response.mcp_list_tools.completed", "response.output_item.done"]
    start = kinds.index("response.mcp_call.in_progress")
    assert kinds[start - 1:start + 6] == [
        "response.output_item.added", "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta", "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done", "response.mcp_call.completed",
        "response.output_item.done"]
    # the second model turn saw the call and its result
    second = backend.requests[1].messages
    assert second[-2]["tool_calls"][0]["function"]["name"] == "add"
    assert second[-1] == {"role": "tool", "tool_call_id": mcp_call["id"], "content": "5"}
    # secrets never reach the response
    assert "s3cret" not in orjson.dumps(response).decode()
    assert response["tools"][0]["headers"] is None
    assert [server.headers for server in env["calc"].opened] == [
        {"Authorization": "Bearer s3cret"}]
    assert env["calc"].closed == 1


async def test_approval_required_then_approved_runs_once(env: dict[str, Any]) -> None:
    svc, _backend = service(env, [
        [*call("add", {"a": 1, "b": 1}), Finish("tool_calls", Usage(5, 5))],
        [TextDelta("It is 2."), Finish("stop", Usage(5, 3))],
    ])
    first, events = await run(svc, input="add", tools=[mcp_tool("always")])
    check_stream(events)
    assert [i["type"] for i in first["output"]] == ["mcp_list_tools", "mcp_approval_request"]
    assert env["calc"].calls == []
    request = first["output"][1]
    assert request["name"] == "add" and request["arguments"] == '{"a":1,"b":1}'

    second, events = await run(svc, previous_response_id=first["id"], tools=[mcp_tool("always")],
                               input=[{"type": "mcp_approval_response", "approve": True,
                                       "approval_request_id": request["id"]}])
    check_stream(events)
    assert [i["type"] for i in second["output"]] == ["mcp_call", "message"]
    assert second["output"][0]["approval_request_id"] == request["id"]
    assert second["output"][0]["output"] == "2"
    assert env["calc"].calls == [("add", {"a": 1, "b": 1})]
    assert env["calc"].lists == 1, "turn 2 must reuse the listing in context"

    # a later turn does not run the approved call again
    await run(svc, previous_response_id=second["id"], tools=[mcp_tool("always")], input="thanks")
    assert env["calc"].calls == [("add", {"a": 1, "b": 1})]


async def test_denied_call_is_never_made(env: dict[str, Any]) -> None:
    svc, backend = service(env, [
        [*call("add", {"a": 1, "b": 1}), Finish("tool_calls", Usage(5, 5))],
        [TextDelta("Understood."), Finish("stop", Usage(5, 3))],
    ])
    first, _ = await run(svc, input="add", tools=[mcp_tool("always")])
    request = first["output"][1]
    second, _ = await run(svc, previous_response_id=first["id"], tools=[mcp_tool("always")],
                          input=[{"type": "mcp_approval_response", "approve": False,
                                  "approval_request_id": request["id"], "reason": "no"}])
    assert env["calc"].calls == []
    assert [i["type"] for i in second["output"]] == ["message"]
    told = backend.requests[-1].messages[-2:]
    assert "declined" in told[-1]["content"] or "declined" in str(told)


async def test_listing_failure_is_an_item_error_not_a_failure(env: dict[str, Any]) -> None:
    env["calc"].list_error = ToolError("MCP server 'calc' is unreachable")
    svc, _ = service(env, [[TextDelta("No tools today."), Finish("stop", Usage(3, 3))]])
    response, events = await run(svc, input="add", tools=[mcp_tool()])
    check_stream(events)
    assert response["status"] == "completed"
    listing = response["output"][0]
    assert listing["type"] == "mcp_list_tools" and "unreachable" in listing["error"]
    assert "response.mcp_list_tools.failed" in [e["type"] for e in events]


async def test_failing_call_reports_the_error_and_the_model_goes_on(env: dict[str, Any]) -> None:
    svc, _ = service(env, [
        [*call("echo", {"text": "hi"}), Finish("tool_calls", Usage(5, 5))],
        [TextDelta("The tool failed."), Finish("stop", Usage(5, 3))],
    ])
    response, events = await run(svc, input="echo hi", tools=[mcp_tool()])
    check_stream(events)
    mcp_call = response["output"][1]
    assert mcp_call["status"] == "failed" and mcp_call["output"] is None
    assert mcp_call["error"] == {"type": "mcp_tool_execution_error",
                                 "content": [{"type": "text", "text": "echo is broken"}]}
    assert "response.mcp_call.failed" in [e["type"] for e in events]
    assert response["output"][2]["type"] == "message"


async def test_allowed_tools_filters_what_the_model_is_offered(env: dict[str, Any]) -> None:
    svc, backend = service(env, [[TextDelta("ok"), Finish("stop", Usage(3, 1))]])
    await run(svc, input="x", tools=[mcp_tool(allowed_tools=["add"])])
    offered = [t["function"]["name"] for t in backend.requests[0].tools or []]
    assert offered == ["add"]


async def test_forced_mcp_tool_choice(env: dict[str, Any]) -> None:
    svc, backend = service(env, [
        [*call("add", {"a": 4, "b": 4}), Finish("tool_calls", Usage(5, 5))],
        [TextDelta("8"), Finish("stop", Usage(5, 1))],
    ])
    response, _ = await run(svc, input="x", tools=[mcp_tool()],
                            tool_choice={"type": "mcp", "server_label": "calc", "name": "add"})
    assert backend.requests[0].tool_choice == {"type": "function", "function": {"name": "add"}}
    assert backend.requests[1].tool_choice == "auto", "a forced choice holds for one turn only"
    assert response["output"][1]["output"] == "8"


async def test_the_loop_is_bounded(env: dict[str, Any]) -> None:
    svc, backend = service(env, [[*call("add", {"a": 1, "b": 1}), Finish("tool_calls")]])
    _response, events = await run(svc, input="x", tools=[mcp_tool()], max_tool_calls=3)
    check_stream(events)
    assert len(env["calc"].calls) <= 4
    # once the budget is spent the model is asked without tools
    assert backend.requests[-1].tools is None
