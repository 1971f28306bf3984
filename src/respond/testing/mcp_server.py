"""A real MCP server, built with the ``mcp`` SDK, for tests and demos of the ``mcp`` tool.

Tools: ``add(a, b)``, ``echo(text)``, ``get_weather(city, unit)``, ``fail()`` (always raises,
so the client sees an ``isError`` result) and ``slow(seconds)``. The server speaks Streamable
HTTP at ``/mcp`` (``url``) and the legacy SSE transport at ``/sse`` + ``/messages/``
(``sse_url``), both on one uvicorn server on a free loopback port, in a background thread
with its own event loop, so a test's loop and the server never wait on each other.

Every HTTP request must carry ``Authorization: Bearer <token>`` (401 otherwise, unless
``token=None``). The server records what it saw so a test can assert on it:

* ``requests`` — one ``Received`` per HTTP request (method, path, headers, the JSON-RPC
  methods in its body, the client's address): "the token arrived on every request",
  "how many ``initialize`` handshakes", "how many TCP connections";
* ``calls`` — one ``ToolCall`` per tool execution (name and arguments);
* ``list_calls`` — the number of ``tools/list`` requests.

``stop()`` shuts down gracefully (in-flight requests get a second, then are cancelled);
``kill()`` aborts every open connection first, like a crashed process.

Knobs a test may change at run time: ``http_error`` (answer every request with that HTTP
status), ``garbage`` (answer every POST with a 200 JSON body that is not JSON-RPC) and
``legacy`` (refuse the 2026 ``server/discover`` probe, like a handshake-era server).

Standalone: ``python -m respond.testing.mcp_server --port 8765 --token secret-token``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Message, Receive, Scope, Send

from respond.testing.threaded import start_in_thread, stop_in_thread

logger = logging.getLogger(__name__)

DEFAULT_TOKEN = "secret-token"
_SSE_PATHS = ("/sse", "/messages")


@dataclass(frozen=True)
class Received:
    """One HTTP request as the server saw it; ``rpc_methods`` are the JSON-RPC methods of a POST."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    rpc_methods: tuple[str, ...] = ()
    client: tuple[str, int] | None = None


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


