"""The ``mcp`` tool of a request: validated, echoed without its secrets, and read into an
``McpServer`` that says which of the server's tools may be used and which need an approval.

Rule: ``headers`` (and ``authorization``) are secret: they live only in ``McpServer.headers``,
never in the echo the Response shows, the store or a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from respond.errors import InvalidRequest

_LABEL = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MCP_KEYS = {"type", "server_label", "server_url", "headers", "allowed_tools",
             "require_approval", "server_description", "authorization"}


@dataclass(frozen=True, slots=True)
class ToolFilter:
    """``{tool_names, read_only}``: matches a tool by name, or by its read-only hint."""

    names: frozenset[str] | None = None
    read_only: bool | None = None

    def matches(self, name: str, annotations: dict[str, Any] | None) -> bool:
        if self.names is not None and name in self.names:
            return True
        if self.read_only is not None:
            hint = bool((annotations or {}).get("readOnlyHint")
                        or (annotations or {}).get("read_only"))
            return hint == self.read_only
        return False


@dataclass(frozen=True, slots=True)
class McpServer:
    """One ``mcp`` tool of a request. ``headers`` are secret: never echoed, stored or logged."""

    label: str
    url: str
    headers: dict[str, str] = field(repr=False)
    allowed: ToolFilter | None
    approval: str | dict[str, Any]
    description: str | None
    echo: dict[str, Any]  # the tool as the Response shows it

    def allows(self, name: str, annotations: dict[str, Any] | None) -> bool:
        return self.allowed is None or self.allowed.matches(name, annotations)

    def needs_approval(self, name: str, annotations: dict[str, Any] | None) -> bool:
        if self.approval == "never":
            return False
        if self.approval == "always" or not isinstance(self.approval, dict):
            return True
        never = self.approval.get("never")
        always = self.approval.get("always")
        if always and _filter(always, "").matches(name, annotations):
            return True
        return not (never and _filter(never, "").matches(name, annotations))


def _filter(raw: Any, param: str) -> ToolFilter:
    if isinstance(raw, list):
        if not all(isinstance(n, str) for n in raw):
            raise InvalidRequest(f"Invalid value for '{param}': expected tool names.",
                                 param=param, code="invalid_value")
        return ToolFilter(names=frozenset(raw))
    if isinstance(raw, dict):
        unknown = set(raw) - {"tool_names", "read_only"}
        if unknown:
            key = min(unknown)
            raise InvalidRequest(f"Unknown parameter: '{param}.{key}'.", param=f"{param}.{key}",
                                 code="unknown_parameter")
        names = raw.get("tool_names")
        if names is not None and (not isinstance(names, list)
                                  or not all(isinstance(n, str) for n in names)):
            raise InvalidRequest(f"Invalid value for '{param}.tool_names': expected a list of "
                                 "tool names.", param=f"{param}.tool_names", code="invalid_value")
        read_only = raw.get("read_only")
        if read_only is not None and not isinstance(read_only, bool):
            raise InvalidRequest(f"Invalid type for '{param}.read_only': expected a boolean.",
                                 param=f"{param}.read_only", code="invalid_type")
        return ToolFilter(frozenset(names) if names is not None else None, read_only)
    raise InvalidRequest(f"Invalid type for '{param}': expected a list or an object.",
                         param=param, code="invalid_type")


def mcp_server(tool: dict[str, Any], param: str) -> McpServer:
    for key in tool:
        if key not in _MCP_KEYS:
            raise InvalidRequest(f"Unknown parameter: '{param}.{key}'.", param=f"{param}.{key}",
                                 code="unknown_parameter")
    label = tool.get("server_label")
    if not isinstance(label, str) or not _LABEL.match(label):
        raise InvalidRequest(f"Invalid value for '{param}.server_label': labels are 1-64 "
                             "letters, digits, '_' or '-'.", param=f"{param}.server_label",
                             code="invalid_value" if label is not None
                             else "missing_required_parameter")
    url = tool.get("server_url")
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise InvalidRequest(f"Invalid value for '{param}.server_url': an http(s) URL is "
                             "required.", param=f"{param}.server_url",
                             code="invalid_value" if url is not None
                             else "missing_required_parameter")
    headers = tool.get("headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise InvalidRequest(f"Invalid type for '{param}.headers': expected an object of "
                             "strings.", param=f"{param}.headers", code="invalid_type")
    headers = dict(headers)
    if isinstance(tool.get("authorization"), str):
        headers.setdefault("Authorization", f"Bearer {tool['authorization']}")
    allowed_raw = tool.get("allowed_tools")
    allowed = None if allowed_raw is None else _filter(allowed_raw, f"{param}.allowed_tools")
    approval = tool.get("require_approval")
    if approval is None:
        approval = "always"
    if isinstance(approval, dict):
        unknown = set(approval) - {"always", "never"}
        if unknown:
            key = min(unknown)
            raise InvalidRequest(f"Unknown parameter: '{param}.require_approval.{key}'.",
                                 param=f"{param}.require_approval.{key}",
                                 code="unknown_parameter")
        for key, value in approval.items():
            _filter(value, f"{param}.require_approval.{key}")
    elif approval not in ("always", "never"):
        raise InvalidRequest(f"Invalid value for '{param}.require_approval': expected "
                             "'always', 'never' or an object.",
                             param=f"{param}.require_approval", code="invalid_value")
    description = tool.get("server_description")
    echo = {
        "type": "mcp",
        "server_label": label,
        "server_url": url,
        "headers": None,
        "allowed_tools": allowed_raw,
        "require_approval": approval,
        "server_description": description,
    }
    return McpServer(label, url, headers, allowed, approval, description, echo)


def mcp_servers(tools: list[dict[str, Any]] | None) -> list[McpServer]:
    """The request's ``mcp`` tools, with their secrets (already validated by normalize_tools)."""
    servers = [mcp_server(t, f"tools[{i}]") for i, t in enumerate(tools or ())
               if t.get("type") == "mcp"]
    labels = [s.label for s in servers]
    for label in labels:
        if labels.count(label) > 1:
            raise InvalidRequest(f"Duplicate server_label '{label}' in 'tools'.", param="tools",
                                 code="invalid_value")
    return servers
