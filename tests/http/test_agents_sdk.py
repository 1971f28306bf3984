"""The OpenAI Agents SDK runs a function tool against respond on the embedded model.

A real agent loop over the Responses API: the model must call the tool (``tool_choice``
"required" on the first turn; the SDK resets it to "auto" afterwards), the SDK validates the
arguments against the tool's strict schema and runs the function, sends the output back as
history, and the model answers in text, which ends the run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from agents import (
    Agent,
    ItemHelpers,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem
from conftest import RunningServer
from openai import AsyncOpenAI

MODEL = "smollm2-135m-instruct"


def weather_agent(client: AsyncOpenAI, calls: list[tuple[str, str]]) -> Agent:
    @function_tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        """Get the current weather for a city."""
        calls.append((city, unit))
        return json.dumps({"city": city, "temperature": 12, "sky": "cloudy"})

    return Agent(
        name="weather",
        instructions="You answer questions about the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=256),
    )


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    set_tracing_disabled(True)


@pytest.fixture
async def client(embedded: RunningServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=embedded.base_url, api_key="sk-unused", max_retries=0,
                           timeout=300) as opened:
        yield opened


async def test_an_agent_calls_its_tool_and_answers(client: AsyncOpenAI) -> None:
    calls: list[tuple[str, str]] = []
    result = await Runner.run(weather_agent(client, calls), "What's the weather in Berlin?",
                              max_turns=4)

    assert len(calls) == 1  # the SDK parsed valid arguments and ran the function
    city, unit = calls[0]
    assert isinstance(city, str) and city and isinstance(unit, str)
    kinds = [type(item) for item in result.new_items]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem]
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert "<tool" not in result.final_output
    [call_item] = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    assert json.loads(call_item.raw_item.arguments)["city"] == city  # type: ignore[union-attr]


async def test_a_streamed_agent_run_completes(client: AsyncOpenAI) -> None:
    calls: list[tuple[str, str]] = []
    run = Runner.run_streamed(weather_agent(client, calls), "Is it raining in Paris?",
                              max_turns=4)
    seen: list[str] = []
    async for event in run.stream_events():
        if event.type == "run_item_stream_event":
            seen.append(event.item.type)
    assert run.is_complete
    assert len(calls) == 1
    assert seen == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    messages = [i for i in run.new_items if isinstance(i, MessageOutputItem)]
    assert ItemHelpers.text_message_outputs(messages).strip() == str(run.final_output).strip()
