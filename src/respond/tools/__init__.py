"""tools: server-side tools the engine runs on the model's behalf (remote MCP servers, ...).

Rule: an adapter speaks to its outside world and returns plain results; it never sees our
HTTP layer or the store. Every network fetch goes through ``respond.network``'s egress
policy. Contract of a tool session:

* ``list_tools()`` returns the server's tools; ``call(name, arguments)`` runs one and
  returns its text output;
* failures (unreachable, time-out, refused by the egress policy, protocol garbage, a tool
  that reports an error) raise ``ToolError`` with a message fit for the client; nothing
  else escapes, and nothing hangs past the configured time-out;
* secrets (``headers``) are used for the calls and never appear in a ``ToolError``
  message, a log line or a returned value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
