"""Tools, tool choice and text formats: validated, echoed with defaults, and translated to
the Chat Completions vocabulary every backend speaks.

Rules for a schema (a function's ``parameters``, ``text.format.schema``): it must be valid
for its dialect (``$schema``, else 2020-12), and every ``$ref`` in it must resolve inside
the schema itself, to a schema: a JSON pointer (``#/$defs/...``, ``#/definitions/...``,
``#`` for recursion), an anchor, or a resource it embeds under an ``$id``. Nothing is ever
fetched, so a reference to another document is refused as well: neither the decoder nor
the model could follow it. Each refusal names the parameter and, where it helps, the place
inside the schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema

from respond.errors import InvalidRequest, UnsupportedParameter

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _check_schema(schema: Any, param: str) -> None:
    if not isinstance(schema, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected a JSON schema object.",
                             param=param, code="invalid_type")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise _schema_error(param, where, exc.message) from None
    _check_refs(schema, param)


def _schema_error(param: str, where: str, message: str) -> InvalidRequest:
    at = f" at '{where}'" if where else ""
    return InvalidRequest(f"Invalid schema for '{param}'{at}: {message}", param=param,
                          code="invalid_value")


# keywords whose value is a schema or a list of schemas (``items`` is either, by draft)
_SCHEMA_KEYWORDS = frozenset({
    "additionalItems", "additionalProperties", "allOf", "anyOf", "contains", "contentSchema",
    "else", "if", "items", "not", "oneOf", "prefixItems", "propertyNames", "then",
    "unevaluatedItems", "unevaluatedProperties",
})
# keywords whose value maps names to schemas
_NAMED_SCHEMA_KEYWORDS = frozenset({
    "$defs", "definitions", "dependencies", "dependentSchemas", "patternProperties",
    "properties",
})


def _subschemas(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The object schemas directly inside ``schema``, each with its path from the root
    (``const``, ``enum``, ``default`` and ``examples`` hold data, never schemas)."""
    for key, value in schema.items():
        if key in _SCHEMA_KEYWORDS and isinstance(value, list):
            children = [(f"{key}/{i}", child) for i, child in enumerate(value)]
        elif key in _SCHEMA_KEYWORDS:
            children = [(key, value)]
        elif key in _NAMED_SCHEMA_KEYWORDS and isinstance(value, dict):
            children = [(f"{key}/{name}", child) for name, child in value.items()]
        else:
            continue
        for where, child in children:
            if isinstance(child, dict):
                yield f"{path}/{where}" if path else where, child


def _check_refs(schema: dict[str, Any], param: str) -> None:
    """Refuse the first ``$ref`` of ``schema`` (in document order) that does not resolve
    inside it. Relative references resolve against the ``$id``s around them."""
    dialect = schema.get("$schema")
    specification = referencing.jsonschema.specification_with(
        dialect if isinstance(dialect, str) else "", default=referencing.jsonschema.DRAFT202012)
    root = referencing.Registry().resolver_with_root(specification.create_resource(schema))
    pending = [("", schema, root)]
    while pending:
        where, node, resolver = pending.pop()
        resolver = resolver.in_subresource(specification.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            _check_ref(ref, resolver.lookup, param, where)
        pending.extend(reversed([(path, child, resolver)
                                 for path, child in _subschemas(node, where)]))


def _check_ref(ref: str, lookup: Callable[[str], Any], param: str, where: str) -> None:
    try:
        target = lookup(ref).contents
    except (referencing.exceptions.PointerToNowhere, referencing.exceptions.NoSuchAnchor,
            referencing.exceptions.InvalidAnchor, ValueError):
        raise _schema_error(param, where, f"the reference '{ref}' does not resolve inside "
                            "the schema.") from None
    except referencing.exceptions.Unresolvable:  # the document it names is not in the schema
        raise _schema_error(param, where, f"the reference '{ref}' does not resolve inside "
                            "the schema (other documents are never fetched).") from None
    if not isinstance(target, (dict, bool)):
        raise _schema_error(param, where, f"the reference '{ref}' points to a value that is "
                            "not a schema.")


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
        _check_schema(parameters, f"{param}.parameters")
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
    _check_schema(fmt["schema"], "text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": fmt["schema"]}
    if fmt.get("strict") is not None:
        spec["strict"] = bool(fmt["strict"])
    if fmt.get("description"):
        spec["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": spec}


# -- remote MCP servers ----------------------------------------------------------------------

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


def _mcp_echo(server: McpServer) -> dict[str, Any]:
    return dict(server.echo)


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
