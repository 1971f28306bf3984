"""What the test upstream answers: the scripted ``Behaviour``, the answer it plans for one
chat completion, and that answer encoded as a JSON body or as SSE chunks.

An answer is a deterministic text of N words ("tok0 tok1 ...") or a scripted reply, one
token per streamed chunk, optionally followed by tool calls whose arguments come in a few
fragments; ``max_tokens`` cuts it short with finish reason ``length``. Usage counts
``prompt_tokens()`` of the messages and the tokens sent.

Rules: no I/O and no HTTP here (``upstream`` serves the bytes); encoding stays cheap, with
orjson and cached pre-encoded chunks, no pydantic, since benchmarks drive it hard.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class Behaviour:
    """What the server does with the next requests; change it between or during tests.

    ``tool_calls`` items are ``{"name": str, "arguments": str | dict}``; their arguments are
    streamed in several fragments; with ``tool_calls_once`` only the next request gets them
    and later ones answer with text (a model that calls a tool, then answers). ``break_after``
    closes the connection after that many chunks of a stream. ``delay`` is slept before each
    streamed chunk.
    """

    tokens: int = 16
    reply: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    delay: float = 0.0
    error_status: int | None = None
    error_message: str = "The upstream failed, as scripted."
    error_code: str | None = None
    context_limit: int | None = None
    break_after: int | None = None
    tool_calls_once: bool = False


def prompt_tokens(messages: Sequence[Any]) -> int:
    """The server's prompt size: 3 per message plus the whitespace-separated words of its text."""
    total = 0
    for message in messages:
        total += 3
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += len(text.split())
    return total


@dataclass(frozen=True, slots=True)
class Answer:
    """The text pieces and tool calls of one answer, and why it ends."""

    pieces: tuple[str, ...]
    calls: tuple[tuple[str, str], ...]  # (name, arguments)
    finish: str
    usage: dict[str, int]

    @classmethod
    def plan(cls, plan: Behaviour, body: dict[str, Any], prompt: int) -> Answer:
        pieces = _token_pieces(plan.tokens) if plan.reply is None else _split_reply(plan.reply)
        if plan.tool_calls and plan.tool_calls_once:
            pieces = ()  # a turn that only calls tools; the text comes in the next one
        calls = tuple((str(call["name"]), _arguments(call)) for call in plan.tool_calls or ())
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "tool_calls" if calls else "stop"
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, calls, finish = pieces[: max(limit, 0)], (), "length"
        completion = len(pieces) + sum(len(_fragments(args)) for _, args in calls)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return cls(pieces, calls, finish, usage)

    def completion(self, ident: str, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.pieces) or None}
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": _call_id(ident, index),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
                for index, (name, args) in enumerate(self.calls)
            ]
        return {
            "id": ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish}
            ],
            "usage": self.usage,
        }

    def events(self, ident: str, prefix: bytes, usage: bool) -> list[bytes]:
        """The SSE events of the stream, each ``prefix`` + the rest of its chunk."""
        events = [prefix + tail for tail in _text_tails(self.pieces)]
        for index, (name, args) in enumerate(self.calls):
            opening = {"index": index, "id": _call_id(ident, index), "type": "function"}
            opening["function"] = {"name": name, "arguments": ""}
            events.append(prefix + _choice({"tool_calls": [opening]}))
            for fragment in _fragments(args):
                more = {"index": index, "function": {"arguments": fragment}}
                events.append(prefix + _choice({"tool_calls": [more]}))
        events.append(prefix + _choice({}, self.finish))
        if usage:
            events.append(prefix + b'],"usage":' + orjson.dumps(self.usage) + b"}\n\n")
        events.append(b"data: [DONE]\n\n")
        return events


def chunk_prefix(ident: str, model: str) -> bytes:
    """The start of every chunk of one stream, up to the opening of ``choices``."""
    created = str(int(time.time())).encode()
    return b"".join(
        (b'data: {"id":"', ident.encode(), b'","object":"chat.completion.chunk","created":',
         created, b',"model":', orjson.dumps(model), b',"choices":[')
    )  # fmt: skip


def _call_id(ident: str, index: int) -> str:
    return f"call_{ident.removeprefix('chatcmpl-')}_{index}"


def _choice(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return orjson.dumps(choice) + b"]}\n\n"


@functools.lru_cache(maxsize=64)
def _token_pieces(n: int) -> tuple[str, ...]:
    return tuple(f"tok{i}" if i == 0 else f" tok{i}" for i in range(max(n, 0)))


@functools.lru_cache(maxsize=256)
def _text_tails(pieces: tuple[str, ...]) -> tuple[bytes, ...]:
    """Each text chunk after its prefix; the first one also carries the assistant role."""
    return tuple(
        _choice({"role": "assistant", "content": piece} if i == 0 else {"content": piece})
        for i, piece in enumerate(pieces)
    )


def _split_reply(text: str) -> tuple[str, ...]:
    """A reply as tokens: each word with the whitespace before it."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or (text[i].isspace() and not text[i - 1].isspace()):
            pieces.append(text[start:i])
            start = i
    return tuple(pieces)


def _arguments(call: dict[str, Any]) -> str:
    arguments = call.get("arguments", "{}")
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def _fragments(arguments: str, parts: int = 3) -> list[str]:
    """Tool-call arguments cut in several pieces, the way engines stream them."""
    size = max(1, -(-len(arguments) // parts))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
