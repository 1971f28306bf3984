"""Our vocabulary between the engine and the backends.

The engine speaks to every backend in Chat Completions messages (plain dicts, the lingua
franca of model servers) and receives a stream of ``Delta`` values back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ChatMessage = dict[str, Any]
"""A Chat Completions message: ``{"role", "content", ["tool_calls"], ["tool_call_id"]}``."""


@dataclass(frozen=True, slots=True)
class Generation:
    """One model turn: what to send to a backend."""

    messages: list[ChatMessage]
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None  # Chat Completions tool definitions
    tool_choice: Any = None  # Chat Completions tool_choice
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call; ``index`` identifies the call within the turn."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class Finish:
    """The last delta of a turn: why it ended and what it cost."""

    reason: FinishReason
    usage: Usage | None = None


Delta = TextDelta | ReasoningDelta | ToolCallDelta | Finish
