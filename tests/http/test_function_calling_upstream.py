"""Function calling and structured outputs through an upstream Chat Completions server, end
to end: respond in front of the project's ``UpstreamServer`` (real HTTP both ways), driven
with the official SDK. What the upstream is sent is checked on its recorded requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import RunningServer, serve
from wire import check_response, check_stream

from respond.testing.upstream import UpstreamServer

UP = "up"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
TIME = {"type": "function", "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
        "strict": False}
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris"}},
         {"name": "get_time", "arguments": {"zone": "Europe/Rome"}},
         {"name": "get_weather", "arguments": '{"city": "Lima"}'}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tokens=4) as server:
        yield server


@pytest.fixture(scope="module")
def fronted(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RunningServer]:
    config = {"models": {UP: {"backend": "openai", "base_url": upstream.base_url, "timeout": 10}}}
    with serve(config, tmp_path_factory.mktemp("tools-upstream")) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(upstream: UpstreamServer) -> None:
    upstream.reset()


@pytest.fixture
def client(fronted: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=fronted.base_url, api_key="sk-unused", max_retries=0,
                         timeout=30)


def sent(upstream: UpstreamServer) -> dict[str, Any]:
    [request] = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    return request.body  # type: ignore[no-any-return]


def upstream_ids(call_ids: list[str]) -> None:
    """The calls kept the ids the upstream gave them: ``call_<completion>_<index>``."""
    completion = call_ids[0].split("_")[1]
    assert call_ids == [f"call_{completion}_{i}" for i in range(len(call_ids))]


def test_tools_and_tool_choice_reach_the_upstream_as_chat_completions(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=[CALLS[0]], tokens=0)
    response = client.responses.create(model=UP, input="Weather in Paris?", tools=[WEATHER, TIME],
                                       tool_choice={"type": "function", "name": "get_weather"},
                                       parallel_tool_calls=False)
    body = sent(upstream)
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city.",
            "parameters": WEATHER["parameters"], "strict": True}},
        {"type": "function", "function": {"name": "get_time", "parameters": TIME["parameters"]}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert response.parallel_tool_calls is False
    [call] = response.output
    assert call.type == "function_call" and call.arguments == '{"city":"Paris"}'

    upstream.reset()
    upstream.configure(tool_calls=[CALLS[0]], tokens=0)
    client.responses.create(model=UP, input="Weather?", tools=[WEATHER], tool_choice="required")
    body = sent(upstream)
    assert body["tool_choice"] == "required" and "parallel_tool_calls" not in body

    upstream.reset()
    client.responses.create(model=UP, input="Weather?", tools=[WEATHER], tool_choice="none")
    body = sent(upstream)
    assert "tools" not in body and "tool_choice" not in body


def test_several_streamed_calls_become_several_function_call_items(
        client: openai.OpenAI, upstream: UpstreamServer, fronted: RunningServer) -> None:
    upstream.configure(tool_calls=CALLS, tokens=0)
    request = {"model": UP, "input": "Paris, Rome and Lima?", "tools": [WEATHER, TIME],
               "stream": True}
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", fronted.base_url + "/responses", json=request) as reply:
        assert reply.status_code == 200
        events = [json.loads(line[6:]) for line in reply.iter_lines()
                  if line.startswith("data: ")]
    check_stream(events)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    items = final["output"]
    assert [i["type"] for i in items] == ["function_call"] * 3
    assert [i["name"] for i in items] == ["get_weather", "get_time", "get_weather"]
    assert [json.loads(i["arguments"]) for i in items] == [
        {"city": "Paris"}, {"zone": "Europe/Rome"}, {"city": "Lima"}]
    upstream_ids([i["call_id"] for i in items])
    assert len({i["id"] for i in items}) == 3
    # each call is its own added → deltas → done run, at its own output_index
    for index, item in enumerate(items):
        mine = [e for e in events if e.get("output_index") == index]
        assert mine[0]["type"] == "response.output_item.added"
        assert mine[-1]["type"] == "response.output_item.done" and mine[-1]["item"] == item
        deltas = [e["delta"] for e in mine if e["type"] == "response.function_call_arguments.delta"]
        assert len(deltas) > 1 and "".join(deltas) == item["arguments"]

    upstream.reset()
    upstream.configure(tool_calls=CALLS, tokens=0)
    response = client.responses.create(model=UP, input="Paris, Rome and Lima?",
                                       tools=[WEATHER, TIME])
    check_response(response.model_dump(mode="json"))
    assert [i.name for i in response.output] == ["get_weather", "get_time", "get_weather"]
    ids = [i.call_id for i in response.output]
    upstream_ids(ids)

    # the outputs go back by call id; the upstream sees the calls and the results in order
    upstream.reset()
    upstream.configure(tool_calls=None, reply="Sunny, noon, rainy.")
    outputs = [{"type": "function_call_output", "call_id": i.call_id, "output": str(n)}
               for n, i in enumerate(response.output)]
    answer = client.responses.create(model=UP, previous_response_id=response.id, input=outputs,
                                     tools=[WEATHER, TIME])
    assert answer.output_text == "Sunny, noon, rainy."
    messages = sent(upstream)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ids
    assert [c["function"]["arguments"] for c in messages[1]["tool_calls"]] == [
        '{"city":"Paris"}', '{"zone":"Europe/Rome"}', '{"city": "Lima"}']
    assert [m["tool_call_id"] for m in messages[2:]] == ids
    assert [m["content"] for m in messages[2:]] == ["0", "1", "2"]


def test_parallel_tool_calls_false_keeps_only_the_first_call(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(tool_calls=CALLS, tokens=0)
    response = client.responses.create(model=UP, input="Paris, Rome and Lima?",
                                       tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert [i.name for i in response.output] == ["get_weather"]


def test_response_format_reaches_the_upstream(client: openai.OpenAI,
                                              upstream: UpstreamServer) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    upstream.configure(reply='{"answer": "42"}')
    response = client.responses.create(
        model=UP, input="The answer?",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema,
                         "strict": True, "description": "One answer."}})
    assert sent(upstream)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True,
                        "description": "One answer."}}
    assert json.loads(response.output_text) == {"answer": "42"}
    assert response.text.format.type == "json_schema" and response.text.format.name == "answer"

    upstream.reset()
    client.responses.create(model=UP, input="JSON please",
                            text={"format": {"type": "json_object"}})
    assert sent(upstream)["response_format"] == {"type": "json_object"}

    upstream.reset()
    client.responses.create(model=UP, input="plain", text={"format": {"type": "text"}})
    assert "response_format" not in sent(upstream)


# -- references inside schemas ----------------------------------------------------------------

# local references of every kind that resolve: nested $defs, the escapes ~1 ("/") and ~0 ("~")
# of JSON pointers, draft-7 definitions, recursion through a definition and through the root
RESOLVING = {
    "type": "object",
    "properties": {
        "person": {"$ref": "#/$defs/person"},
        "address": {"$ref": "#/$defs/places/$defs/address"},
        "ratio": {"$ref": "#/$defs/a~1b"},
        "flag": {"$ref": "#/definitions/c~0d"},
        "tree": {"$ref": "#/$defs/node"},
        "again": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    },
    "$defs": {
        "person": {"type": "object", "properties": {"name": {"type": "string"}}},
        "places": {"$defs": {"address": {"type": "string"}}},
        "a/b": {"type": "number"},
        "node": {"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}},
    },
    "definitions": {"c~d": {"type": "boolean"}},
}


def test_schemas_whose_references_resolve_reach_the_upstream_unchanged(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    arguments = {"person": {"name": "Ada"}, "tree": {"children": [{"children": []}]}}
    upstream.configure(tool_calls=[{"name": "save", "arguments": arguments}], tokens=0)
    response = client.responses.create(
        model=UP, input="Save Ada.",
        tools=[{"type": "function", "name": "save", "parameters": RESOLVING, "strict": False}])
    assert sent(upstream)["tools"][0]["function"]["parameters"] == RESOLVING
    [call] = response.output
    assert call.type == "function_call" and json.loads(call.arguments) == arguments

    upstream.reset()
    upstream.configure(reply='{"flag": true}')
    response = client.responses.create(
        model=UP, input="A flag.",
        text={"format": {"type": "json_schema", "name": "refs", "schema": RESOLVING}})
    assert sent(upstream)["response_format"]["json_schema"]["schema"] == RESOLVING
    assert json.loads(response.output_text) == {"flag": True}


def with_ref(ref: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"city": {"type": "string"},
                                             "person": {"$ref": ref}},
            "$defs": {"person": {"type": "object"}, "a/b": {"type": "number"}},
            "definitions": {"c~d": {"type": "boolean"}}}


@pytest.mark.parametrize(("schema", "where", "ref"), [
    pytest.param(with_ref("#/$defs/Person"), "properties/person", "#/$defs/Person",
                 id="no-such-def"),
    pytest.param(with_ref("#/definitions/person"), "properties/person", "#/definitions/person",
                 id="no-such-definition"),
    pytest.param(with_ref("#/$defs/a/b"), "properties/person", "#/$defs/a/b",
                 id="slash-not-escaped"),
    pytest.param(with_ref("#/definitions/c~1d"), "properties/person", "#/definitions/c~1d",
                 id="wrong-escape"),
    pytest.param(with_ref("#person"), "properties/person", "#person", id="no-such-anchor"),
    pytest.param(with_ref("#/properties/city/type"), "properties/person",
                 "#/properties/city/type", id="not-a-schema"),
    pytest.param({"type": "array", "items": {"$ref": "#/$defs/item"},
                  "$defs": {"item": {"anyOf": [{"$ref": "#/$defs/missing"}, {"type": "null"}]}}},
                 "$defs/item/anyOf/0", "#/$defs/missing", id="nested"),
    pytest.param({"$ref": "#/$defs/root"}, "", "#/$defs/root", id="at-the-root"),
    pytest.param(with_ref("https://example.com/schemas/person.json"), "properties/person",
                 "https://example.com/schemas/person.json", id="remote"),
    pytest.param(with_ref("person.json#/$defs/person"), "properties/person",
                 "person.json#/$defs/person", id="other-document"),
])
def test_references_that_do_not_resolve_are_400s_naming_the_schema(
        client: openai.OpenAI, upstream: UpstreamServer, schema: dict[str, Any], where: str,
        ref: str) -> None:
    refused = [
        (lambda: client.responses.create(
            model=UP, input="hi",
            tools=[WEATHER, {"type": "function", "name": "f", "parameters": schema}]),
         "tools[1].parameters"),
        (lambda: client.responses.create(
            model=UP, input="hi",
            text={"format": {"type": "json_schema", "name": "x", "schema": schema}}),
         "text.format.schema"),
    ]
    for create, param in refused:
        with pytest.raises(openai.BadRequestError) as caught:
            create()
        error = caught.value.response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param and error["code"] == "invalid_value"
        assert error["message"].startswith(f"Invalid schema for '{param}'")
        assert f"reference '{ref}'" in error["message"]
        assert (f" at '{where}':" in error["message"]) == bool(where)
        if not ref.startswith("#"):
            assert "never fetched" in error["message"]
    assert upstream.requests == []  # refused before anything was sent
