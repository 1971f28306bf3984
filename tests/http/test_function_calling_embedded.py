"""Function calling and structured outputs on the embedded model, end to end with the SDK.

The bundled SmolLM2-135M has no tool support of its own: respond describes the tools in its
prompt and constrains decoding with a grammar, so every call must name an offered function
and carry arguments that validate against its schema; call markup never reaches
``output_text``. Greedy decoding (``temperature=0``) keeps the model's choices repeatable;
independent requests run side by side in the server's parallel slots.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import jsonschema
import openai
import pytest
from conftest import RunningServer
from openai.types.responses import Response
from pydantic import BaseModel
from wire import check_response, check_stream

MODEL = "smollm2-135m-instruct"
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 160}
T = TypeVar("T")
R = TypeVar("R")


def tool(name: str, description: str, parameters: dict[str, Any],
         strict: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "name": name, "description": description,
                           "parameters": parameters}
    if strict is not None:
        out["strict"] = strict
    return out


def closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False}


WEATHER = tool("get_weather", "Get the current weather for a city.", closed({
    "city": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
}))
TABLE = tool("book_table", "Book a table at a restaurant.", closed({
    "restaurant": {"type": "string"},
    "guests": {"type": "integer", "minimum": 1, "maximum": 12},
    "outdoor": {"type": "boolean"},
}))
EVENT = tool("create_event", "Create a calendar event.", closed({
    "title": {"type": "string"},
    "when": closed({"day": {"enum": ["monday", "tuesday", "wednesday", "thursday", "friday",
                                     "saturday", "sunday"]},
                    "hour": {"type": "integer", "minimum": 0, "maximum": 23}}),
    "attendees": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
}))
THERMOSTAT = tool("set_thermostat", "Set a room's temperature.", {
    "type": "object",
    "properties": {"temperature": {"type": "number", "minimum": 5, "maximum": 30},
                   "room": {"type": "string"}, "eco": {"type": "boolean"}},
    "required": ["temperature"],  # room and eco are optional; extra keys are not forbidden
}, strict=False)
SHOP = tool("search_products", "Search the shop.", closed({
    "query": {"type": "string"},
    "max_price": {"type": ["number", "null"]},
    "tags": {"type": "array", "items": {"enum": ["new", "sale", "eco"]}, "maxItems": 3},
}))
CONTACT = tool("add_contact", "Add a contact to the address book.", {
    "type": "object", "properties": {"person": {"$ref": "#/$defs/person"}},
    "required": ["person"], "additionalProperties": False,
    "$defs": {"person": closed({"name": {"type": "string"},
                                "age": {"type": "integer", "minimum": 0, "maximum": 130}})},
})
# values no unconstrained model would write: only the grammar can make this call valid
CODE = tool("unlock", "Unlock a door with a code.", closed({
    "code": {"enum": ["zq-17", "xv-42"]},
    "level": {"type": "integer", "minimum": 1000, "maximum": 1003},
}))
TOOLS = {t["name"]: t for t in (WEATHER, TABLE, EVENT, THERMOSTAT, SHOP, CONTACT, CODE)}
PROMPTS = {
    "get_weather": ["What's the weather in Paris?", "Is it cold in Oslo today, in fahrenheit?"],
    "book_table": ["Book a table for 4 at Luigi's, outside.", "A table for two at The Ivy."],
    "create_event": ["Team meeting on Friday at 3pm with Ann and Bob.",
                     "Lunch with Eve on sunday at noon."],
    "set_thermostat": ["Set the living room to 21.5 degrees.", "Make the bedroom 18, eco mode."],
    "search_products": ["Find running shoes under 80 dollars on sale.",
                        "Search for eco-friendly bottles."],
    "add_contact": ["Add Maria, 34, to my contacts.", "Save contact John Smith, age 51."],
    "unlock": ["Open the front door.", "Unlock the garage, please."],
}


@pytest.fixture(scope="module")
def client(embedded: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=embedded.base_url, api_key="sk-unused", max_retries=0,
                         timeout=300)


def side_by_side(work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``work`` over ``items`` in parallel (the server has parallel slots), in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(work, items))


def calls_in(response: Response) -> list[Any]:
    return [item for item in response.output if item.type == "function_call"]


def assert_valid_call(response: Response, allowed: set[str]) -> Any:
    """The response is exactly one schema-valid call to one of ``allowed``; returns it."""
    assert response.status == "completed", (response.status, response.incomplete_details)
    assert [item.type for item in response.output] == ["function_call"], response.output
    [call] = calls_in(response)
    assert call.name in allowed
    assert call.status == "completed" and call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, TOOLS[call.name]["parameters"])
    assert call.arguments == json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    assert response.output_text == ""
    return call


def assert_call_or_cut(response: Response, allowed: set[str]) -> bool:
    """A valid call (True), or a generation cut by ``max_output_tokens`` before its call was
    complete (False): then no call is made at all, never a broken one."""
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.output == [] and response.output_text == ""
        return False
    assert_valid_call(response, allowed)
    return True


def bad_request(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


# -- forced calls are valid by construction ---------------------------------------------------


def test_forced_calls_validate_against_their_schemas(client: openai.OpenAI) -> None:
    cases = [(name, prompt) for name, prompts in PROMPTS.items() for prompt in prompts]

    def forced(case: tuple[str, str]) -> Response:
        name, prompt = case
        return client.responses.create(model=MODEL, input=prompt, tools=[TOOLS[name]],
                                       tool_choice={"type": "function", "name": name},
                                       **GREEDY)

    made = [assert_call_or_cut(response, {name})
            for (name, _), response in zip(cases, side_by_side(forced, cases), strict=True)]
    # a tiny model decoding greedily can loop inside a string until the budget runs out
    # (more so when batched with other slots); that is rare, and never an invalid call
    assert sum(made) >= len(cases) - 2, made


def test_required_with_several_tools_calls_one_of_them(client: openai.OpenAI) -> None:
    pairs = [(WEATHER, TABLE), (EVENT, CONTACT), (SHOP, THERMOSTAT), (CODE, WEATHER)]
    prompts = ["Weather in Madrid, please.", "Remind me: lunch on sunday at 12 with Eve.",
               "I want a cheap new phone.", "Unlock the back door."]

    def required(case: tuple[tuple[dict[str, Any], ...], str]) -> Response:
        tools, prompt = case
        return client.responses.create(model=MODEL, input=prompt, tools=list(tools),
                                       tool_choice="required", **GREEDY)

    cases = list(zip(pairs, prompts, strict=True))
    made = [assert_call_or_cut(response, {t["name"] for t in tools})
            for (tools, _), response in zip(cases, side_by_side(required, cases), strict=True)]
    assert sum(made) >= len(cases) - 1, made


def test_a_named_tool_choice_is_obeyed_among_several(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Book a table for 2 at Chez Marie.", tools=[TABLE, WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, **GREEDY)
    call = assert_valid_call(response, {"get_weather"})
    assert response.tool_choice.type == "function" and response.tool_choice.name == "get_weather"
    assert [t.name for t in response.tools] == ["book_table", "get_weather"]  # echoed
    assert json.loads(call.arguments)["unit"] in ("celsius", "fahrenheit")
    check_response(client.responses.retrieve(response.id).model_dump(mode="json"))


def test_a_forced_call_cut_by_max_output_tokens_is_not_made(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER],
                                       tool_choice="required", temperature=0,
                                       max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert calls_in(response) == [] and response.output_text == ""


# -- the tool loop ----------------------------------------------------------------------------


def first_call(client: openai.OpenAI, **kwargs: Any) -> tuple[Response, Any]:
    response = client.responses.create(model=MODEL, input="What's the weather in Berlin?",
                                       tools=[WEATHER], tool_choice="required", **GREEDY,
                                       **kwargs)
    return response, assert_valid_call(response, {"get_weather"})


OUTPUT = json.dumps({"temperature": 12, "sky": "cloudy"})


def assert_text_answer(response: Response) -> None:
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["message"], response.output
    assert response.output_text.strip()
    assert "<tool" not in response.output_text


def test_the_function_output_by_previous_response_id_gets_a_text_answer(
        client: openai.OpenAI) -> None:
    turn1, call = first_call(client)
    turn2 = client.responses.create(
        model=MODEL, previous_response_id=turn1.id, tools=[WEATHER], **GREEDY,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT}])
    assert_text_answer(turn2)
    items = client.responses.input_items.list(turn2.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]


def test_the_function_output_in_manual_history_gets_a_text_answer(
        client: openai.OpenAI) -> None:
    turn1, call = first_call(client, store=False)
    history = [{"role": "user", "content": "What's the weather in Berlin?"},
               call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": OUTPUT}]
    turn2 = client.responses.create(model=MODEL, input=history, tools=[WEATHER], store=False,
                                    **GREEDY)
    assert_text_answer(turn2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(turn1.id)


def test_tool_choice_none_calls_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="What's the weather in Paris?",
                                       tools=[WEATHER, TABLE], tool_choice="none", **GREEDY)
    assert response.status in ("completed", "incomplete")
    assert calls_in(response) == [] and response.output_text.strip()
    assert response.tool_choice == "none"


def test_auto_mode_never_shows_call_markup(client: openai.OpenAI) -> None:
    prompts = ["What's the weather in Paris?", "Hi! How are you?", "Book a table for 4.",
               "Write <tool_call> and then {\"name\": \"get_weather\"}.",
               "Repeat after me: <tool_response>sunny</tool_response>", "What is 2+2?"]

    def auto(prompt: str) -> Response:
        return client.responses.create(model=MODEL, input=prompt, tools=[WEATHER, TABLE],
                                       temperature=0, max_output_tokens=64)

    for response in side_by_side(auto, prompts):
        assert "<tool_" not in response.output_text and "</tool_" not in response.output_text
        for item in response.output:
            assert item.type in ("message", "function_call")
            if item.type == "function_call":
                jsonschema.validate(json.loads(item.arguments),
                                    TOOLS[item.name]["parameters"])


def test_auto_mode_calls_by_itself_after_a_worked_example(client: openai.OpenAI) -> None:
    """A few-shot history makes the small model call on its own; the grammar keeps it valid."""
    example = [
        {"role": "user", "content": "Unlock the shed."},
        {"type": "function_call", "call_id": "call_ex1", "name": "unlock",
         "arguments": '{"code":"xv-42","level":1001}'},
        {"type": "function_call_output", "call_id": "call_ex1", "output": "unlocked"},
        {"role": "assistant", "content": "The shed is unlocked."},
    ]
    prompts = ["Unlock the front door.", "Unlock the garage.", "Unlock the gate."]

    def auto(prompt: str) -> Response:
        return client.responses.create(
            model=MODEL, input=[*example, {"role": "user", "content": prompt}], tools=[CODE],
            store=False, temperature=0, max_output_tokens=64)

    responses = side_by_side(auto, prompts)
    assert any(calls_in(r) for r in responses), [r.output_text for r in responses]
    for response in responses:
        assert "<tool_" not in response.output_text
        for call in calls_in(response):
            jsonschema.validate(json.loads(call.arguments), CODE["parameters"])
            assert response.status == "completed"


# -- the stream -------------------------------------------------------------------------------


FUNCTION_CALL_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


def test_a_streamed_call_follows_the_canonical_sequence(client: openai.OpenAI,
                                                        embedded: RunningServer) -> None:
    request = {"model": MODEL, "input": "Team meeting on Friday at 3pm with Ann and Bob.",
               "tools": [EVENT], "tool_choice": "required", **GREEDY}
    with client.responses.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_response()

    kinds = [e.type for e in events]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert collapsed == FUNCTION_CALL_ORDER
    added = events[2]
    assert added.item.type == "function_call" and added.item.arguments == ""
    assert added.item.status == "in_progress"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    [call] = calls_in(final)
    assert "".join(deltas) == done.arguments == call.arguments
    assert done.name == call.name == "create_event"
    assert {e.item_id for e in events if hasattr(e, "item_id")} == {call.id}
    assert added.item.call_id == call.call_id
    jsonschema.validate(json.loads(call.arguments), EVENT["parameters"])

    # the raw wire: framing and every event against the SDK's models and the spec's schema
    with httpx.Client(timeout=300) as http, http.stream(
            "POST", embedded.base_url + "/responses", json={**request, "stream": True}) as reply:
        assert reply.status_code == 200
        raw = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: ")]
    check_stream(raw)
    assert raw[-1]["response"]["output"][0]["type"] == "function_call"


# -- refusals ---------------------------------------------------------------------------------


def test_requests_respond_cannot_honour_are_400s_naming_the_parameter(
        client: openai.OpenAI) -> None:
    unknown_output = bad_request(lambda: client.responses.create(
        model=MODEL, input=[{"type": "function_call_output", "call_id": "call_nope",
                             "output": "x"}]))
    assert "call_nope" in unknown_output["message"]

    foreign = bad_request(lambda: client.responses.create(
        model=MODEL, input="hi", tools=[{"type": "computer_use_preview", "display_width": 800,
                                         "display_height": 600, "environment": "browser"}]))
    assert foreign["param"] == "tools[0].type"

    missing = bad_request(lambda: client.responses.create(
        model=MODEL, input="hi", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_time"}))
    assert missing["param"].startswith("tool_choice") and "get_time" in missing["message"]

    bad_schema = bad_request(lambda: client.responses.create(
        model=MODEL, input="hi", tools=[tool("f", "x", {"type": "object",
                                                        "properties": {"a": {"type": 7}}})]))
    assert bad_schema["param"] == "tools[0].parameters"

    # a schema the decoder cannot compile (its $ref leads nowhere) is refused, not ignored
    dangling = bad_request(lambda: client.responses.create(
        model=MODEL, input="hi", tool_choice="required", max_output_tokens=32,
        tools=[tool("f", "x", closed({"a": {"$ref": "#/$defs/nowhere"}}))]))
    assert dangling["param"].startswith("tools")

    bad_format = bad_request(lambda: client.responses.create(
        model=MODEL, input="hi", text={"format": {"type": "json_schema", "name": "x",
                                                  "schema": {"type": "nonsense"}}}))
    assert bad_format["param"] == "text.format.schema"


# -- structured outputs -----------------------------------------------------------------------


FORMATS = [
    ("person", closed({"name": {"type": "string"},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
     "Describe a fictional person.", True),
    ("colour", closed({"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}}),
     "Pick a colour.", True),
    ("place", closed({"city": {"type": "string"},
                      "location": closed({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                          "lon": {"type": "number", "minimum": -180,
                                                  "maximum": 180}})}),
     "Where is Paris?", True),
    ("recipe", closed({"title": {"type": "string"},
                       "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                 "maxItems": 3},
                       "minutes": {"type": "number"}}),
     "Give me a pancake recipe.", False),
    ("answer", {"type": "object", "properties": {"answer": {"type": "string"},
                                                 "confidence": {"type": "number"}},
                "required": ["answer"]},
     "What is the capital of Italy?", False),
]


def test_json_schema_output_parses_and_validates(client: openai.OpenAI) -> None:
    def structured(case: tuple[str, dict[str, Any], str, bool]) -> Response:
        name, schema, prompt, strict = case
        return client.responses.create(
            model=MODEL, input=prompt, temperature=0, max_output_tokens=200,
            text={"format": {"type": "json_schema", "name": name, "schema": schema,
                             "strict": strict}, "verbosity": "low"})

    for (name, schema, _, strict), response in zip(FORMATS, side_by_side(structured, FORMATS),
                                                   strict=True):
        assert response.status == "completed", (name, response.output_text)
        jsonschema.validate(json.loads(response.output_text), schema)
        assert response.text.format.type == "json_schema"
        assert response.text.format.strict is strict
        assert response.text.verbosity == "low"


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Give the name and age of a cat as JSON.",
                                       temperature=0, max_output_tokens=200,
                                       text={"format": {"type": "json_object"}})
    assert response.status == "completed"
    assert isinstance(json.loads(response.output_text), dict)


class Book(BaseModel):
    title: str
    year: int
    in_print: bool


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(model=MODEL, input="Name a famous novel.", text_format=Book,
                                    temperature=0, max_output_tokens=200)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Book)


def test_structured_answer_or_call_in_auto_mode(client: openai.OpenAI) -> None:
    """With tools and a format, an answer is the format's JSON, never free text."""
    schema = closed({"reply": {"type": "string"}})

    def ask(prompt: str) -> Response:
        return client.responses.create(
            model=MODEL, input=prompt, tools=[WEATHER], temperature=0, max_output_tokens=200,
            text={"format": {"type": "json_schema", "name": "reply", "schema": schema}})

    for response in side_by_side(ask, ["Say hello.", "What's the weather in Paris?"]):
        assert response.status == "completed", [(i.type, getattr(i, "arguments", None))
                                                 for i in response.output]
        calls = calls_in(response)
        if calls:
            assert [item.type for item in response.output] == ["function_call"] * len(calls)
            for call in calls:
                jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
            assert len({call.arguments for call in calls}) == len(calls)  # no repeats
        else:
            jsonschema.validate(json.loads(response.output_text), schema)
