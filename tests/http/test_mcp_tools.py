"""Remote MCP tools end to end: the official SDK → respond → a real MCP server on loopback that
checks its bearer token. The model is a real upstream over HTTP scripted to call tools, so
every assertion is about respond's behaviour, not a small model's whims.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e import UP, client_for, sse_events, upstream_config
from servers import RunningServer, free_port, serve
from wire import check_response, check_stream

from respond.testing.mcp_server import McpTestServer
from respond.testing.upstream import UpstreamServer

TOKEN = "tok-3f9a61c7d2"


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpTestServer]:
    with McpTestServer(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tokens=4) as server:
        yield server


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp")


@pytest.fixture(scope="module")
def server(upstream: UpstreamServer, data: Path) -> Iterator[RunningServer]:
    config = upstream_config(upstream)
    config["network"] = {"allow": ["127.0.0.1/32"]}
    with serve(config, data) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(upstream: UpstreamServer, mcp: McpTestServer) -> Iterator[None]:
    upstream.reset()
    mcp.reset()
    yield


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return client_for(server)


def mcp_tool(mcp: McpTestServer, approval: Any = "never", **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": mcp.url,
            "headers": {"Authorization": f"Bearer {TOKEN}"}, "require_approval": approval,
            **extra}


def raw(client: openai.OpenAI, response_id: str) -> dict[str, Any]:
    return httpx.get(f"{client.base_url}responses/{response_id}").json()


def test_never_approval_runs_the_call_and_answers(client: openai.OpenAI, mcp: McpTestServer,
                                                  upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}], tokens=3,
                       tool_calls_once=True)
    response = client.responses.create(
        model=UP, input="What is 2 + 3?", tools=[mcp_tool(mcp)],
        tool_choice={"type": "mcp", "server_label": "calc", "name": "add"})
    kinds = [item.type for item in response.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, _ = response.output
    assert {t.name for t in listing.tools} >= {"add", "echo", "get_weather"}
    assert call.name == "add" and call.output == "5" and call.error is None
    assert [(c.name, c.arguments) for c in mcp.calls] == [("add", {"a": 2, "b": 3})]
    # the server saw its token on every request
    assert mcp.requests and all(r.headers.get("authorization") == f"Bearer {TOKEN}"
                                for r in mcp.requests)
    # the forced choice reached the model as a forced function
    assert upstream.requests[0].body["tool_choice"] == {"type": "function",
                                                        "function": {"name": "add"}}
    # and the tool result reached the model's second turn
    second = upstream.requests[1].body["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "5"
    check_response(raw(client, response.id))


def test_always_approval_waits_then_runs_exactly_once(client: openai.OpenAI, mcp: McpTestServer,
                                                      upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 1, "b": 2}}], tokens=3,
                       tool_calls_once=True)
    first = client.responses.create(model=UP, input="1+2?", tools=[mcp_tool(mcp, "always")])
    assert [i.type for i in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert request.name == "add" and request.arguments == '{"a":1,"b":2}'
    assert mcp.calls == [], "nothing may be called before the approval"
    lists_before = mcp.list_calls

    second = client.responses.create(
        model=UP, previous_response_id=first.id, tools=[mcp_tool(mcp, "always")],
        input=[{"type": "mcp_approval_response", "approve": True,
                "approval_request_id": request.id}])
    assert [i.type for i in second.output] == ["mcp_call", "message"]
    assert second.output[0].approval_request_id == request.id
    assert second.output[0].output == "3"
    assert len(mcp.calls) == 1
    # turn 2 reuses the listing in its context: no second mcp_list_tools item. (The MCP SDK
    # itself may ask tools/list once more to validate a structured result: that is the
    # client library checking output schemas, not a listing the model sees.)
    assert mcp.list_calls <= lists_before + 1

    third = client.responses.create(model=UP, previous_response_id=second.id, input="thanks",
                                    tools=[mcp_tool(mcp, "always")])
    assert third.status == "completed"
    assert len(mcp.calls) == 1, "an approved call runs once"


def test_denied_call_is_never_made(client: openai.OpenAI, mcp: McpTestServer,
                                   upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "echo", "arguments": {"text": "hi"}}], tokens=3,
                       tool_calls_once=True)
    first = client.responses.create(model=UP, input="echo", tools=[mcp_tool(mcp, "always")])
    request = first.output[-1]
    second = client.responses.create(
        model=UP, previous_response_id=first.id, tools=[mcp_tool(mcp, "always")],
        input=[{"type": "mcp_approval_response", "approve": False,
                "approval_request_id": request.id}])
    assert [i.type for i in second.output] == ["message"]
    assert mcp.calls == []


def test_approval_in_a_stateless_history(client: openai.OpenAI, mcp: McpTestServer,
                                         upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 5, "b": 5}}], tokens=3,
                       tool_calls_once=True)
    first = client.responses.create(model=UP, input="5+5?", store=False,
                                    tools=[mcp_tool(mcp, "always")])
    history: list[Any] = [{"role": "user", "content": "5+5?"}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "mcp_approval_response", "approve": True,
                    "approval_request_id": first.output[-1].id})
    second = client.responses.create(model=UP, input=history, store=False,
                                     tools=[mcp_tool(mcp, "always")])
    assert [i.type for i in second.output] == ["mcp_call", "message"]
    assert second.output[0].output == "10"
    assert len(mcp.calls) == 1


def test_allowed_tools_and_approval_filters(client: openai.OpenAI, mcp: McpTestServer,
                                            upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 1, "b": 1}}], tokens=3,
                       tool_calls_once=True)
    response = client.responses.create(
        model=UP, input="x", tools=[mcp_tool(
            mcp, {"never": {"tool_names": ["add"]}}, allowed_tools=["add", "echo"])])
    offered = sorted(t["function"]["name"] for t in upstream.requests[0].body["tools"])
    assert offered == ["add", "echo"]
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]


def test_streamed_mcp_events(server: RunningServer, mcp: McpTestServer,
                             upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 7, "b": 8}}], tokens=3,
                       tool_calls_once=True)
    got = httpx.post(f"{server.base_url}/responses", timeout=30, json={
        "model": UP, "input": "7+8", "stream": True, "tools": [mcp_tool(mcp)]})
    events = sse_events(got.text)
    check_stream(events)
    kinds = [e["type"] for e in events]
    for expected in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                     "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
                     "response.mcp_call_arguments.done", "response.mcp_call.completed"):
        assert expected in kinds
    arguments = "".join(e["delta"] for e in events
                        if e["type"] == "response.mcp_call_arguments.delta")
    assert arguments == '{"a":7,"b":8}'
    assert events[-1]["response"]["output"][1]["output"] == "15"


def test_secrets_never_leave(client: openai.OpenAI, mcp: McpTestServer,
                             upstream: UpstreamServer, server: RunningServer, data: Path) -> None:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 1, "b": 1}}], tokens=3,
                       tool_calls_once=True)
    response = client.responses.create(model=UP, input="x", tools=[mcp_tool(mcp)])
    background = client.responses.create(model=UP, input="y", tools=[mcp_tool(mcp)],
                                         background=True)
    for _ in range(200):
        if client.responses.retrieve(background.id).status not in ("queued", "in_progress"):
            break
    body = httpx.get(f"{server.base_url}/responses/{response.id}").text
    items = httpx.get(f"{server.base_url}/responses/{response.id}/input_items").text
    assert TOKEN not in body and TOKEN not in items
    assert client.responses.retrieve(response.id).tools[0].headers is None
    server.call(server.service.flush())
    for path in data.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"the token is in {path.name}"


def test_dead_server_is_an_item_error_not_a_500(client: openai.OpenAI) -> None:
    dead = {"type": "mcp", "server_label": "dead", "require_approval": "never",
            "server_url": f"http://127.0.0.1:{free_port()}/mcp"}
    response = client.responses.create(model=UP, input="x", tools=[dead])
    assert response.status == "completed"
    listing = response.output[0]
    assert listing.type == "mcp_list_tools" and listing.error


def test_link_local_url_is_refused(client: openai.OpenAI) -> None:
    metadata = {"type": "mcp", "server_label": "meta", "require_approval": "never",
                "server_url": "http://169.254.169.254/mcp"}
    response = client.responses.create(model=UP, input="x", tools=[metadata])
    listing = response.output[0]
    assert listing.type == "mcp_list_tools" and listing.error
    assert "169.254.169.254" in listing.error or "link-local" in listing.error


def test_loopback_is_refused_unless_allowed(upstream: UpstreamServer, mcp: McpTestServer,
                                            tmp_path: Path) -> None:
    with serve(upstream_config(upstream), tmp_path) as closed:
        response = client_for(closed).responses.create(model=UP, input="x",
                                                       tools=[mcp_tool(mcp)])
    assert response.output[0].error
    assert mcp.requests == [], "a refused server must not be contacted at all"


def test_bad_mcp_tool_definitions_are_400s(client: openai.OpenAI, mcp: McpTestServer) -> None:
    for tool, param in [
        ({"type": "mcp", "server_url": mcp.url}, "tools[0].server_label"),
        ({"type": "mcp", "server_label": "x"}, "tools[0].server_url"),
        ({"type": "mcp", "server_label": "x", "server_url": mcp.url, "require_approval": "x"},
         "tools[0].require_approval"),
        ({"type": "mcp", "server_label": "x", "server_url": mcp.url, "colour": 1},
         "tools[0].colour"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=UP, input="x", tools=[tool])
        assert caught.value.body["param"] == param  # type: ignore[index]


def test_a_forced_mcp_choice_must_name_an_mcp_tool(client: openai.OpenAI,
                                                   mcp: McpTestServer) -> None:
    for label in ["other", ["calc"], 3]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=UP, input="x", tools=[mcp_tool(mcp)],
                                    tool_choice={"type": "mcp", "server_label": label})
        assert caught.value.body["param"] == "tool_choice.server_label"  # type: ignore[index]


def test_a_failing_tool_is_an_error_on_its_call(client: openai.OpenAI, mcp: McpTestServer,
                                                upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[{"name": "fail", "arguments": {}}], tokens=3,
                       tool_calls_once=True)
    response = client.responses.create(model=UP, input="x", tools=[mcp_tool(mcp)])
    assert response.status == "completed"
    call = response.output[1]
    assert call.type == "mcp_call" and call.output is None
    assert call.error is not None and call.error.type == "mcp_tool_execution_error"
    assert response.output[2].type == "message", "the model goes on after a failed call"
    check_response(raw(client, response.id))


def test_forced_add_on_the_embedded_model(mcp: McpTestServer, tmp_path: Path) -> None:
    """The zero-config model, forced to call ``add``: constrained decoding makes the call
    valid even for a 135M model, respond runs it on the real server, the model answers."""
    with serve({"network": {"allow": ["127.0.0.1/32"]}}, tmp_path) as embedded:
        client = client_for(embedded, timeout=120)
        response = client.responses.create(
            model="smollm2-135m-instruct", input="Add 2 and 3.", max_output_tokens=32,
            tools=[mcp_tool(mcp)], temperature=0,
            # one call: after it, the model answers (a 135M model offered the tools again
            # in auto mode may call another one, which is not what this test is about)
            max_tool_calls=1,
            tool_choice={"type": "mcp", "server_label": "calc", "name": "add"})
    kinds = [item.type for item in response.output]
    assert kinds[:2] == ["mcp_list_tools", "mcp_call"]
    call = response.output[1]
    assert call.name == "add" and call.error is None, (call.error, call.arguments)
    assert [c.name for c in mcp.calls] == ["add"]
    arguments = mcp.calls[0].arguments
    assert isinstance(arguments["a"], int) and isinstance(arguments["b"], int)
    assert call.output == str(arguments["a"] + arguments["b"])
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in mcp.requests)
