"""Truncation on overflow: whole turns go from the oldest end, as few as the backend's own
token count says must go; the size estimate serves only a backend that cannot count."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from respond.backends.scripted import ScriptedBackend
from respond.domain import ChatMessage, Delta, Generation, TextDelta
from respond.engine.history import to_messages
from respond.engine.truncation import OUTPUT_SHARE, prime
from respond.errors import ContextLengthExceeded, ContextOverflow
from respond.protocol.request import CreateResponse

WINDOW = 400


class WindowedBackend(ScriptedBackend):
    """Refuses any prompt its count puts over ``WINDOW`` tokens, as llama.cpp does."""

    def __init__(self, *, counts: bool = True) -> None:
        super().__init__([[TextDelta("ok")]], context_window=WINDOW)
        self.counts = counts
        self.counted = 0

    async def count_tokens(self, messages: list[ChatMessage], *,
                           tools: list[dict[str, Any]] | None = None,
                           tool_choice: Any = None) -> int | None:
        self.counted += 1
        return await self.size(messages) if self.counts else None

    async def size(self, messages: list[ChatMessage]) -> int:
        return int(await super().count_tokens(messages) or 0)

    async def generate(self, request: Generation) -> AsyncGenerator[Delta, None]:
        tokens = await self.size(request.messages)
        if tokens > WINDOW:
            raise ContextOverflow("too long", tokens, WINDOW)
        async for delta in super().generate(request):
            yield delta


def conversation(sizes: list[int]) -> list[dict[str, Any]]:
    """A user turn and an answer per size (in characters of the user's text)."""
    items: list[dict[str, Any]] = []
    for n, size in enumerate(sizes):
        items.append({"id": f"msg_u{n}", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": f"{n}" + "x" * size}]})
        items.append({"id": f"msg_a{n}", "type": "message", "role": "assistant",
                      "status": "completed",
                      "content": [{"type": "output_text", "text": "fine", "annotations": []}]})
    items.append({"id": "msg_last", "type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": "and now?"}]})
    return items


async def kept(backend: WindowedBackend, items: list[dict[str, Any]],
               truncation: str = "auto") -> list[dict[str, Any]]:
    req = CreateResponse.model_validate({"model": "m", "input": "x", "truncation": truncation,
                                         "max_output_tokens": 50})
    generation = Generation(to_messages(None, items, vision=False), max_output_tokens=50)
    deltas, first = await prime(backend, generation, req, items, {})
    await deltas.aclose()
    assert first == TextDelta("ok")
    sent = backend.requests[-1].messages
    [start] = [s for s in range(len(items))
               if to_messages(None, items[s:], vision=False) == sent]
    return items[start:]


async def test_the_count_keeps_every_turn_that_fits() -> None:
    items = conversation([900, 300, 200, 150, 100, 80, 60])
    backend = WindowedBackend()
    window = await kept(backend, items)
    budget = WINDOW - min(WINDOW // OUTPUT_SHARE, 50)
    assert window[0]["role"] == "user", "a history is cut only where a user turn begins"
    assert await backend.size(to_messages(None, window, vision=False)) <= budget
    start = items.index(window[0])
    earlier = items[start - 2:]  # one more turn would not have fitted
    assert await backend.size(to_messages(None, earlier, vision=False)) > budget
    assert window == items[start:]
    assert backend.counted >= 2


async def test_without_a_count_the_estimate_still_fits() -> None:
    items = conversation([900, 300, 200, 150, 100, 80, 60])
    backend = WindowedBackend(counts=False)
    window = await kept(backend, items)
    assert window[-1]["id"] == "msg_last" and window[0]["role"] == "user"
    assert await backend.size(to_messages(None, window, vision=False)) <= WINDOW


async def test_overflow_without_truncation_is_a_400() -> None:
    with pytest.raises(ContextLengthExceeded):
        await kept(WindowedBackend(), conversation([2000]), truncation="disabled")


async def test_a_last_turn_that_cannot_fit_is_a_400() -> None:
    items = conversation([100])
    items[-1]["content"][0]["text"] = "y" * 4000
    with pytest.raises(ContextLengthExceeded, match="last turn alone"):
        await kept(WindowedBackend(), items)
