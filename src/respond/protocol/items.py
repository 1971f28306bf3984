"""Input items: the many shapes a client may send, normalised to the stored resource form.

Every stored item has an ``id`` and is shaped as ``GET /responses/{id}/input_items`` returns
it: short ``{role, content}`` messages become typed ``message`` items with ``status``, string
content becomes a list of parts, nothing is flattened (images and files keep their fields).
``item_reference`` entries are left for the caller to resolve against the store.
"""

from __future__ import annotations

from typing import Any

from respond.errors import InvalidRequest, UnsupportedParameter
from respond.ids import new_id

Item = dict[str, Any]

INPUT_ROLES = ("user", "system", "developer")
INPUT_PARTS = ("input_text", "input_image", "input_file")
OUTPUT_PARTS = ("output_text", "refusal")


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _require_str(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if value is None:
        raise _bad(f"Missing required parameter: '{param}.{key}'.", f"{param}.{key}",
                   "missing_required_parameter")
    if not isinstance(value, str):
        raise _bad(f"Invalid type for '{param}.{key}': expected a string.", f"{param}.{key}",
                   "invalid_type")
    return value


def _optional_str(obj: dict[str, Any], key: str, param: str) -> str | None:
    """A string field that may be absent (or null); an empty string counts as absent."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"Invalid type for '{param}.{key}': expected a string.", f"{param}.{key}",
                   "invalid_type")
    return value


def _input_part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _bad(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    kind = part.get("type")
    if kind == "input_text":
        return {"type": "input_text", "text": _require_str(part, "text", param)}
    if kind == "input_image":
        url = _optional_str(part, "image_url", param)
        file_id = _optional_str(part, "file_id", param)
        if (url is None) == (file_id is None):
            raise _bad(f"Provide exactly one of '{param}.image_url' and '{param}.file_id'.",
                       f"{param}.image_url", "missing_required_parameter" if url is None
                       else "invalid_value")
        if url is not None and not url.lower().startswith(("data:", "http://", "https://")):
            raise _bad(f"Invalid value for '{param}.image_url': expected an http(s) URL or a "
                       "data URL (data:image/png;base64,...).", f"{param}.image_url")
        detail = part.get("detail") or "auto"
        if detail not in ("auto", "low", "high", "original"):
            raise _bad(f"Invalid value for '{param}.detail': '{detail}'.", f"{param}.detail")
        return {"type": "input_image", "detail": detail, "file_id": file_id, "image_url": url}
    if kind == "input_file":
        sources = [k for k in ("file_id", "file_data", "file_url")
                   if _optional_str(part, k, param) is not None]
        if len(sources) != 1:
            raise _bad(f"Provide exactly one of '{param}.file_id', '{param}.file_data' and "
                       f"'{param}.file_url'.", f"{param}.{sources[1] if sources else 'file_id'}",
                       "invalid_value" if sources else "missing_required_parameter")
        filename = _optional_str(part, "filename", param)
        if sources == ["file_data"] and filename is None:
            raise _bad(f"Missing required parameter: '{param}.filename' (required with "
                       "'file_data').", f"{param}.filename", "missing_required_parameter")
        if sources == ["file_url"] and not part["file_url"].lower().startswith(
                ("http://", "https://")):
            raise _bad(f"Invalid value for '{param}.file_url': expected an http(s) URL.",
                       f"{param}.file_url")
        detail = part.get("detail")
        if detail is not None and detail not in ("auto", "low", "high"):
            raise _bad(f"Invalid value for '{param}.detail': '{detail}'.", f"{param}.detail")
        keep = ("file_id", "file_data", "file_url", "filename", "detail")
        return {"type": "input_file", **{k: part[k] for k in keep if part.get(k) is not None}}
    if kind in OUTPUT_PARTS:
        raise _bad(f"Invalid value: '{kind}'. Supported values are: 'input_text', "
                   "'input_image', and 'input_file'.", f"{param}.type")
    raise _bad(f"Invalid value: '{kind}'. Supported values are: 'input_text', 'input_image', "
               "and 'input_file'.", f"{param}.type")


def _output_part(part: Any, param: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _bad(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    kind = part.get("type")
    if kind == "output_text":
        return {
            "type": "output_text",
            "text": _require_str(part, "text", param),
            "annotations": list(part.get("annotations") or []),
            "logprobs": list(part.get("logprobs") or []),
        }
    if kind == "refusal":
        return {"type": "refusal", "refusal": _require_str(part, "refusal", param)}
    raise _bad(f"Invalid value: '{kind}'. Supported values are: 'output_text' and 'refusal'.",
               f"{param}.type")


def _message(raw: dict[str, Any], param: str) -> Item:
    role = raw.get("role")
    content = raw.get("content")
    if role not in (*INPUT_ROLES, "assistant"):
        raise _bad(f"Invalid value: '{role}'. Supported values are: 'user', 'system', "
                   "'developer', and 'assistant'.", f"{param}.role")
    if content is None:
        raise _bad(f"Missing required parameter: '{param}.content'.", f"{param}.content",
                   "missing_required_parameter")
    if role == "assistant":
        if isinstance(content, str):
            parts = [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}]
        elif isinstance(content, list):
            parts = [_output_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
        else:
            raise _bad(f"Invalid type for '{param}.content': expected a string or an array.",
                       f"{param}.content", "invalid_type")
        return {
            "id": raw.get("id") or new_id("message"),
            "type": "message",
            "role": "assistant",
            "status": raw.get("status") or "completed",
            "content": parts,
        }
    if isinstance(content, str):
        parts = [{"type": "input_text", "text": content}]
    elif isinstance(content, list):
        parts = [_input_part(p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise _bad(f"Invalid type for '{param}.content': expected a string or an array.",
                   f"{param}.content", "invalid_type")
    return {
        "id": raw.get("id") or new_id("message"),
        "type": "message",
        "role": role,
        "status": raw.get("status") or "completed",
        "content": parts,
    }


def _function_call(raw: dict[str, Any], param: str) -> Item:
    return {
        "id": raw.get("id") or new_id("function_call"),
        "type": "function_call",
        "call_id": _require_str(raw, "call_id", param),
        "name": _require_str(raw, "name", param),
        "arguments": _require_str(raw, "arguments", param),
        "status": raw.get("status") or "completed",
    }


def _function_call_output(raw: dict[str, Any], param: str) -> Item:
    output = raw.get("output")
    if isinstance(output, list):
        output = [_input_part(p, f"{param}.output[{j}]") for j, p in enumerate(output)]
    elif not isinstance(output, str):
        raise _bad(f"Invalid type for '{param}.output': expected a string or an array.",
                   f"{param}.output", "invalid_type")
    return {
        "id": raw.get("id") or new_id("function_call_output"),
        "type": "function_call_output",
        "call_id": _require_str(raw, "call_id", param),
        "output": output,
        "status": raw.get("status") or "completed",
    }


def _reasoning(raw: dict[str, Any], param: str) -> Item:
    item = {
        "id": _require_str(raw, "id", param),
        "type": "reasoning",
        "summary": list(raw.get("summary") or []),
    }
    for key in ("content", "encrypted_content", "status"):
        if raw.get(key) is not None:
            item[key] = raw[key]
    return item


def _mcp_approval_response(raw: dict[str, Any], param: str) -> Item:
    approve = raw.get("approve")
    if not isinstance(approve, bool):
        raise _bad(f"Invalid type for '{param}.approve': expected a boolean.", f"{param}.approve",
                   "invalid_type" if approve is not None else "missing_required_parameter")
    reason = raw.get("reason")
    return {
        "id": raw.get("id") or new_id("mcp_approval_response"),
        "type": "mcp_approval_response",
        "approval_request_id": _require_str(raw, "approval_request_id", param),
        "approve": approve,
        "reason": reason if isinstance(reason, str) else None,
    }


def _mcp_approval_request(raw: dict[str, Any], param: str) -> Item:
    return {
        "id": _require_str(raw, "id", param),
        "type": "mcp_approval_request",
        "server_label": _require_str(raw, "server_label", param),
        "name": _require_str(raw, "name", param),
        "arguments": _require_str(raw, "arguments", param),
    }


def _mcp_list_tools(raw: dict[str, Any], param: str) -> Item:
    tools = raw.get("tools")
    if not isinstance(tools, list):
        raise _bad(f"Invalid type for '{param}.tools': expected an array.", f"{param}.tools",
                   "invalid_type")
    return {
        "id": _require_str(raw, "id", param),
        "type": "mcp_list_tools",
        "server_label": _require_str(raw, "server_label", param),
        "tools": tools,
        "error": raw.get("error"),
    }


def _mcp_call(raw: dict[str, Any], param: str) -> Item:
    return {
        "id": _require_str(raw, "id", param),
        "type": "mcp_call",
        "status": raw.get("status") or "completed",
        "server_label": _require_str(raw, "server_label", param),
        "name": _require_str(raw, "name", param),
        "arguments": _require_str(raw, "arguments", param),
        "output": raw.get("output"),
        "error": raw.get("error"),
        "approval_request_id": raw.get("approval_request_id"),
    }


_BUILDERS = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "reasoning": _reasoning,
    "mcp_approval_response": _mcp_approval_response,
    "mcp_approval_request": _mcp_approval_request,
    "mcp_list_tools": _mcp_list_tools,
    "mcp_call": _mcp_call,
}


def normalize_input(value: str | list[Any] | None) -> list[Item]:
    """The request's ``input`` as a list of stored-form items (``item_reference`` kept as is)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message({"role": "user", "content": value}, "input[0]")]
    items: list[Item] = []
    for i, raw in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(raw, dict):
            raise _bad(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
        kind = raw.get("type")
        if kind is None and "role" in raw:
            kind = "message"
        if kind == "item_reference":
            items.append({"type": "item_reference", "id": _require_str(raw, "id", param)})
            continue
        builder = _BUILDERS.get(kind)  # type: ignore[arg-type]
        if builder is None:
            raise UnsupportedParameter(
                f"Unsupported value: input item type '{kind}' is not available.",
                param=f"{param}.type",
            )
        items.append(builder(raw, param))
    return items
