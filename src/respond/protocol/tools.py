"""Tools, tool choice and text formats: validated, echoed with defaults, and translated to
the Chat Completions vocabulary every backend speaks.

A schema in a request is checked by ``schemas``; an ``mcp`` tool is read by ``mcp_tool``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from respond.errors import InvalidRequest, UnsupportedParameter
from respond.protocol.mcp_tool import McpServer, mcp_server, mcp_servers
from respond.protocol.schemas import check_schema

# a request's tools include its mcp tools: callers read both through this module
__all__ = ["McpServer", "ToolPlan", "mcp_servers", "normalize_tools", "plan_tools",
           "response_format"]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def normalize_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tools with defaults filled, as the Response echoes them; refuses what we don't run."""
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, tool in enumerate(tools or ()):
        param = f"tools[{i}]"
        kind = tool.get("type")
        if kind == "mcp":
            out.append(_mcp_echo(mcp_server(tool, param)))
            continue
        if kind != "function":
            raise UnsupportedParameter(
                f"Unsupported value for '{param}.type': tool type '{kind}' is not available.",
                param=f"{param}.type")
        allowed = {"type", "name", "description", "parameters", "strict"}
        for key in tool:
            if key not in allowed:
                raise InvalidRequest(f"Unknown parameter: '{param}.{key}'.",
                                     param=f"{param}.{key}", code="unknown_parameter")
        name = tool.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(
                f"Invalid value for '{param}.name': names are 1-64 letters, digits, '_' or '-'.",
                param=f"{param}.name", code="invalid_value")
        if name in names:
            raise InvalidRequest(f"Duplicate tool name '{name}' in '{param}.name'.",
                                 param=f"{param}.name", code="invalid_value")
        names.add(name)
        parameters = tool.get("parameters")
        if parameters is None:
            parameters = dict(_EMPTY_PARAMETERS)
        check_schema(parameters, f"{param}.parameters")
        strict = tool.get("strict")
        out.append({
            "type": "function",
            "name": name,
            "description": tool.get("description"),
            "parameters": parameters,
            "strict": True if strict is None else bool(strict),
        })
    return out


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What the backend is offered and whether it must call."""

    tools: list[dict[str, Any]]  # the function tools the model may call (Responses shape)
    mode: str  # "none" | "auto" | "required"
    forced: str | None = None  # the one function that must be called
    forced_mcp: tuple[str, str | None] | None = None  # (server_label, tool name or None)

    def chat_tools(self) -> list[dict[str, Any]] | None:
        if not self.tools or self.mode == "none":
            return None
        return [{"type": "function", "function": {
            "name": t["name"],
            **({"description": t["description"]} if t.get("description") else {}),
            "parameters": t["parameters"],
            **({"strict": True} if t.get("strict") else {}),
        }} for t in self.tools]

    def chat_tool_choice(self) -> Any:
        if not self.tools or self.mode == "none":
            return None
        if self.forced is not None:
            return {"type": "function", "function": {"name": self.forced}}
        return self.mode


def plan_tools(all_tools: list[dict[str, Any]], choice: Any) -> ToolPlan:
    """Resolve ``tool_choice`` against the tools; a choice naming a missing tool is a 400."""
    tools = [t for t in all_tools if t["type"] == "function"]
    labels = {t["server_label"] for t in all_tools if t["type"] == "mcp"}
    by_name = {t["name"]: t for t in tools}
    if choice is None or choice == "auto":
        return ToolPlan(tools, "auto" if all_tools else "none")
    if choice == "none":
        return ToolPlan(tools, "none")
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        label = choice.get("server_label")
        if not isinstance(label, str) or label not in labels:
            raise InvalidRequest(f"Invalid value for 'tool_choice.server_label': no mcp tool "
                                 f"with server_label '{label}' in 'tools'.",
                                 param="tool_choice.server_label", code="invalid_value")
        name = choice.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidRequest("Invalid type for 'tool_choice.name': expected a string.",
                                 param="tool_choice.name", code="invalid_type")
        return ToolPlan(tools, "required", forced_mcp=(label, name))
    if choice == "required":
        if not all_tools:
            raise InvalidRequest("Invalid value for 'tool_choice': 'required' needs at least "
                                 "one tool in 'tools'.", param="tool_choice", code="invalid_value")
        return ToolPlan(tools, "required")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            name = choice.get("name")
            if name not in by_name:
                raise InvalidRequest(f"Invalid value for 'tool_choice': no function named "
                                     f"'{name}' in 'tools'.", param="tool_choice.name",
                                     code="invalid_value")
            return ToolPlan(tools, "required", forced=name)
        if kind == "allowed_tools":
            mode = choice.get("mode", "auto")
            if mode not in ("auto", "required"):
                raise InvalidRequest("Invalid value for 'tool_choice.mode': expected 'auto' or "
                                     "'required'.", param="tool_choice.mode", code="invalid_value")
            subset = []
            for j, ref in enumerate(choice.get("tools") or ()):
                if not isinstance(ref, dict) or ref.get("type") != "function" \
                        or ref.get("name") not in by_name:
                    raise InvalidRequest(
                        f"Invalid value for 'tool_choice.tools[{j}]': it names no function "
                        "in 'tools'.", param=f"tool_choice.tools[{j}]", code="invalid_value")
                subset.append(by_name[ref["name"]])
            if not subset:
                raise InvalidRequest("Invalid value for 'tool_choice.tools': empty.",
                                     param="tool_choice.tools", code="invalid_value")
            forced = subset[0]["name"] if mode == "required" and len(subset) == 1 else None
            return ToolPlan(subset, mode, forced=forced)
        raise UnsupportedParameter(f"Unsupported value for 'tool_choice.type': '{kind}'.",
                                   param="tool_choice.type")
    raise InvalidRequest(f"Invalid value for 'tool_choice': '{choice}'. Supported values are "
                         "'none', 'auto' and 'required'.", param="tool_choice",
                         code="invalid_value")


def response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as a Chat Completions ``response_format`` (validated); None for text."""
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    name = fmt.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest("Invalid value for 'text.format.name': names are 1-64 letters, "
                             "digits, '_' or '-'.", param="text.format.name",
                             code="invalid_value" if name is not None else
                             "missing_required_parameter")
    if "schema" not in fmt:
        raise InvalidRequest("Missing required parameter: 'text.format.schema'.",
                             param="text.format.schema", code="missing_required_parameter")
    check_schema(fmt["schema"], "text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": fmt["schema"]}
    if fmt.get("strict") is not None:
        spec["strict"] = bool(fmt["strict"])
    if fmt.get("description"):
        spec["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": spec}


def _mcp_echo(server: McpServer) -> dict[str, Any]:
    return dict(server.echo)
