"""A background response runs the same lifecycle as a foreground one: approvals, media and
server tools behave identically whether a worker or the request itself runs the response.

Real parts throughout: the official SDK, a respond server on loopback, a real MCP server that
checks its bearer token, and the project's OpenAI-compatible upstream over HTTP, scripted to
call tools so every assertion is about respond rather than a model's whims.
"""

# ruff: noqa: F811  (pytest fixtures imported from e2e are parameters here)

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from documents import StaticServer, data_url, make_image, make_pdf
from e2e import UP, client_for, finished, upstream, upstream_config  # noqa: F401
from servers import RunningServer, serve
from wire import check_response

from respond.testing.mcp_server import McpTestServer
from respond.testing.upstream import UpstreamServer

TOKEN = "tok-71c0e2"
PNG = make_image("PNG", (6, 4))
JPEG = make_image("JPEG", (9, 7))
PDF = make_pdf(["The code word is MARIGOLD."])


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpTestServer]:
    with McpTestServer(token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def static() -> Iterator[StaticServer]:
    with StaticServer() as running:
        running.routes["/photo.jpg"] = ("image/jpeg", JPEG)
        yield running


@pytest.fixture(scope="module")
def server(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    config = upstream_config(upstream)
    config["models"]["vis"] = {"backend": "openai", "base_url": upstream.base_url,
                               "vision": True, "timeout": 10}
    config["network"] = {"allow": ["127.0.0.1/32"]}
    with serve(config, tmp_path_factory.mktemp("lifecycle")) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(upstream: UpstreamServer, mcp: McpTestServer) -> Iterator[None]:
    upstream.reset()
    mcp.reset()
    yield


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return client_for(server)


def calc(mcp: McpTestServer) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": mcp.url,
            "headers": {"Authorization": f"Bearer {TOKEN}"}, "require_approval": "always"}


def ask_approval(client: openai.OpenAI, mcp: McpTestServer, upstream: UpstreamServer) -> Any:
    upstream.configure(tool_calls=[{"name": "add", "arguments": {"a": 20, "b": 22}}], tokens=3,
                       tool_calls_once=True)
    first = client.responses.create(model=UP, input="20 + 22?", tools=[calc(mcp)])
    assert [i.type for i in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    assert mcp.calls == []
    return first


def test_an_approval_answered_in_the_background_runs_the_call_once(
        client: openai.OpenAI, mcp: McpTestServer, upstream: UpstreamServer) -> None:
    first = ask_approval(client, mcp, upstream)
    request = first.output[-1]
    job = client.responses.create(
        model=UP, previous_response_id=first.id, tools=[calc(mcp)], background=True,
        input=[{"type": "mcp_approval_response", "approve": True,
                "approval_request_id": request.id}])
    assert job.status == "queued"
    final = finished(client, job.id)
    assert final.status == "completed", final.error
    check_response(final.model_dump(mode="json"))
    assert [i.type for i in final.output] == ["mcp_call", "message"]
    call = final.output[0]
    assert call.approval_request_id == request.id and call.output == "42"
    assert len(mcp.calls) == 1
    # the model saw the call's result: it is in the messages of the turn after the call
    last = upstream.requests[-1].body["messages"]
    assert any("42" in str(m.get("content")) for m in last), last

    after = client.responses.create(model=UP, previous_response_id=final.id, input="thanks",
                                    tools=[calc(mcp)], background=True)
    assert finished(client, after.id).status == "completed"
    assert len(mcp.calls) == 1, "an approved call runs exactly once"


def test_a_denial_in_the_background_runs_nothing(
        client: openai.OpenAI, mcp: McpTestServer, upstream: UpstreamServer) -> None:
    first = ask_approval(client, mcp, upstream)
    job = client.responses.create(
        model=UP, previous_response_id=first.id, tools=[calc(mcp)], background=True,
        input=[{"type": "mcp_approval_response", "approve": False,
                "approval_request_id": first.output[-1].id}])
    final = finished(client, job.id)
    assert final.status == "completed", final.error
    assert [i.type for i in final.output] == ["message"]
    assert mcp.calls == []


def test_media_reach_the_model_the_same_in_the_background(
        client: openai.OpenAI, upstream: UpstreamServer, static: StaticServer) -> None:
    pdf = client.files.create(file=("code.pdf", PDF), purpose="user_data")
    image = client.files.create(file=("photo.jpg", JPEG), purpose="vision")
    content = [
        {"type": "input_text", "text": "Describe these."},
        {"type": "input_image", "image_url": data_url("image/png", PNG), "detail": "low"},
        {"type": "input_image", "file_id": image.id},
        {"type": "input_image", "image_url": static.url("/photo.jpg")},
        {"type": "input_file", "file_id": pdf.id},
    ]
    sent: list[Any] = []
    for background in (False, True):
        response = client.responses.create(model="vis", background=background,
                                           input=[{"role": "user", "content": content}])
        assert finished(client, response.id).status == "completed"
        sent.append(upstream.requests[-1].body["messages"])
    foreground, in_background = sent
    assert in_background == foreground
    parts = next(m["content"] for m in foreground if m["role"] == "user")
    assert [p["type"] for p in parts].count("image_url") == 3
    assert any("MARIGOLD" in p.get("text", "") for p in parts)
