"""Priming a generation, and truncating a context that does not fit the model's window.

``prime`` starts a generation and waits for its first delta, so a context overflow or a
dead backend is raised before any byte of the response is sent. On an overflow with
``truncation: "auto"`` it drops whole turns from the oldest end (a history is only ever
cut where a user turn begins) and tries again. How many turns go is measured with the
backend's own token count when it can count (the embedded model can), and estimated from
the items' sizes only when it cannot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

from respond.backends import Backend
from respond.domain import Delta, Generation
from respond.engine.history import Item, to_messages, turn_starts
from respond.engine.media import Media
from respond.errors import BackendError, ContextLengthExceeded, ContextOverflow
from respond.protocol.request import CreateResponse

MAX_TRUNCATION_ATTEMPTS = 8
OUTPUT_SHARE = 4  # at most a quarter of the window is kept free for the answer


async def prime(backend: Backend, generation: Generation, req: CreateResponse,
                context: list[Item], media: Media) -> tuple[AsyncGenerator[Delta, None], Delta]:
    """Start generating and wait for the first delta, truncating on overflow if allowed."""
    window = context
    for _attempt in range(MAX_TRUNCATION_ATTEMPTS):
        deltas = backend.generate(generation)
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            raise BackendError("The model backend returned nothing.") from None
        except ContextOverflow as overflow:
            await deltas.aclose()
            if req.truncation != "auto":
                raise ContextLengthExceeded(_overflow_message(overflow, backend),
                                            param="input") from None
            window = await _shorter(backend, generation, req, window, media, overflow)
            generation = dataclasses.replace(generation, messages=_messages(
                backend, req, window, media))
            continue
        except BaseException:
            await deltas.aclose()
            raise
        return deltas, first
    raise ContextLengthExceeded(
        "The input does not fit the model's context window even after truncation.",
        param="input",
    )


def _messages(backend: Backend, req: CreateResponse, window: list[Item],
              media: Media) -> list[dict[str, object]]:
    return to_messages(req.instructions, window, vision=backend.vision, media=media)


def _overflow_message(overflow: ContextOverflow, backend: Backend) -> str:
    window = overflow.context_window or backend.context_window
    size = f" of {window} tokens" if window else ""
    used = f" ({overflow.prompt_tokens} tokens)" if overflow.prompt_tokens else ""
    return (f"Your input{used} exceeds the context window{size} of this model. Shorten "
            "the input, or set 'truncation' to 'auto' to drop the oldest items.")


async def _shorter(backend: Backend, generation: Generation, req: CreateResponse,
                   window: list[Item], media: Media, overflow: ContextOverflow) -> list[Item]:
    """The window without its oldest turns: as few as must go for the rest to fit."""
    starts = [s for s in turn_starts(window) if s > 0]
    if not starts:
        raise ContextLengthExceeded(
            "The last turn alone exceeds the model's context window; it cannot be "
            "truncated further.", param="input",
        )
    limit = overflow.context_window or backend.context_window
    if limit:
        reserve = min(limit // OUTPUT_SHARE, generation.max_output_tokens or limit)
        cut = await _counted_cut(backend, generation, req, window, media, starts,
                                 limit - reserve)
        if cut is not None:
            return window[cut:]
    return window[_estimated_cut(window, starts, overflow):]


async def _counted_cut(backend: Backend, generation: Generation, req: CreateResponse,
                       window: list[Item], media: Media, starts: list[int],
                       budget: int) -> int | None:
    """The earliest turn start from which the prompt fits ``budget`` tokens, found by
    bisection over the backend's exact counts; the latest start when none fits. None when
    the backend cannot count."""

    async def fits(start: int) -> bool | None:
        tokens = await backend.count_tokens(_messages(backend, req, window[start:], media),
                                            tools=generation.tools,
                                            tool_choice=generation.tool_choice)
        return None if tokens is None else tokens <= budget

    low, high = 0, len(starts) - 1  # the answer lies in starts[low..high]
    verdict = await fits(starts[high])
    if verdict is None:
        return None
    if not verdict:
        return starts[high]
    while low < high:
        middle = (low + high) // 2
        if await fits(starts[middle]):
            high = middle
        else:
            low = middle + 1
    return starts[low]


def _estimated_cut(window: list[Item], starts: list[int], overflow: ContextOverflow) -> int:
    """Without a token count: keep about the share of the items' sizes that the overflow
    says fits."""
    keep_fraction = 0.5
    if overflow.prompt_tokens and overflow.context_window:
        keep_fraction = min(0.9, overflow.context_window / overflow.prompt_tokens * 0.85)
    sizes = [len(str(item)) for item in window]
    budget = sum(sizes) * keep_fraction
    cut = starts[0]
    for start in starts:
        cut = start
        if sum(sizes[start:]) <= budget:
            break
    return cut
