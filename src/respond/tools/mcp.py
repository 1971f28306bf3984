"""The MCP client adapter: list and call the tools of a remote MCP server for one request.

``McpSession`` speaks to one server (``server_url`` + ``headers`` of an ``mcp`` tool) through
the ``mcp`` SDK: Streamable HTTP first, the legacy SSE transport when the server answers the
first POST with 400/404/405. Every HTTP request goes through an httpx2 client built from the
``EgressPolicy`` (each connection resolved, checked and pinned to the checked address) and
carries the tool's ``headers``.

Rules:

* One connection per session, reused for every ``list_tools``/``call``.
* The SDK runs task groups for the life of a connection. They live in a runner task owned by
  the connection, never in the caller's task, so a transport that dies (server gone, protocol
  garbage) ends the runner and fails the pending call with ``ToolError`` instead of
  cancelling the caller, and ``aclose()`` reaps them.
* Connect and every call are bounded by ``timeout`` (default 30 s).
* Everything that goes wrong becomes a ``ToolError`` (or a subclass that says which kind, for
  the ``mcp_call.error`` of the Responses API). Its message names the server by label and
  never contains a header value: messages are built from our own words plus the server's,
  and any header value is scrubbed from them, from returned text and from log lines. The
  kinds, the wording and the scrubbing live in ``mcp_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import httpx2
import mcp_types as types
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from ..network import EgressDenied, EgressError, EgressPolicy
from . import ToolSpec
from .mcp_errors import (
    Failure,
    McpHttpError,
    McpProtocolError,
    McpToolExecutionError,
    clip,
    describe,
    host,
    http_failure,
    leaves,
    redact,
    safe_url,
    secrets_of,
    timed_out,
)

# the error kinds are part of this module's interface (callers catch them from here)
__all__ = ["DEFAULT_TIMEOUT", "McpHttpError", "McpProtocolError", "McpSession",
           "McpToolExecutionError", "result_text"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
_CLOSE_GRACE = 5.0  # seconds a closing connection may spend saying goodbye (DELETE)
_SSE_READ_TIMEOUT = 300.0  # an idle server-to-client stream is normal; calls have their own bound
_FALLBACK_STATUSES = {400, 404, 405}  # "this is not a Streamable HTTP endpoint"
_MAX_PAGES = 100
_CLIENT_INFO = types.Implementation(name="respond", version="0.1.0")

T = TypeVar("T")


class McpSession:
    """The tools of one MCP server for one request, under one ``server_label``.

    ``async with McpSession.open(url, headers, policy, server_label="x") as s: ...``, or
    ``s = McpSession(...)``, ``await s.connect()`` ... ``await s.aclose()``. Connecting is
    lazy: the first ``list_tools``/``call`` connects if ``connect`` was not called. The SDK's
    task groups live in the connection's own runner task, so any task may connect, call
    (concurrently too) and close.
    """

    def __init__(
        self,
        server_url: str,
        headers: Mapping[str, str] | None,
        policy: EgressPolicy,
        *,
        server_label: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._connection = _Connection(server_url, headers or {}, policy, timeout)
        self.server_label = server_label or host(server_url)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        server_url: str,
        headers: Mapping[str, str] | None,
        policy: EgressPolicy,
        *,
        server_label: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[McpSession]:
        """A connected session, closed on exit; ``ToolError`` if it cannot connect."""
        session = cls(server_url, headers, policy, server_label=server_label, timeout=timeout)
        try:
            await session.connect()
            yield session
        finally:
            await session.aclose()

    @property
    def transport(self) -> str | None:
        """``"streamable-http"`` or ``"sse"`` once connected."""
        return self._connection.transport

    async def connect(self) -> None:
        with self._errors():
            await self._connection.start()

    async def list_tools(self) -> list[ToolSpec]:
        """Every tool of the server (all pages)."""
        with self._errors():
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(_MAX_PAGES):

                def page_of(client: Client, cursor: str | None = cursor) -> Awaitable[Any]:
                    return client.list_tools(cursor=cursor)

                page = await self._connection.request(page_of)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
            return [self._spec(tool) for tool in tools]

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run tool ``name``; its text content joined by newlines (other content as JSON).

        A result flagged ``isError`` raises ``McpToolExecutionError`` with the tool's text.
        """
        with self._errors():
            result = await self._connection.request(
                lambda c: c.call_tool(
                    name, arguments, read_timeout_seconds=self._connection.timeout
                )
            )
            text = self._connection.redact(result_text(result))
        if result.is_error:
            raise McpToolExecutionError(clip(text) or f"The tool '{name}' failed.")
        return text

    async def aclose(self) -> None:
        await self._connection.aclose()

    def _spec(self, tool: types.Tool) -> ToolSpec:
        annotations = (
            tool.annotations.model_dump(by_alias=True, mode="json", exclude_none=True)
            if tool.annotations is not None
            else None
        )
        description = self._connection.redact(tool.description) if tool.description else None
        return ToolSpec(tool.name, description, dict(tool.input_schema), annotations or None)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except Failure as failure:
            message = self._connection.redact(f"MCP server '{self.server_label}' {failure.text}")
            raise failure.tool_error(clip(message)) from None


