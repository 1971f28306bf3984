"""The ``Response`` object: every field the API lists, ``null`` where unset."""

from __future__ import annotations

from typing import Any

from respond.protocol.request import CreateResponse


def response_skeleton(
    req: CreateResponse, *, response_id: str, created_at: int, model: str, status: str
) -> dict[str, Any]:
    """The response as first announced: request echoes with defaults filled, no output yet."""
    text: dict[str, Any] = {"format": {"type": "text"}, "verbosity": "medium"}
    if req.text is not None:
        if req.text.format is not None:
            text["format"] = req.text.format.model_dump(exclude_none=True)
        if req.text.verbosity is not None:
            text["verbosity"] = req.text.verbosity
    reasoning: dict[str, Any] = {"effort": None, "summary": None}
    if req.reasoning is not None:
        reasoning = {"effort": req.reasoning.effort, "summary": req.reasoning.summary}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": bool(req.background),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "model": model,
        "output": [],
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "conversation": None,
        "prompt": None,
        "prompt_cache_key": req.prompt_cache_key,
        "prompt_cache_retention": req.prompt_cache_retention,
        "reasoning": reasoning,
        "safety_identifier": req.safety_identifier,
        "service_tier": "default",
        "store": True if req.store is None else req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": text,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": list(req.tools or []),
        "top_logprobs": req.top_logprobs or 0,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
        "metadata": dict(req.metadata or {}),
        "frequency_penalty": req.frequency_penalty or 0.0,
        "presence_penalty": req.presence_penalty or 0.0,
    }


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor-paginated list, as every list endpoint of the API returns it."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
