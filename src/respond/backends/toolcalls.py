"""Function calling and structured output for models whose chat template knows no tools.

The embedded model is offered tools in its prompt and answers in one fixed text form:

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

Three pieces make that reliable:

* ``render_messages`` writes the tool list and the call format into the system message, and
  rewrites history the template cannot show: an assistant's ``tool_calls`` become the same
  text form, ``tool`` results become plain messages wrapped in ``<tool_response>`` (role
  ``tool`` where the template prints any role, as ChatML does, else ``user``).
* ``call_grammar`` / ``format_grammar`` build an LLGuidance (lark) grammar, so decoding is
  valid by construction: a forced call is exactly one call to an allowed function whose
  arguments follow its schema; in ``auto`` mode free text may never contain the marker, and
  once the marker is written the rest must be a valid call.
* ``CallParser`` turns the streamed text back into ``TextDelta`` and ``ToolCallDelta``: text
  that might be the start of the marker is held back, so call markup never reaches a client.

Rules: pure functions and a small state machine, no I/O; schemas are never trusted to be in
a shape LLGuidance fully supports, so generation uses a tightened copy (every output of the
copy is valid for the original) and each parsed call is checked against the original.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema
import referencing.exceptions

from respond.domain import ChatMessage, Delta, Finish, TextDelta, ToolCallDelta
from respond.errors import BackendError, InvalidRequest
from respond.ids import new_id

logger = logging.getLogger(__name__)

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"
_RESERVED = ("<tool_", "</tool_")  # what free text may not contain

# How the model writes JSON inside a call: one line, the separators of Python's json.dumps
# (the form small models saw most), no free whitespace to wander off into.
_JSON_STYLE = {
    "whitespace_flexible": False,
    "key_separator": ": ",
    "item_separator": ", ",
    # keywords LLGuidance cannot enforce are skipped instead of failing the whole grammar
    # (llama.cpp would then decode unconstrained, silently); each call is re-checked
    "lenient": True,
}

# Regex features of JSON-schema patterns that LLGuidance (Rust regex) rejects outright.
_UNSUPPORTED_PATTERN = re.compile(r"\(\?<?[=!]|\\[1-9]|\\k<")

_ARGUMENT_PIECE = 32  # characters per streamed arguments fragment

# Calls one turn may hold when parallel calls are allowed. A small model that starts
# repeating itself would otherwise call until it runs out of tokens; repeats are dropped.
MAX_PARALLEL_CALLS = 4


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Which functions the model is offered, and whether it must call one."""

    functions: tuple[dict[str, Any], ...]  # {"name", "description"?, "parameters"}
    allowed: tuple[str, ...]  # the names a call may use
    required: bool  # the turn must be exactly one call
    parallel: bool  # auto mode: more than one call in a turn

    @classmethod
    def of(cls, tools: list[dict[str, Any]] | None, tool_choice: Any,
           parallel_tool_calls: bool | None) -> CallPlan | None:
        """The plan for Chat Completions ``tools`` / ``tool_choice``; None without tools."""
        functions = tuple(_function(tool) for tool in tools or () if tool.get("type") == "function")
        if not functions or tool_choice == "none":
            return None
        names = tuple(f["name"] for f in functions)
        if isinstance(tool_choice, dict):
            forced = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
            if not isinstance(forced, str) or forced not in names:
                raise BackendError(f"tool_choice names no offered function: {forced!r}")
            return cls(functions, (forced,), True, False)
        if tool_choice == "required":
            return cls(functions, names, True, False)
        return cls(functions, names, False, parallel_tool_calls is not False)

    def parameters(self, name: str) -> dict[str, Any]:
        for function in self.functions:
            if function["name"] == name:
                return function["parameters"]  # type: ignore[no-any-return]
        raise KeyError(name)


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function") or tool
    parameters = fn.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["parameters"] = parameters
    return out


# ------------------------------------------------------------------------------ the prompt


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


# ----------------------------------------------------------------------------- grammars


