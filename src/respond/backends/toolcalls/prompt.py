"""The prompt of a model without tool support: the tool list and call format in the system
message, and history rewritten into the text form the model reads and writes.

Rule: inputs are never changed; every function returns new messages or text.
"""

from __future__ import annotations

import json
from typing import Any

from respond.backends.toolcalls.plan import CLOSE, OPEN, RESPONSE_CLOSE, RESPONSE_OPEN, CallPlan
from respond.domain import ChatMessage


def call_text(name: str, arguments: Any) -> str:
    """One call in the text form the model reads and writes."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # shown as the string it is: history is replayed, not judged
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}{body}{CLOSE}"


def tool_instructions(plan: CallPlan) -> str:
    lines = [(
        "You can call functions. Each line below describes one function: its name, what it "
        "does, and the JSON schema of its arguments."
    )]
    for function in plan.functions:
        lines.append(json.dumps(function, ensure_ascii=False))
    lines.append("")
    lines.append(
        f'To call a function, write {OPEN}{{"name": "<function name>", "arguments": '
        f"{{<arguments as JSON>}}}}{CLOSE} and nothing else. Fill the arguments from the "
        "conversation, following the schema."
    )
    lines.append(
        f"A function's result comes back inside {RESPONSE_OPEN}{RESPONSE_CLOSE}; then answer "
        "the user in plain words, using that result."
    )
    if plan.required and len(plan.allowed) == 1:
        lines.append(f"Now call the function {plan.allowed[0]}.")
    elif plan.required:
        lines.append("Now call the one function that fits the request best.")
    else:
        lines.append(f"Call a function only to get information you do not have yet. When a "
                     f"{RESPONSE_OPEN} has it, answer the user directly.")
    return "\n".join(lines)


def render_messages(messages: list[ChatMessage], plan: CallPlan | None, *,
                    result_role: str = "user") -> list[ChatMessage]:
    """Messages a template without tool support renders faithfully (inputs are not changed).

    Assistant calls become plain text in the call format; tool results become one message
    of ``result_role`` per run of results, each wrapped in ``<tool_response>``. A template
    that prints any role (ChatML) can take ``"tool"``, which small models read as a result
    rather than as a new question; others need ``"user"``.
    """
    out: list[ChatMessage] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            text = f"{RESPONSE_OPEN}\n{_content_text(message.get('content'))}\n{RESPONSE_CLOSE}"
            last = out[-1] if out else None
            if last is not None and last.get("_tool_results"):
                last["content"] += "\n" + text
            else:
                out.append({"role": result_role, "content": text, "_tool_results": True})
        elif role == "assistant" and message.get("tool_calls"):
            parts = [_content_text(message.get("content"))] if message.get("content") else []
            for call in message["tool_calls"]:
                fn = call.get("function") or {}
                parts.append(call_text(fn.get("name", ""), fn.get("arguments", "")))
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append(dict(message))
    for message in out:
        message.pop("_tool_results", None)
    if plan is not None:
        instructions = tool_instructions(plan)
        if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
            out[0]["content"] = f"{out[0]['content']}\n\n{instructions}"
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def needs_rendering(messages: list[ChatMessage]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
