"""backends: I/O adapters to model engines, each behind the ``Backend`` protocol.

Rule: a backend knows Chat Completions and its engine; it never sees HTTP requests of our
own, SQL or the environment. It imports only ``domain``, ``errors`` and ``settings``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol, runtime_checkable

from respond.domain import ChatMessage, Delta, Generation


@runtime_checkable
class Backend(Protocol):
    """A model engine.

    Contract of ``generate``:
      * yields ``TextDelta`` / ``ReasoningDelta`` / ``ToolCallDelta`` as the model produces
        them, then exactly one ``Finish`` (with ``Usage`` when the engine reports it) last;
      * raises ``ContextOverflow`` before yielding anything when the prompt does not fit;
      * raises ``BackendError`` (``BackendTimeout`` for time-outs) when the engine fails,
        before or during the stream;
      * it is an async generator (``async def`` with ``yield``), so the consumer can stop it
        with ``aclose()``; when the consumer closes it or its task is cancelled, generation
        stops promptly and the engine's slot is freed.
    """

    vision: bool
    context_window: int | None

    def generate(self, request: Generation) -> AsyncGenerator[Delta, None]: ...

    async def count_tokens(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> int | None:
        """Prompt tokens for these messages, with ``tools`` offered under ``tool_choice``
        (Chat Completions shapes, as in ``Generation``), or None when the engine cannot tell.
        """
        ...

    async def aclose(self) -> None: ...