def generation_schema(schema: Any) -> Any:
    """A copy of ``schema`` to decode with: every value it allows is valid for ``schema``.

    Objects that list their properties get ``additionalProperties: false`` unless they say
    otherwise (an open object invites a small model to invent keys until it runs out of
    tokens); patterns LLGuidance cannot compile are dropped (the parsed call is checked).
    """
    if isinstance(schema, list):
        return [generation_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions",
                   "dependentSchemas") and isinstance(value, dict):
            out[key] = {k: generation_schema(v) for k, v in value.items()}
        elif key in ("const", "enum", "default", "examples", "required"):
            out[key] = copy.deepcopy(value)
        elif key == "pattern" and isinstance(value, str) and _UNSUPPORTED_PATTERN.search(value):
            continue
        else:
            out[key] = generation_schema(value)
    if "properties" in out and "additionalProperties" not in out \
            and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def _rebase_refs(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref``s pointing into it from its new place ``base``."""
    if isinstance(schema, list):
        return [_rebase_refs(s, base) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[key] = base + value[1:]
        elif key in ("const", "enum", "default", "examples"):
            out[key] = value
        else:
            out[key] = _rebase_refs(value, base)
    return out


def call_schema(plan: CallPlan) -> dict[str, Any]:
    """The JSON schema of one call: ``{"name": <allowed>, "arguments": <its parameters>}``."""
    branches = []
    for index, name in enumerate(plan.allowed):
        parameters = generation_schema(plan.parameters(name))
        if isinstance(parameters, dict):
            parameters.pop("$schema", None)
            parameters.pop("$id", None)
        base = f"#/anyOf/{index}/properties/arguments"
        branches.append({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": _rebase_refs(parameters, base)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return {"anyOf": branches, "x-guidance": _JSON_STYLE}


def format_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema to decode a ``response_format`` with; None for free text."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object", "x-guidance": _JSON_STYLE}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = generation_schema(spec.get("schema") or {})
        if isinstance(schema, dict):
            return {**schema, "x-guidance": _JSON_STYLE}
    return None


def _lark_string(text: str) -> str:
    return json.dumps(text)


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)


def call_grammar(plan: CallPlan, *, end_token: int | None,
                 response_format: dict[str, Any] | None = None) -> str:
    """The LLGuidance grammar of a turn under ``plan``.

    Forced: exactly one call. Auto: an answer (free text that never contains the marker, or
    the JSON of ``response_format``), or text followed by one call (several when parallel).
    ``end_token`` is the model's end-of-turn token, allowed explicitly after free text: the
    grammar would otherwise mask it and the model could not stop.
    """
    call = f"{_lark_string(OPEN)} call_body {_lark_string(CLOSE)}"
    lines = ["%llguidance {}"]
    if plan.required:
        lines.append(f"start: {call}")
    else:
        end = f" <[{end_token}]>" if end_token is not None else ""
        fmt = format_schema(response_format)
        more = f' ("\\n"? {call}){{0,{MAX_PARALLEL_CALLS - 1}}}' if plan.parallel else ""
        if fmt is not None:
            lines.append(f"start: answer{end} | {call}{more}{end}")
            lines.append(f"answer: {_json_rule(fmt)}")
        else:
            lines.append(f"start: TEXT{end} | TEXT {call}{more}{end}")
            # free text never contains a tool tag: neither the call marker (once it is
            # written, the rest must be a call) nor an invented <tool_response>
            reserved = "|".join(re.escape(tag).replace("/", "\\/") for tag in _RESERVED)
            lines.append(f"TEXT: /(?s:.*)/ & ~/(?s:.*)({reserved})(?s:.*)/")
    lines.append(f"call_body: {_json_rule(call_schema(plan))}")
    return "\n".join(lines) + "\n"


def format_grammar(response_format: dict[str, Any] | None) -> str | None:
    """The grammar of a structured answer (no tools); None for free text."""
    schema = format_schema(response_format)
    if schema is None:
        return None
    return f"%llguidance {{}}\nstart: {_json_rule(schema)}\n"


# ------------------------------------------------------------------------------ parsing


def _marker_prefix_length(text: str) -> int:
    """Length of the longest suffix of ``text`` that begins the marker."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


class CallParser:
    """Splits the model's streamed text into answer text and calls.

    Text is passed on as it comes, except what might be the start of the marker and
    whitespace not yet followed by anything (so no empty message precedes a call). A call
    is emitted once its closing tag has arrived: a ``ToolCallDelta`` with the id and name,
    then its arguments as compact JSON in a few fragments.
    """

    def __init__(self, plan: CallPlan) -> None:
        self.plan = plan
        self.calls = 0
        self._pending = ""  # answer text held back
        self._call: str | None = None  # the body of the call being read, if inside one
        self._said_something = False
        self._seen: set[tuple[str, str]] = set()  # the calls made, to drop repeats
        self._scanned = 0  # how far the call being read was searched for its closing tag

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        while text:
            if self._call is not None:
                self._call += text
                text = ""
                end = self._call_end()
                if end < 0:
                    break
                body, text = self._call[:end], self._call[end + len(CLOSE):]
                self._call = None
                out.extend(self._emit_call(body))
                continue
            self._pending += text
            text = ""
            if self.plan.required and not self.calls and not (
                    self._pending.startswith(OPEN) or OPEN.startswith(self._pending)):
                # the grammar forces the marker first: this output was not constrained
                # (llama.cpp decodes freely when it cannot compile a grammar)
                raise InvalidRequest("The model could not be constrained to the functions' "
                                     "schemas: check them for unresolvable references or "
                                     "unsupported JSON-schema features.", param="tools",
                                     code="invalid_value")
            start = self._pending.find(OPEN)
            if start >= 0:
                before, rest = self._pending[:start], self._pending[start + len(OPEN):]
                self._pending = ""
                if before.strip() and not self.calls:
                    out.append(self._text(before.rstrip()))
                self._call = ""
                text = rest
                continue
            if self.calls:  # nothing but the next call may follow a call
                self._pending = self._pending[-len(OPEN):]
                break
            keep = _marker_prefix_length(self._pending)
            ready = self._pending[: len(self._pending) - keep].rstrip()
            if ready:
                out.append(self._text(ready))
                self._pending = self._pending[len(ready):]
        return out

    def _call_end(self) -> int:
        """Where the closing tag of the call being read is, or -1: the first closing tag
        after a complete JSON object (a string inside the arguments may hold the tag too)."""
        assert self._call is not None
        end = self._call.find(CLOSE, self._scanned)
        while end >= 0:
            try:
                json.loads(self._call[:end])
            except ValueError:
                end = self._call.find(CLOSE, end + 1)
                continue
            self._scanned = 0
            return end
        self._scanned = max(0, len(self._call) - len(CLOSE) + 1)
        return -1

    def _text(self, text: str) -> TextDelta:
        if not self._said_something:
            text = text.lstrip()
            self._said_something = True
        return TextDelta(text)

    def _emit_call(self, body: str) -> list[Delta]:
        try:
            call = json.loads(body)
        except ValueError as exc:
            raise BackendError(f"The model wrote a tool call that is not JSON: {exc}") from None
        if not isinstance(call, dict) or call.get("name") not in self.plan.allowed \
                or not isinstance(call.get("arguments"), dict):
            raise BackendError("The model wrote a tool call outside the offered functions.")
        if self.calls and not self.plan.parallel:
            return []  # one call per turn: a second one is dropped
        name = call["name"]
        arguments = call["arguments"]
        encoded = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        if (name, encoded) in self._seen:
            return []  # the same call twice in one turn is a model repeating itself
        self._seen.add((name, encoded))
        self._check(name, arguments)
        index = self.calls
        self.calls += 1
        pieces = [encoded[i:i + _ARGUMENT_PIECE]
                  for i in range(0, len(encoded), _ARGUMENT_PIECE)] or [""]
        out: list[Delta] = [ToolCallDelta(index, new_id("call"), name, pieces[0])]
        out.extend(ToolCallDelta(index, arguments=piece) for piece in pieces[1:])
        return out

    def _check(self, name: str, arguments: dict[str, Any]) -> None:
        schema = self.plan.parameters(name)
        try:
            validator = jsonschema.validators.validator_for(schema)(schema)
            error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        except (jsonschema.SchemaError, referencing.exceptions.Unresolvable) as exc:
            logger.warning("cannot check the arguments of %s: %s", name, exc)
            return
        if error is not None:
            # only a keyword the decoder could not enforce gets here; the call still goes
            # out (the client owns the function), but we want to hear about it
            logger.warning("the arguments of %s do not follow its schema: %s", name,
                           error.message)

    def finish(self, finish: Finish) -> list[Delta]:
        """The closing deltas: held-back text, then ``Finish``."""
        if self._call is not None:  # ended inside a call: that call is not made
            self._call = None
            if finish.reason != "length":
                raise BackendError("The model's tool call ended before it was complete.")
            return [finish]
        out: list[Delta] = []
        if self._pending.strip() and not self.calls:
            out.append(self._text(self._pending.rstrip()))
        self._pending = ""
        if self.calls:
            out.append(Finish("tool_calls", finish.usage))
        elif self.plan.required and finish.reason != "length":
            raise BackendError("The model was required to call a function but did not.")
        else:
            out.append(finish)
        return out


def parse_all(plan: CallPlan, pieces: Iterable[str], finish: Finish) -> list[Delta]:
    """Every delta of a whole answer (for tests and non-streaming callers)."""
    parser = CallParser(plan)
    out: list[Delta] = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    out.extend(parser.finish(finish))
    return out