class McpTestServer:
    """The test MCP server; ``with McpTestServer() as server: ... server.url``."""

    def __init__(
        self, token: str | None = DEFAULT_TOKEN, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.requests: list[Received] = []
        self.calls: list[ToolCall] = []
        self.http_error: int | None = None
        self.garbage = False
        self.legacy = False
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._mcp = self._build_mcp()
        # Host checks off: tests reach the server under made-up names too ("mcp.test"), which
        # an egress policy's resolver maps to this loopback address
        anyhost = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self._streamable = self._mcp.streamable_http_app(host=host, transport_security=anyhost)
        self._sse = self._mcp.sse_app(host=host, transport_security=anyhost)

    # -- what the server saw ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Streamable HTTP endpoint."""
        return f"http://{self.host}:{self.port}/mcp"

    @property
    def sse_url(self) -> str:
        """The legacy SSE endpoint (a POST to it answers 405, as on an SSE-only server)."""
        return f"http://{self.host}:{self.port}/sse"

    @property
    def list_calls(self) -> int:
        return self.rpc_counts()["tools/list"]

    def rpc_counts(self) -> Counter[str]:
        """How many times each JSON-RPC method was requested, e.g. ``["initialize"]``."""
        return Counter(m for r in self.requests for m in r.rpc_methods)

    def connections(self) -> set[tuple[str, int]]:
        """The distinct client (address, port) pairs: one per TCP connection."""
        return {r.client for r in self.requests if r.client is not None}

    def reset(self) -> None:
        self.requests.clear()
        self.calls.clear()
        self.http_error = None
        self.garbage = False
        self.legacy = False

    # -- running ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            interface="asgi3",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = start_in_thread(self._server, sock, name="mcp-test-server",
                                       timeout=timeout, what=f"the MCP test server on {self.url}")
        logger.debug("MCP test server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop at once: open connections (streams of running calls included) are dropped."""
        stop_in_thread(self._server, self._thread)
        self._server = self._thread = None

    def kill(self) -> None:
        """Die like a crashed process: every open connection is aborted (no response, no
        FIN handshake for pending requests), then the server stops."""
        server, loop = self._server, self._loop
        if server is not None and loop is not None and not loop.is_closed():
            aborted = threading.Event()

            def abort_all() -> None:
                for connection in list(server.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if transport is not None:
                        transport.abort()
                aborted.set()

            loop.call_soon_threadsafe(abort_all)
            aborted.wait(timeout=5)
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the MCP server --------------------------------------------------------------------

    def _build_mcp(self) -> MCPServer:
        mcp = MCPServer("respond-test", version="1.0", log_level="WARNING")
        record = self.calls.append

        @mcp.tool(description="Add two integers.")
        def add(a: int, b: int) -> int:
            record(ToolCall("add", {"a": a, "b": b}))
            return a + b

        @mcp.tool(description="Return the text unchanged.")
        def echo(text: str) -> str:
            record(ToolCall("echo", {"text": text}))
            return text

        @mcp.tool(description="The current weather in a city.")
        def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
            record(ToolCall("get_weather", {"city": city, "unit": unit}))
            degrees = 21 if unit == "c" else 70
            return f"The weather in {city} is sunny, {degrees}°{unit.upper()}."

        @mcp.tool(description="Always fails.")
        def fail() -> str:
            record(ToolCall("fail", {}))
            raise ToolError("the tool failed, as scripted")

        @mcp.tool(description="Sleep, then say how long.")
        async def slow(seconds: float) -> str:
            record(ToolCall("slow", {"seconds": seconds}))
            await anyio.sleep(seconds)
            return f"slept {seconds} s"

        return mcp

    # -- the HTTP front: record, authenticate, misbehave on request, route -------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._loop = asyncio.get_running_loop()
            await self._streamable(scope, receive, send)  # runs the session manager
            return
        if scope["type"] != "http":
            return
        body = b""
        if scope["method"] == "POST":
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            receive = _replay(body, receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rpc = _rpc_methods(body)
        client = scope.get("client")
        self.requests.append(
            Received(scope["method"], scope["path"], headers, rpc, tuple(client) if client else None)
        )

        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            await _send_json(send, 401, {"error": "unauthorized"}, {"www-authenticate": "Bearer"})
        elif self.http_error is not None:
            await _send_json(send, self.http_error, {"error": f"scripted HTTP {self.http_error}"})
        elif self.garbage and scope["method"] == "POST":
            await _send_json(send, 200, {"this": "is not JSON-RPC"})
        elif self.legacy and "server/discover" in rpc:
            error = {"code": -32601, "message": "Method not found"}
            await _send_json(send, 200, {"jsonrpc": "2.0", "id": _rpc_id(body), "error": error})
        elif scope["path"].startswith(_SSE_PATHS):
            await self._sse(scope, receive, send)
        else:
            await self._streamable(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that first hands out the body already read, then defers to the real one."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _parsed(body: bytes) -> list[Any]:
    try:
        data = json.loads(body) if body else []
    except ValueError:
        return []
    return data if isinstance(data, list) else [data]


def _rpc_methods(body: bytes) -> tuple[str, ...]:
    return tuple(m["method"] for m in _parsed(body) if isinstance(m, dict) and "method" in m)


def _rpc_id(body: bytes) -> Any:
    return next((m.get("id") for m in _parsed(body) if isinstance(m, dict)), None)


async def _send_json(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m respond.testing.mcp_server", description="A demo MCP server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="required Bearer token ('' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = McpTestServer(args.token or None, host=args.host, port=args.port).start()
    logger.info("MCP test server: %s (SSE: %s)", server.url, server.sse_url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
