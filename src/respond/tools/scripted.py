"""Scripted tool sessions: fake MCP servers that ship with the package, for engine tests and
demos, as ``backends.scripted`` is a fake model.

A ``ScriptedToolSession`` offers tool specs written in advance and answers calls from canned
results; it keeps what it was asked so a test can check it. ``scripted_connector`` turns
sessions into the ``Connector`` the engine is given. Both honour the ``ToolSession``
contract: outputs are text, every failure is a ``ToolError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from respond.protocol.tools import McpServer
from respond.tools import Connector, ToolError, ToolSpec

Result = str | ToolError | Callable[[dict[str, Any]], str]
"""What a call of one tool gives: this text, this error raised, or the text a function of
the arguments returns (it may raise ``ToolError`` too)."""


class ScriptedToolSession:
    """Offers ``tools``; a call of tool ``name`` answers with ``results[name]``.

    A tool without a result, or a name the session does not offer, fails as an MCP server
    would (``ToolError``, JSON-RPC code -32602). Setting ``list_error`` makes ``list_tools``
    raise it. ``lists`` counts listings, ``calls`` keeps every (name, arguments) in order,
    ``opened`` every server a connector opened this session for (headers included) and
    ``closed`` how many of those openings were closed.
    """

    def __init__(self, tools: Sequence[ToolSpec],
                 results: Mapping[str, Result] | None = None) -> None:
        self.tools = list(tools)
        self.results = dict(results or {})
        self.list_error: ToolError | None = None
        self.lists = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.opened: list[McpServer] = []
        self.closed = 0

    async def list_tools(self) -> list[ToolSpec]:
        self.lists += 1
        if self.list_error is not None:
            raise self.list_error
        return list(self.tools)

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        self.calls.append((name, arguments))
        result = self.results.get(name)
        if result is None or all(tool.name != name for tool in self.tools):
            raise ToolError(f"Unknown tool: {name}", code=-32602)
        if isinstance(result, ToolError):
            raise result
        if isinstance(result, str):
            return result
        return result(arguments)


def scripted_connector(
        sessions: ScriptedToolSession | Mapping[str, ScriptedToolSession | ToolError],
) -> Connector:
    """A ``Connector`` that opens ``sessions``: one session for every server, or the session
    of each server's label. A ``ToolError`` in its place (or a label missing from the mapping)
    is raised on connecting, as an unreachable server's would be."""

    @contextlib.asynccontextmanager
    async def connect(server: McpServer) -> AsyncIterator[ScriptedToolSession]:
        if isinstance(sessions, ScriptedToolSession):
            found: ScriptedToolSession | ToolError | None = sessions
        else:
            found = sessions.get(server.label)
        if found is None:
            raise ToolError(f"MCP server '{server.label}' could not be reached.")
        if isinstance(found, ToolError):
            raise found
        found.opened.append(server)
        try:
            yield found
        finally:
            found.closed += 1

    return connect