class _Connection:
    """One MCP client connection, run by its own task (see the module docstring)."""

    def __init__(
        self, url: str, headers: Mapping[str, str], policy: EgressPolicy, timeout: float
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.transport: str | None = None
        self._headers = dict(headers)
        self._secrets = secrets_of(self._headers)
        self._policy = policy
        self._client: Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self._failure: Failure | None = None
        self._statuses: list[int] = []  # HTTP error statuses seen, in order
        self._deadline = 0.0
        self._serve_seen = 0  # statuses before the current transport attempt are not its own

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (once); wait, within the connect time-out, until the handshake is done."""
        async with self._start_lock:
            if self._failure is not None:
                raise self._failure.copy()
            if self._client is not None:
                return
            if self._runner is None:
                try:
                    await self._policy.check_url(self.url)  # a clear refusal before any SDK work
                except EgressDenied as exc:
                    self._failure = Failure(f"was not contacted: {exc}")
                    raise self._failure from None
                except EgressError as exc:
                    self._failure = Failure(f"could not be reached: {exc}")
                    raise self._failure from None
                self._deadline = asyncio.get_running_loop().time() + self.timeout
                self._runner = asyncio.create_task(self._run(), name=f"mcp {safe_url(self.url)}")
            # a caller cancelled while waiting leaves the runner going: the next caller waits
            # for the same handshake, until the same deadline
            ready = asyncio.create_task(self._ready.wait())
            try:
                remaining = self._deadline - asyncio.get_running_loop().time()
                await asyncio.wait({self._runner, ready}, timeout=max(remaining, 0),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if self._client is not None:
                return
            if not self._runner.done():
                self._failure = timed_out(self.timeout)
                await self._stop_runner()
            raise (self._failure or Failure("closed the connection while connecting")).copy()

    async def aclose(self) -> None:
        if self._failure is None:
            self._failure = Failure("is no longer connected: the session was closed")
        self._closing.set()
        if self._runner is not None and not self._runner.done():
            await self._stop_runner(grace=min(_CLOSE_GRACE, self.timeout))

    async def _stop_runner(self, grace: float = 0.0) -> None:
        runner = self._runner
        assert runner is not None
        self._closing.set()
        if grace:
            await asyncio.wait({runner}, timeout=grace)
        if not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=_CLOSE_GRACE)
            if not runner.done():
                logger.warning("MCP connection to %s did not stop", safe_url(self.url))

    async def _run(self) -> None:
        """The runner: open the SDK client, serve until closing, record why it ended."""
        try:
            try:
                await self._serve("streamable-http", may_fall_back=True)
            except _FallBack:
                logger.info("MCP server %s: falling back to the SSE transport", safe_url(self.url))
                await self._serve("sse", may_fall_back=False)
        except Exception as exc:  # noqa: BLE001 — the runner's end is reported, never raised
            if self._failure is None:
                self._failure = self._describe(exc, self._statuses[self._serve_seen :])
            logger.info(
                "MCP connection to %s ended: %s", safe_url(self.url), self.redact(self._failure.text)
            )
        finally:
            self._client = None
            if self._failure is None:
                self._failure = Failure("closed the connection")

    async def _serve(self, transport: str, *, may_fall_back: bool) -> None:
        seen = self._serve_seen = len(self._statuses)
        async with AsyncExitStack() as stack:
            if transport == "sse":
                stream = sse_client(
                    self.url, timeout=self.timeout, sse_read_timeout=_SSE_READ_TIMEOUT,
                    httpx_client_factory=self._http_client,
                )
            else:
                http_client = await stack.enter_async_context(self._http_client())
                stream = streamable_http_client(self.url, http_client=http_client)
            client = Client(
                stream, mode="auto", cache=None, read_timeout_seconds=self.timeout,
                client_info=_CLIENT_INFO,
            )
            try:
                await stack.enter_async_context(client)
            except Exception as exc:
                statuses = self._statuses[seen:]
                if may_fall_back and statuses and statuses[-1] in _FALLBACK_STATUSES and any(
                    isinstance(leaf, MCPError) for leaf in leaves(exc)
                ):
                    raise _FallBack from exc
                raise
            self.transport = transport
            self._client = client
            self._ready.set()
            await self._closing.wait()

    def _http_client(
        self,
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        """The guarded client of this connection (the SDK's client-factory signature; its
        arguments are ignored: the headers are ours, time-outs ours, no auth flow)."""
        return self._policy.httpx2_client(
            headers=self._headers,
            timeout=httpx2.Timeout(self.timeout, read=max(_SSE_READ_TIMEOUT, self.timeout)),
            event_hooks={"response": [self._on_response]},
        )

    async def _on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self._statuses.append(response.status_code)

    # -- requests --------------------------------------------------------------------------

    async def request(self, send: Callable[[Client], Awaitable[T]]) -> T:
        """``send(client)`` bounded by the time-out, failing fast if the connection dies."""
        await self.start()
        client, runner = self._client, self._runner
        if client is None or runner is None or runner.done():
            raise (self._failure or Failure("closed the connection")).copy()
        seen = len(self._statuses)
        call = asyncio.ensure_future(send(client))
        try:
            await asyncio.wait({call, runner}, timeout=self.timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
                await asyncio.wait({call}, timeout=_CLOSE_GRACE)
        if call.done() and not call.cancelled():
            exc = call.exception()
            if exc is None:
                return call.result()
            if isinstance(exc, Exception):
                raise self._describe(exc, self._statuses[seen:]) from None
            raise exc
        if runner.done():
            raise (self._failure or Failure("closed the connection")).copy()
        if self._statuses[seen:]:  # e.g. an SSE message POST refused: no answer will come
            raise http_failure(self._statuses[-1])
        raise timed_out(self.timeout)

    # -- messages --------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _describe(self, exc: BaseException, statuses: list[int]) -> Failure:
        return describe(exc, statuses, url=self.url, timeout=self.timeout)


class _FallBack(Exception):
    """The Streamable HTTP attempt met a server that does not speak it."""


# -- results ---------------------------------------------------------------------------------


def result_text(result: types.CallToolResult) -> str:
    """The text blocks of a tool result joined by newlines; other blocks as compact JSON
    (binary payloads replaced by their size); the structured content when there is no block."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            summary = _summarize(block.model_dump(by_alias=True, mode="json", exclude_none=True))
            parts.append(json.dumps(summary, ensure_ascii=False, separators=(",", ":")))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _summarize(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("data", "blob") and isinstance(item, str) and len(item) > 64:
                out[key] = f"<{len(item)} characters of base64 omitted>"
            else:
                out[key] = _summarize(item)
        return out
    if isinstance(value, list):
        return [_summarize(v) for v in value]
    return value
