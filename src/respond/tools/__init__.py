"""tools: server-side tools the engine runs on the model's behalf (remote MCP servers, ...),
behind the ``ToolSession`` protocol and the ``Connector`` that opens one.

Rule: an adapter speaks to its outside world and returns plain results; it never sees our
HTTP layer or the store. Every network fetch goes through ``respond.network``'s egress
policy. The engine imports this module only; ``create_app`` builds the real connector
(``mcp.McpSession.open``) and tests use ``scripted.scripted_connector``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from respond.protocol.tools import McpServer


class ToolError(Exception):
    """A tool could not be listed or run; ``str(exc)`` is safe to show to the client.

    ``kind`` says whose fault it was, as the ``mcp_call.error`` object reports it:
    ``"execution"`` (the tool ran and reported an error), ``"http"`` (the server answered
    with an HTTP error ``code``) or ``"protocol"`` (anything else: unreachable, time-out,
    refused by the egress policy, garbage).
    """

    def __init__(self, message: str, *, kind: str = "protocol", code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code

    def error_object(self) -> dict[str, Any]:
        if self.kind == "execution":
            return {"type": "mcp_tool_execution_error",
                    "content": [{"type": "text", "text": str(self)}]}
        if self.kind == "http":
            return {"type": "http_error", "code": self.code or 502, "message": str(self)}
        return {"type": "mcp_protocol_error", "code": self.code or -32000, "message": str(self)}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None


class ToolSession(Protocol):
    """The tools of one server, for one response.

    Contract:

    * ``list_tools()`` returns every tool the server offers, in its order;
      ``call(name, arguments)`` runs one and returns its output as text;
    * failures (unreachable, time-out, refused by the egress policy, protocol garbage, a
      tool that reports an error) raise ``ToolError`` with a message fit for the client;
      nothing else escapes, and nothing hangs past the session's time-out;
    * a cancelled ``list_tools``/``call`` (the response was cancelled, its client went
      away) stops waiting at once and lets ``CancelledError`` through; the session stays
      usable until it is closed;
    * secrets (``headers``) are used for the calls and never appear in a ``ToolError``
      message, a log line or a returned value.
    """

    async def list_tools(self) -> list[ToolSpec]: ...

    async def call(self, name: str, arguments: dict[str, Any]) -> str: ...


Connector = Callable[[McpServer], AbstractAsyncContextManager[ToolSession]]
"""Opens a session to the server of an ``mcp`` tool: entering the context connects (or
raises ``ToolError``), leaving it closes the session, within a bounded time."""
