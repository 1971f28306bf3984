"""History: from stored items to the Chat Completions messages a backend sees.

Storage keeps every item losslessly; this module decides how each one reads to a model.
Images and files read as ``media`` resolved them (engine/media.py): a file as its text, an
image as a data URL. A function's output may hold images and files too: its text and files
go in the tool message, and since Chat Completions tool messages carry text only, its images
follow in a user message placed after the run of tool messages it belongs to (a tool
message must follow its call directly). Truncation drops whole turns from the oldest end so
a tool call never loses its output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from respond.domain import ChatMessage
from respond.errors import InvalidRequest

Item = dict[str, Any]
Media = Mapping[tuple[str, int], dict[str, Any]]  # (item id, part index) -> resolved part

_CHAT_ROLE = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def _read_parts(item: Item, parts: list[Any], vision: bool, media: Media,
                holder: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts of ``parts`` (a file as its text), and every part as a chat part, images
    included. ``holder`` says where an image sits, for a text-only model's refusal."""
    texts: list[str] = []
    rich: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            texts.append(part["text"])
            rich.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            if not vision:
                # the request's own input was checked by the service: this image is history
                raise InvalidRequest(
                    f"This model does not accept images, and {holder} continued with "
                    "'previous_response_id' contains one. Use a model configured with "
                    "vision = true.", param="previous_response_id", code="invalid_value",
                )
            rich.append(_resolved(media, item, index))
        elif kind == "input_file":
            resolved = _resolved(media, item, index)
            texts.append(resolved["text"])
            rich.append(resolved)
    return texts, rich


def _user_content(item: Item, vision: bool, media: Media) -> str | list[Any]:
    texts, rich = _read_parts(item, item["content"], vision, media, "the conversation")
    if len(rich) == len(texts):
        return "\n".join(texts)
    return rich


def media_parts(item: Item) -> tuple[str, list[Any]] | None:
    """The field of ``item`` that may hold images and files, and its parts: a user, system or
    developer message's ``content``, a function output's ``output`` when it is an array."""
    kind = item.get("type")
    if kind == "message" and item.get("role") != "assistant":
        content = item.get("content")
        return ("content", content) if isinstance(content, list) else None
    if kind == "function_call_output":
        output = item.get("output")
        return ("output", output) if isinstance(output, list) else None
    return None


def _function_output(item: Item, vision: bool, media: Media) -> tuple[str, list[Any]]:
    """A function output as (the tool message's text, the images that must follow it)."""
    output = item.get("output")
    if not isinstance(output, list):
        return (output if isinstance(output, str) else ""), []
    texts, rich = _read_parts(item, output, vision, media,
                              "a function output in the conversation")
    return "\n".join(texts), [part for part in rich if part.get("type") == "image_url"]


def _resolved(media: Media, item: Item, index: int) -> dict[str, Any]:
    part = media.get((item["id"], index))
    if part is None:  # the caller did not resolve this context: a bug, not a client error
        raise LookupError(f"part {index} of item {item['id']} was not resolved")
    return part


def _assistant_text(parts: list[dict[str, Any]]) -> str:
    out = []
    for part in parts:
        if part.get("type") == "output_text":
            out.append(part.get("text", ""))
        elif part.get("type") == "refusal":
            out.append(part.get("refusal", ""))
    return "".join(out)


def to_messages(instructions: str | None, items: list[Item], *, vision: bool,
                media: Media | None = None) -> list[ChatMessage]:
    """The chat messages for ``instructions`` followed by ``items`` in order; ``media``
    holds the resolved images and files of ``items`` (``MediaResolver.resolve``)."""
    messages: list[ChatMessage] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    declined = {i["approval_request_id"]: i for i in items
                if i.get("type") == "mcp_approval_response" and not i.get("approve")}
    pending_images: list[Any] = []  # of function outputs, sent once their tool run ends
    for item in items:
        kind = item.get("type")
        if pending_images and kind != "function_call_output":
            messages.append({"role": "user", "content": pending_images})
            pending_images = []
        if kind == "message":
            role = _CHAT_ROLE[item["role"]]
            if role == "assistant":
                messages.append({"role": "assistant", "content": _assistant_text(item["content"])})
            else:
                content = _user_content(item, vision, media or {})
                messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and last.get("content"):
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            text, images = _function_output(item, vision, media or {})
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
            if images:
                pending_images.append({"type": "text", "text": "Images returned by the "
                                       f"function call {item['call_id']}:"})
                pending_images.extend(images)
        elif kind == "mcp_call":
            _call_with_result(messages, item["id"], item["name"], item.get("arguments") or "{}",
                              item["output"] if item.get("error") is None
                              else f"Error: {_error_text(item['error'])}")
        elif kind == "mcp_approval_request" and item["id"] in declined:
            reason = declined[item["id"]].get("reason")
            _call_with_result(messages, item["id"], item["name"], item.get("arguments") or "{}",
                              "The user declined this call; it was not made."
                              + (f" Reason: {reason}" if reason else ""))
        # reasoning and other items stay in storage but are not shown to chat backends
    if pending_images:
        messages.append({"role": "user", "content": pending_images})
    return messages


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        if error.get("message"):
            return str(error["message"])
        content = error.get("content")
        if isinstance(content, list):
            return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(error)


def _call_with_result(messages: list[ChatMessage], call_id: str, name: str, arguments: str,
                      result: Any) -> None:
    """A call respond ran for the model, as the model would have seen it: call, then result."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last \
            and not any(m["role"] == "tool" for m in messages[-1:]):
        last["tool_calls"].append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    messages.append({"role": "tool", "tool_call_id": call_id, "content": str(result)})


def turn_starts(items: list[Item]) -> list[int]:
    """Indexes where a user turn begins: the only safe places to cut a history."""
    return [i for i, item in enumerate(items)
            if item.get("type") == "message" and item.get("role") == "user"]
