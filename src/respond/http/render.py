"""Rendering: JSON bodies with orjson, errors in OpenAI's envelope, SSE frames."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from respond.errors import APIError


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(exc: APIError) -> Response:
    return json_response(exc.body(), exc.status)


def sse_frame(event: dict[str, Any]) -> bytes:
    """One event: ``event:`` equals the JSON ``type``; the JSON sits on one ``data:`` line."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
