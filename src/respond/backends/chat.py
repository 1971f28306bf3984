"""Reading Chat Completions output, shared by every backend that speaks it.

``ChunkReader`` turns streamed ``chat.completion.chunk`` objects (or one whole
``chat.completion``) into ``Delta`` values; ``error_from_payload`` maps an engine's error
body to our exceptions, recognising context overflows from the major servers' wording.
"""

from __future__ import annotations

import re
from typing import Any

from respond.domain import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from respond.errors import BackendError, ContextOverflow

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

_OVERFLOW = re.compile(
    r"context length|context size|context window|maximum context|too many tokens|"
    r"prompt is too long|exceeds the (available )?context|input_too_long",
    re.IGNORECASE,
)
_NUMBERS = re.compile(r"\d+")


def error_from_payload(status: int | None, payload: Any) -> Exception:
    """The exception for an engine's error answer (``payload`` is its decoded body)."""
    err = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(err, dict):
        message = str(err.get("message") or err)
        kind = str(err.get("type") or "")
        code = str(err.get("code") or "")
    else:
        message, kind, code = str(err), "", ""
    if (
        kind == "exceed_context_size_error"
        or code == "context_length_exceeded"
        or ((status in (None, 400, 413, 422)) and _OVERFLOW.search(message))
    ):
        prompt = err.get("n_prompt_tokens") if isinstance(err, dict) else None
        window = err.get("n_ctx") if isinstance(err, dict) else None
        return ContextOverflow(message, prompt, window)
    where = f"upstream returned {status}" if status else "model backend error"
    return BackendError(f"The model backend failed ({where}): {message}")


def usage_from(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


class ChunkReader:
    """Folds Chat Completions chunks into deltas; ``finish()`` gives the closing ``Finish``."""

    __slots__ = ("finish_reason", "usage")

    def __init__(self) -> None:
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: dict[str, Any]) -> list[Delta]:
        if chunk.get("error"):
            raise error_from_payload(None, chunk)
        if chunk.get("usage"):
            self.usage = usage_from(chunk["usage"])
        out: list[Delta] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                out.append(ReasoningDelta(reasoning))
            content = delta.get("content")
            if content:
                out.append(TextDelta(content))
            for position, call in enumerate(delta.get("tool_calls") or ()):
                fn = call.get("function") or {}
                out.append(
                    ToolCallDelta(
                        index=int(call.get("index", position)),
                        id=call.get("id"),
                        name=fn.get("name"),
                        arguments=fn.get("arguments") or "",
                    )
                )
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = _FINISH.get(reason, "stop")
        return out

    def finish(self) -> Finish:
        return Finish(self.finish_reason or "stop", self.usage)
