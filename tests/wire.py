"""Checks that what respond puts on the wire is what clients parse.

Every event and response is validated two ways: against the ``openai`` package's own
models (what the SDKs use) and against the Open Responses OpenAPI schema (what strict,
generated clients use).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "openresponses-openapi.json"

_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedStreamingEvent",
    "response.queued": "ResponseQueuedStreamingEvent",
    "response.in_progress": "ResponseInProgressStreamingEvent",
    "response.completed": "ResponseCompletedStreamingEvent",
    "response.failed": "ResponseFailedStreamingEvent",
    "response.incomplete": "ResponseIncompleteStreamingEvent",
    "response.output_item.added": "ResponseOutputItemAddedStreamingEvent",
    "response.output_item.done": "ResponseOutputItemDoneStreamingEvent",
    "response.content_part.added": "ResponseContentPartAddedStreamingEvent",
    "response.content_part.done": "ResponseContentPartDoneStreamingEvent",
    "response.output_text.delta": "ResponseOutputTextDeltaStreamingEvent",
    "response.output_text.done": "ResponseOutputTextDoneStreamingEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaStreamingEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneStreamingEvent",
    "error": "ErrorStreamingEvent",
}


@functools.cache
def _spec() -> dict[str, Any] | None:
    if not SPEC.exists():
        return None
    return json.loads(SPEC.read_text())


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator | None:
    spec = _spec()
    if spec is None:
        return None
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


_EVENT = TypeAdapter(ResponseStreamEvent)

# The Open Responses schema covers the core: function tools and these items. Remote MCP
# tools and items are OpenAI extensions it does not describe; those are checked against the
# openai SDK's models only.
_CORE_ITEMS = {"message", "function_call", "function_call_output", "reasoning"}


def _is_core(response: dict[str, Any]) -> bool:
    return (all(t.get("type") == "function" for t in response.get("tools") or ())
            and all(i.get("type") in _CORE_ITEMS for i in response.get("output") or ()))


def check_response(body: dict[str, Any]) -> Response:
    validator = _validator("ResponseResource")
    if validator is not None and _is_core(body):
        validator.validate(body)
    return Response.model_validate(body)


def check_event(event: dict[str, Any]) -> None:
    _EVENT.validate_python(event)
    name = _EVENT_SCHEMAS.get(event["type"])
    if "response" in event and not _is_core(event["response"]):
        name = None
    if "item" in event and event["item"].get("type") not in _CORE_ITEMS:
        name = None
    validator = _validator(name) if name else None
    if validator is not None:
        validator.validate(event)


def check_stream(events: list[dict[str, Any]]) -> None:
    """Framing rules of a whole stream: numbering, ordering, ids, one terminal event."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    terminal = {"response.completed", "response.incomplete", "response.failed"}
    assert events[-1]["type"] in terminal
    assert sum(e["type"] in terminal for e in events) == 1
    final = events[-1]["response"]
    for event in events:
        check_event(event)
        if event["type"] == "response.output_item.done":
            assert final["output"][event["output_index"]] == event["item"]
        if "response" in event:
            assert event["response"]["id"] == final["id"]
