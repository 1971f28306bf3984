"""The embedded model's tool-call format: prompt rendering, grammars and the stream parser.

Pure functions and a state machine: no model, no server. What the real model does with
them is tested end to end in ``tests/http/test_function_calling_embedded.py``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from respond.backends.toolcalls import (
    CallParser,
    CallPlan,
    call_grammar,
    call_schema,
    format_grammar,
    generation_schema,
    needs_rendering,
    parse_all,
    render_messages,
)
from respond.domain import Delta, Finish, TextDelta, ToolCallDelta, Usage
from respond.errors import BackendError, InvalidRequest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
CONTACT = {"type": "function", "function": {
    "name": "add_contact",
    "parameters": {"type": "object", "properties": {"person": {"$ref": "#/$defs/person"}},
                   "required": ["person"],
                   "$defs": {"person": {"type": "object",
                                        "properties": {"name": {"type": "string"},
                                                       "age": {"type": "integer"}},
                                        "required": ["name"]}}}}}
USAGE = Usage(10, 5)
STOP = Finish("stop", USAGE)


def plan(choice: Any = "auto", parallel: bool | None = None,
         tools: list[dict[str, Any]] | None = None) -> CallPlan:
    made = CallPlan.of(tools or [WEATHER, CONTACT], choice, parallel)
    assert made is not None
    return made


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


def calls_of(deltas: list[Delta]) -> dict[int, dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            call = calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["arguments"] += d.arguments
    return calls


def chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


# -- the plan ---------------------------------------------------------------------------------


def test_plan_follows_tool_choice() -> None:
    assert CallPlan.of(None, None, None) is None
    assert CallPlan.of([WEATHER], "none", None) is None
    auto = plan()
    assert not auto.required and auto.parallel and auto.allowed == ("get_weather", "add_contact")
    assert not plan(parallel=False).parallel
    required = plan("required")
    assert required.required and not required.parallel and len(required.allowed) == 2
    forced = plan({"type": "function", "function": {"name": "add_contact"}})
    assert forced.required and forced.allowed == ("add_contact",)


# -- the prompt -------------------------------------------------------------------------------


def test_history_is_rendered_as_text_in_the_call_format() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "24 C"},
    ]
    original = copy.deepcopy(messages)
    assert needs_rendering(messages)

    out = render_messages(messages, plan(), result_role="tool")

    assert messages == original  # the caller's messages are not changed
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool"]
    assert out[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in out[0]["content"]  # the tools are described
    assert "<tool_call>" in out[0]["content"]  # and the call format
    assert out[2]["content"] == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>')
    assert out[3]["content"] == ("<tool_response>\n18 C\n</tool_response>\n"
                                 "<tool_response>\n24 C\n</tool_response>")
    assert all(set(m) == {"role", "content"} for m in out)


def test_without_a_system_message_one_is_added_and_results_default_to_user() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "c", "type": "function",
                     "function": {"name": "get_weather", "arguments": "not json"}}]},
                {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]}]
    out = render_messages(messages, plan({"type": "function", "function": {"name": "get_weather"}}))
    assert out[0]["role"] == "system" and "Now call the function get_weather." in out[0]["content"]
    assert out[2]["content"] == ('Checking.\n<tool_call>{"name": "get_weather", "arguments": '
                                 '"not json"}</tool_call>')
    assert out[3] == {"role": "user", "content": "<tool_response>\nok\n</tool_response>"}
    assert render_messages(messages[:1], None) == messages[:1]


# -- grammars ---------------------------------------------------------------------------------


def test_generation_schema_only_narrows() -> None:
    schema = {"type": "object",
              "properties": {"a": {"type": "string", "pattern": "^(?=x).*$"},
                             "b": {"type": "object", "properties": {"c": {"enum": [1, 2]}}},
                             "d": {"type": "object"},
                             "e": {"type": "object", "properties": {}, "additionalProperties": True}},
              "required": ["a"]}
    narrowed = generation_schema(schema)
    assert narrowed["additionalProperties"] is False
    assert narrowed["properties"]["b"]["additionalProperties"] is False
    assert "additionalProperties" not in narrowed["properties"]["d"]  # a free object stays free
    assert narrowed["properties"]["e"]["additionalProperties"] is True
    assert "pattern" not in narrowed["properties"]["a"]  # a lookahead LLGuidance cannot compile
    assert narrowed["properties"]["b"]["properties"]["c"] == {"enum": [1, 2]}
    assert "additionalProperties" not in schema  # the original is untouched


def test_the_call_schema_accepts_exactly_the_calls_of_allowed_functions() -> None:
    schema = call_schema(plan("required"))
    assert schema.pop("x-guidance")["lenient"] is True
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"name": "get_weather", "arguments": {"city": "Paris"}})
    # the nested $ref of add_contact still resolves from its new place
    assert validator.is_valid({"name": "add_contact", "arguments": {"person": {"name": "Li"}}})
    assert not validator.is_valid({"name": "add_contact", "arguments": {"person": {"age": 3}}})
    assert not validator.is_valid({"name": "get_weather", "arguments": {"town": "Paris"}})
    assert not validator.is_valid({"name": "delete_all", "arguments": {}})

    forced = call_schema(plan({"type": "function", "function": {"name": "add_contact"}}))
    assert [b["properties"]["name"] for b in forced["anyOf"]] == [{"const": "add_contact"}]


def test_grammars_by_mode() -> None:
    forced = call_grammar(plan("required"), end_token=2)
    assert forced.startswith("%llguidance {}\nstart: \"<tool_call>\" call_body \"</tool_call>\"\n")
    assert "TEXT" not in forced  # no free text when a call is required

    auto = call_grammar(plan(), end_token=2)
    assert 'start: TEXT <[2]> | TEXT "<tool_call>" call_body "</tool_call>" ("\\n"? ' in auto
    assert "TEXT: /(?s:.*)/ & ~/(?s:.*)(<tool_|<\\/tool_)(?s:.*)/" in auto

    single = call_grammar(plan(parallel=False), end_token=None)
    assert "start: TEXT | TEXT \"<tool_call>\" call_body \"</tool_call>\"\n" in single

    structured = call_grammar(plan(), end_token=2, response_format={"type": "json_object"})
    assert "start: answer <[2]> |" in structured and "TEXT" not in structured

    assert format_grammar(None) is None
    assert format_grammar({"type": "text"}) is None
    fmt = format_grammar({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}})
    assert fmt is not None and fmt.startswith("%llguidance {}\nstart: %json {")
    body = json.loads(fmt.split("%json ", 1)[1])
    assert body["additionalProperties"] is False and body["x-guidance"]["lenient"] is True


# -- parsing the stream -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_text_then_a_call_in_any_chunking(size: int) -> None:
    raw = ('Let me check < that. <tool_call>{"name": "get_weather", "arguments": '
           '{"city": "Paris \\"Nord\\""}}</tool_call>')
    deltas = parse_all(plan(), chunks(raw, size), STOP)

    assert text_of(deltas) == "Let me check < that."
    [call] = calls_of(deltas).values()
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert call["arguments"] == '{"city":"Paris \\"Nord\\""}'  # compact JSON
    assert deltas[-1] == Finish("tool_calls", USAGE)
    # the text is over before the call begins; no markup was ever sent as text
    first_call = next(i for i, d in enumerate(deltas) if isinstance(d, ToolCallDelta))
    assert not any(isinstance(d, TextDelta) for d in deltas[first_call:])
    assert "<tool" not in text_of(deltas)


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_a_closing_tag_inside_the_arguments_does_not_end_the_call(size: int) -> None:
    raw = ('<tool_call>{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}'
           '</tool_call>')
    [call] = calls_of(parse_all(plan(), chunks(raw, size), STOP)).values()
    assert json.loads(call["arguments"]) == {"city": "a</tool_call>b"}


def test_long_arguments_stream_in_several_fragments() -> None:
    city = "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch"
    raw = f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}</tool_call>'
    deltas = parse_all(plan(), [raw], STOP)
    fragments = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert len(fragments) > 1
    assert fragments[0].id and fragments[0].name == "get_weather"
    assert all(f.id is None and f.name is None for f in fragments[1:])
    assert json.loads("".join(f.arguments for f in fragments)) == {"city": city}


def test_parallel_calls_get_their_own_index_and_id() -> None:
    raw = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
           '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>')
    calls = calls_of(parse_all(plan(), chunks(raw, 5), STOP))
    assert [c["arguments"] for c in calls.values()] == ['{"city":"Paris"}', '{"city":"Rome"}']
    assert len({c["id"] for c in calls.values()}) == 2

    single = calls_of(parse_all(plan(parallel=False), [raw], STOP))
    assert list(single) == [0]

    repeated = raw + "\n" + raw.split("\n")[0]  # Paris, Rome, Paris again
    assert [c["arguments"] for c in calls_of(parse_all(plan(), [repeated], STOP)).values()] \
        == ['{"city":"Paris"}', '{"city":"Rome"}']
    assert "){0,3} <[2]>" in call_grammar(plan(), end_token=2)  # at most four calls a turn


def test_plain_answers_pass_through_and_whitespace_is_not_a_message() -> None:
    deltas = parse_all(plan(), ["  Hello", " there", " <", "b> ", "\n"], STOP)
    assert text_of(deltas) == "Hello there <b>"
    assert deltas[-1] == STOP

    only_space = parse_all(plan(), ["\n", " "], STOP)
    assert only_space == [STOP]

    cut = parse_all(plan(), ["Use the <tool"], Finish("length", USAGE))
    assert text_of(cut) == "Use the <tool" and cut[-1].reason == "length"


def test_a_call_cut_short_is_not_made() -> None:
    raw = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"ci'
    deltas = parse_all(plan(), chunks(raw, 4), Finish("length", USAGE))
    assert text_of(deltas) == "Sure."
    assert not calls_of(deltas)
    assert deltas[-1] == Finish("length", USAGE)

    with pytest.raises(BackendError, match="before it was complete"):
        parse_all(plan(), [raw], STOP)


def test_a_required_call_that_never_comes_is_an_error_unless_cut_short() -> None:
    with pytest.raises(BackendError, match="required to call"):
        parse_all(plan("required"), ["<tool_"], STOP)
    # text where the grammar forces the marker: the grammar was not applied
    assert CallParser(plan("required")).feed("<tool_c") == []
    with pytest.raises(InvalidRequest, match="could not be constrained"):
        CallParser(plan("required")).feed("I will not.")
    with pytest.raises(InvalidRequest, match="could not be constrained"):
        parse_all(plan("required"), ["<tool_c", "ool"], STOP)
    cut = parse_all(plan("required"), [], Finish("length", USAGE))
    assert cut == [Finish("length", USAGE)]


def test_malformed_or_foreign_calls_are_errors_never_text() -> None:
    with pytest.raises(BackendError, match="before it was complete"):
        parse_all(plan(), ["<tool_call>{nope}</tool_call>"], STOP)
    with pytest.raises(BackendError, match="outside the offered functions"):
        CallParser(plan()).feed('<tool_call>{"name": "rm", "arguments": {}}</tool_call>')
