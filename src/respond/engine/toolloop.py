"""Server-side tools of one response: remote MCP servers, their listings, calls and approvals.

``ServerTools`` lives as long as one response. It opens one session per MCP server, lazily,
and closes them all at the end. Listings already in the conversation's context are reused
(a server is listed once per conversation); the tools it offers the model are the listed
ones that ``allowed_tools`` lets through, as Chat Completions functions.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson

from respond.engine.events import Event, EventBuilder
from respond.protocol.tools import McpServer
from respond.tools import Connector, ToolError, ToolSession, ToolSpec

log = logging.getLogger(__name__)

MAX_TOOL_TURNS = 16  # model turns in one response, whatever the tools ask for


def _spec_item(spec: ToolSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description,
            "input_schema": spec.input_schema, "annotations": spec.annotations}


class ServerTools:
    """The MCP servers of one response."""

    def __init__(self, servers: list[McpServer], connect: Connector | None) -> None:
        self.servers = {s.label: s for s in servers}
        self._connect = connect
        self._stack = contextlib.AsyncExitStack()
        self._sessions: dict[str, ToolSession] = {}
        self.listings: dict[str, list[dict[str, Any]]] = {}  # label -> tools (item form)
        self._names: dict[str, tuple[str, str]] = {}  # chat function name -> (label, tool)
        self.calls_run = 0

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def _session(self, label: str) -> ToolSession:
        session = self._sessions.get(label)
        if session is None:
            if self._connect is None:
                raise ToolError("Remote MCP servers are not available on this server.")
            session = await self._stack.enter_async_context(self._connect(self.servers[label]))
            self._sessions[label] = session
        return session

    # -- listings ------------------------------------------------------------------------

    def reuse_listings(self, context: list[dict[str, Any]]) -> None:
        """Take listings already in the conversation (the latest one of each label)."""
        for item in context:
            if (item.get("type") == "mcp_list_tools" and item.get("server_label") in self.servers
                    and not item.get("error")):
                self.listings[item["server_label"]] = list(item.get("tools") or [])

    async def list_missing(self, builder: EventBuilder) -> list[Event]:
        """List every server not yet listed in the conversation, as mcp_list_tools items."""
        events: list[Event] = []
        for label in self.servers:
            if label in self.listings:
                continue
            events += builder.mcp_list_started(label)
            try:
                specs = await (await self._session(label)).list_tools()
            except ToolError as exc:
                log.info("listing the tools of MCP server %s failed: %s", label, exc)
                events += builder.mcp_list_done(None, str(exc))
                continue
            tools = [_spec_item(spec) for spec in specs]
            self.listings[label] = tools
            events += builder.mcp_list_done(tools, None)
        return events

    # -- what the model is offered -------------------------------------------------------

    def chat_tools(self, taken: set[str], only: str | None = None) -> list[dict[str, Any]]:
        """The allowed listed tools as Chat Completions functions (``taken``: names in use)."""
        out = []
        self._names = {}
        for label, tools in self.listings.items():
            if only is not None and label != only:
                continue
            server = self.servers[label]
            for tool in tools:
                if not server.allows(tool["name"], tool.get("annotations")):
                    continue
                name = tool["name"]
                if name in taken or name in self._names:
                    name = f"{label}__{tool['name']}"
                self._names[name] = (label, tool["name"])
                description = tool.get("description") or ""
                if server.description:
                    description = f"{description}\n(from {label}: {server.description})".strip()
                schema = tool.get("input_schema") or {"type": "object", "properties": {}}
                out.append({"type": "function", "function": {
                    "name": name, "description": description, "parameters": schema}})
        return out

    def chat_name(self, label: str, tool: str) -> str | None:
        for name, target in self._names.items():
            if target == (label, tool):
                return name
        return None

    def classify(self, name: str) -> tuple[str, ...]:
        target = self._names.get(name)
        if target is None:
            return ("function",)
        label, tool = target
        annotations = next((t.get("annotations") for t in self.listings.get(label, ())
                            if t["name"] == tool), None)
        if self.servers[label].needs_approval(tool, annotations):
            return ("approval", label, tool)
        return ("mcp", label, tool)

    # -- calls -----------------------------------------------------------------------------

    async def run(self, builder: EventBuilder) -> list[Event]:
        """Run the awaiting mcp_call and report its result."""
        call = builder.awaiting
        assert call is not None
        self.calls_run += 1
        try:
            arguments = orjson.loads(call["arguments"] or "{}")
            if not isinstance(arguments, dict):
                raise ToolError("The tool's arguments must be a JSON object.", code=-32602)
        except orjson.JSONDecodeError:
            return builder.mcp_result(None, ToolError(
                "The model produced arguments that are not valid JSON; the tool was not "
                "called.", code=-32602).error_object())
        except ToolError as exc:
            return builder.mcp_result(None, exc.error_object())
        try:
            output = await (await self._session(call["server_label"])).call(call["name"],
                                                                            arguments)
        except ToolError as exc:
            return builder.mcp_result(None, exc.error_object())
        return builder.mcp_result(output, None)
