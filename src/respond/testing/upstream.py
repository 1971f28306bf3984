"""A small, fast OpenAI-compatible Chat Completions server: the "real upstream over HTTP" of the
test suite and the benchmarks.

It answers every chat completion with a deterministic text of N words ("tok0 tok1 ..."),
streamed one SSE chunk per token, and reports usage: ``prompt_tokens`` is ``prompt_tokens()``
of the messages, ``completion_tokens`` the number of tokens sent (``max_tokens`` stops the
answer early with finish reason ``length``). A test scripts the behaviour at run time through
``UpstreamServer.behaviour`` / ``configure()`` (an HTTP error, a context overflow, a stream
broken after K chunks, a delay per token, a reply text, tool calls) and inspects what the
server saw: ``requests`` (body and headers of each) and ``disconnects`` (streams abandoned by
the client while a delay was set).

This module is the HTTP side (routes, scripted errors, the SSE stream, the thread it runs
in, the command line); what an answer says and how it is encoded is ``upstream_answers``.

Rules: per-request work stays small (chunks are assembled from pre-encoded bytes with orjson,
no pydantic), and the server runs on its own event loop in a thread, so a test's event loop
and the server never wait on each other.

Standalone: ``python -m respond.testing.upstream --port 8001 --tokens 16``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import logging
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from respond.testing.threaded import start_in_thread, stop_in_thread

# Behaviour and prompt_tokens are part of this module's interface: tests script and count
# through them as ``respond.testing.upstream.*``
from respond.testing.upstream_answers import Answer, Behaviour, chunk_prefix, prompt_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One request as the server saw it; ``body`` is the decoded JSON (or the raw text)."""

    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(repr=False)
    client: tuple[str, int] | None = None


class ScriptedBreak(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-stream."""


class UpstreamServer:
    """The upstream app served by uvicorn on a free loopback port, in a background thread.

    ``with UpstreamServer() as upstream: ... upstream.base_url`` (ends in ``/v1``).
    ``api_key``, when set, is required as a Bearer token (else 401). ``record=False`` keeps
    no ``requests`` (for long benchmark runs).
    """

    def __init__(
        self,
        *,
        tokens: int = 16,
        delay: float = 0.0,
        model: str = "upstream-model",
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
    ) -> None:
        self.model = model
        self.record = record
        self.api_key = api_key
        self.host = host
        self.port = port
        self._defaults = Behaviour(tokens=tokens, delay=delay)
        self.behaviour = dataclasses.replace(self._defaults)
        self.requests: list[Received] = []
        self.disconnects = 0
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def configure(self, **changes: Any) -> Behaviour:
        """Change some fields of ``behaviour``; the others keep their current values."""
        self.behaviour = dataclasses.replace(self.behaviour, **changes)
        return self.behaviour

    def reset(self) -> None:
        """Back to the constructor's behaviour, with no recorded requests or disconnects."""
        self.behaviour = dataclasses.replace(self._defaults)
        self.requests.clear()
        self.disconnects = 0

    # -- running ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(server_config(self.app))
        _quiet_scripted_breaks()
        self._thread = start_in_thread(self._server, sock, name="upstream", timeout=timeout,
                                       what=f"the upstream test server on {self.base_url}")
        logger.debug("upstream test server listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        stop_in_thread(self._server, self._thread)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- endpoints -------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        self._record(request, None)
        body = {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "respond"}],
        }
        return _json(200, body)

    async def _chat_completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        self._record(request, body)
        plan = self.behaviour
        if plan.tool_calls and plan.tool_calls_once:
            self.behaviour = dataclasses.replace(plan, tool_calls=None)
        if self.api_key is not None and (
            request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is a required property.", param="messages")
        if plan.error_status is not None:
            return _error(plan.error_status, plan.error_message, plan.error_code)
        prompt = prompt_tokens(body["messages"])
        if plan.context_limit is not None and prompt > plan.context_limit:
            return _error(
                400,
                f"This model's maximum context length is {plan.context_limit} tokens. However, "
                f"your messages resulted in {prompt} tokens. Please reduce the length of the "
                "messages.",
                "context_length_exceeded",
                param="messages",
            )
        answer = Answer.plan(plan, body, prompt)
        model = body.get("model")
        if not isinstance(model, str):
            model = self.model
        ident = f"chatcmpl-{next(self._ids)}"
        if not body.get("stream"):
            return _json(200, answer.completion(ident, model))
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = answer.events(ident, chunk_prefix(ident, model), usage)
        return _EventStream(self, events, plan.delay, plan.break_after)

    def _record(self, request: Request, body: Any) -> None:
        if not self.record:
            return
        client = (request.client.host, request.client.port) if request.client else None
        self.requests.append(
            Received(request.method, request.url.path, body, dict(request.headers), client)
        )


class _EventStream(Response):
    """Sends pre-encoded SSE events; with a delay it watches for the client going away."""

    def __init__(
        self,
        server: UpstreamServer,
        events: list[bytes],
        delay: float,
        break_after: int | None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        self._server = server
        self._events = events
        self._delay = delay
        self._break_after = break_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if self._delay <= 0 and self._break_after is None:
            body = b"".join(self._events)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            for sent, event in enumerate(self._events):
                if sent == self._break_after:
                    raise ScriptedBreak(f"connection broken after {sent} chunks, as scripted")
                if self._delay > 0:
                    await asyncio.wait((gone,), timeout=self._delay)
                if gone.done():
                    self._server.disconnects += 1
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _error(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _json(
        status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


class _HideScriptedBreaks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ScriptedBreak))


_BREAK_FILTER = _HideScriptedBreaks()


def _quiet_scripted_breaks() -> None:
    """uvicorn logs the exception that drops a connection; a scripted one is no news."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _BREAK_FILTER not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_BREAK_FILTER)


def server_config(app: Any, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    """uvicorn settings for speed (uvloop and httptools when present) and quiet logs."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
        backlog=1024,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m respond.testing.upstream",
        description="A fake OpenAI-compatible Chat Completions server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each chunk")
    parser.add_argument("--model", default="upstream-model")
    parser.add_argument("--api-key", default=None, help="require this Bearer token")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    upstream = UpstreamServer(
        tokens=args.tokens, delay=args.delay, model=args.model, api_key=args.api_key, record=False
    )
    _quiet_scripted_breaks()
    logger.info("upstream test server on http://%s:%d/v1", args.host, args.port)
    uvicorn.Server(server_config(upstream.app, args.host, args.port)).run()


if __name__ == "__main__":
    main()
