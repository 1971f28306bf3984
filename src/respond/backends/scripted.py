"""The scripted backend: a fake model that ships with the package, for engine tests and demos.

It plays back "turns" written in advance, one per ``generate`` call, and keeps what it was
asked so a test can check it. It honours the ``Backend`` contract: deltas, then exactly one
``Finish``; errors raised where the script puts them; early closing noticed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from respond.domain import ChatMessage, Delta, Finish, Generation, Usage

Turn = Sequence[Delta | BaseException] | BaseException
"""What one ``generate`` call plays: deltas (and perhaps an exception to raise at that point),
or an exception to raise before anything is yielded."""


class ScriptedBackend:
    """Plays ``turns`` in order, one per ``generate`` call; the last one repeats once exhausted.

    A turn without a ``Finish`` gets ``Finish("stop", Usage(len(str(messages)) // 4, n))``
    appended, ``n`` being the number of deltas it yielded. ``delay`` seconds are slept before
    every delta, so a test can close or cancel the stream half-way; ``cancelled`` then becomes
    True. Every ``Generation`` received is kept in ``requests``.
    """

    def __init__(
        self,
        turns: Sequence[Turn],
        *,
        delay: float = 0.0,
        vision: bool = False,
        context_window: int | None = None,
    ) -> None:
        if not turns:
            raise ValueError("ScriptedBackend needs at least one turn")
        self.turns = list(turns)
        self.delay = delay
        self.vision = vision
        self.context_window = context_window
        self.requests: list[Generation] = []
        self.cancelled = False
        self.closed = False

    async def generate(self, request: Generation) -> AsyncGenerator[Delta, None]:
        turn = self.turns[min(len(self.requests), len(self.turns) - 1)]
        self.requests.append(request)
        if isinstance(turn, BaseException):
            raise turn
        produced = 0
        try:
            for item in turn:
                if isinstance(item, BaseException):
                    raise item
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield item
                if isinstance(item, Finish):
                    return
                produced += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            yield Finish("stop", Usage(len(str(request.messages)) // 4, produced))
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled = True
            raise

    async def count_tokens(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> int | None:
        """A deterministic estimate: a token per 4 characters of content, plus 4 per message,
        plus a token per 4 characters of the tools' JSON when they are offered.

        Not any real tokenizer; it only needs to grow with the text, for truncation tests.
        """
        characters = sum(len(str(m.get("content") or "")) for m in messages)
        if tools and tool_choice != "none":
            characters += len(json.dumps(tools))
        return characters // 4 + 4 * len(messages)

    async def aclose(self) -> None:
        self.closed = True
