"""Routes of the Responses and Files APIs, mounted under ``/v1``, ``/openai/v1`` and ``/openai``.

Any ``api-version`` query parameter (Azure) is accepted and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from respond.engine.background import Background
from respond.engine.files import FilesService
from respond.engine.run import Run
from respond.engine.service import ResponsesService
from respond.errors import (
    APIError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    UnknownParameter,
)
from respond.http.render import error_response, json_response, sse_frame
from respond.http.uploads import receive_upload
from respond.protocol.request import parse_create

log = logging.getLogger(__name__)

PREFIXES = ("/v1", "/openai/v1", "/openai")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _service(request: Request) -> ResponsesService:
    return request.app.state.service  # type: ignore[no-any-return]


async def read_body(request: Request) -> bytes:
    """The request body, refusing anything over the configured limit with a 413."""
    limit: int = request.app.state.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        yield sse_frame(event)


def _background(request: Request) -> Background:
    return request.app.state.background  # type: ignore[no-any-return]


def _stream(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(_sse(events), media_type="text/event-stream", headers=SSE_HEADERS)


async def create_response(request: Request) -> Response:
    req = parse_create(await read_body(request))
    if req.background:
        prepared = await _service(request).prepare(req)
        record = await _background(request).submit(prepared)
        if req.stream:
            return _stream(_background(request).follow(record.id, None))
        return json_response(record.body)
    run = await _service(request).create(req)
    if req.stream:
        return _stream(run.events())
    response = await _fold_while_connected(request, run)
    if response is None:
        return Response(status_code=499)  # nobody is there to read it
    return json_response(response)


async def _fold_while_connected(request: Request, run: Run) -> dict[str, Any] | None:
    """The whole response, unless the client goes away first: then the run is cancelled
    (its generation stops and its slot is freed) and stored as ``cancelled``, as a stream
    whose client disconnects is; None then."""
    fold = asyncio.ensure_future(run.fold())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((fold, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not fold.done():
            fold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fold
    return None if fold.cancelled() else fold.result()


async def _disconnected(request: Request) -> None:
    """Return when the client closes its connection (the body was read already, so the
    next message the server sends is ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def get_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if request.query_params.get("stream") in ("true", "1", "True"):
        after = request.query_params.get("starting_after")
        if after is not None and not after.lstrip("-").isdigit():
            raise InvalidRequest("Invalid type for 'starting_after': expected an integer.",
                                 param="starting_after", code="invalid_type")
        await _background(request).check_streamable(response_id)
        return _stream(_background(request).follow(response_id,
                                                   None if after is None else int(after)))
    return json_response(await _service(request).get(response_id))


async def delete_response(request: Request) -> Response:
    return json_response(await _service(request).delete(request.path_params["response_id"]))


async def cancel_response(request: Request) -> Response:
    return json_response(await _background(request).cancel(request.path_params["response_id"]))


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid type for '{name}': expected an integer.", param=name,
                             code="invalid_type") from None
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid value for '{name}': must be between {low} and {high}.",
                             param=name, code="invalid_value")
    return value


async def list_input_items(request: Request) -> Response:
    limit = _int_param(request, "limit", 20, 1, 100)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': expected 'asc' or 'desc'.",
                             param="order", code="invalid_value")
    page = await _service(request).input_items(
        request.path_params["response_id"], limit=limit,
        order="asc" if order == "asc" else "desc",
        after=request.query_params.get("after"), before=request.query_params.get("before"),
    )
    return json_response(page)


# -- files -----------------------------------------------------------------------------------

_UPLOAD_FIELDS = {"purpose", "expires_after[anchor]", "expires_after[seconds]"}


def _files(request: Request) -> FilesService:
    return request.app.state.files  # type: ignore[no-any-return]


def _expires_after(fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("Invalid value for 'expires_after.anchor': expected 'created_at'.",
                             param="expires_after.anchor",
                             code="invalid_value" if anchor else "missing_required_parameter")
    if seconds is None or not seconds.strip().isdigit():
        raise InvalidRequest("Invalid value for 'expires_after.seconds': expected an integer.",
                             param="expires_after.seconds",
                             code="invalid_type" if seconds else "missing_required_parameter")
    return int(seconds)


async def create_file(request: Request) -> Response:
    state = request.app.state
    async with receive_upload(request, state.upload_dir, state.max_file_bytes) as form:
        for name in form.fields:
            if name not in _UPLOAD_FIELDS:
                raise UnknownParameter(name)
        if form.upload is None:
            raise InvalidRequest("Missing required parameter: 'file'.", param="file",
                                 code="missing_required_parameter")
        created = await _files(request).create(
            form.upload, purpose=form.fields.get("purpose"),
            expires_after=_expires_after(form.fields))
    return json_response(created)


async def list_files(request: Request) -> Response:
    limit = _int_param(request, "limit", 10000, 1, 10000)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': expected 'asc' or 'desc'.",
                             param="order", code="invalid_value")
    return json_response(await _files(request).list(
        purpose=request.query_params.get("purpose") or None, limit=limit,
        order="asc" if order == "asc" else "desc",
        after=request.query_params.get("after") or None))


async def get_file(request: Request) -> Response:
    return json_response(await _files(request).get(request.path_params["file_id"]))


async def get_file_content(request: Request) -> Response:
    found, chunks = await _files(request).content(request.path_params["file_id"])
    ascii_name = found.filename.encode("ascii", "replace").decode().replace('"', "_")
    headers = {
        "content-length": str(found.bytes),
        "content-disposition": (f'attachment; filename="{ascii_name}"; '
                                f"filename*=UTF-8''{quote(found.filename, safe='')}"),
    }
    return StreamingResponse(chunks, media_type=found.content_type, headers=headers)


async def delete_file(request: Request) -> Response:
    return json_response(await _files(request).delete(request.path_params["file_id"]))


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "respond"}


async def list_models(request: Request) -> Response:
    created = request.app.state.started_at
    return json_response({"object": "list",
                          "data": [_model_object(n, created) for n in _service(request).backends]})


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    if name not in _service(request).backends:
        raise ModelNotFound(name)
    return json_response(_model_object(name, request.app.state.started_at))


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


def api_routes() -> list[Route]:
    return [
        Route("/responses", create_response, methods=["POST"]),
        Route("/responses/{response_id}", get_response, methods=["GET"]),
        Route("/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/responses/{response_id}/cancel", cancel_response, methods=["POST"]),
        Route("/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
        Route("/files", create_file, methods=["POST"]),
        Route("/files", list_files, methods=["GET"]),
        Route("/files/{file_id}", get_file, methods=["GET"]),
        Route("/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/files/{file_id}/content", get_file_content, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/models/{model:path}", get_model, methods=["GET"]),
    ]


def all_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [Route("/health", health, methods=["GET"])]
    routes += [Mount(prefix, routes=api_routes()) for prefix in PREFIXES]
    return routes


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc)
