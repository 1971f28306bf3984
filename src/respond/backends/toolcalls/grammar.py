"""LLGuidance (lark) grammars and the JSON schemas inside them, so the embedded model's
output is a valid call or a valid structured answer by construction.

Rule: a schema from a request is never handed to the decoder as is: ``generation_schema``
makes a tightened copy (every value it allows is valid for the original), since a shape
LLGuidance does not fully support would otherwise make llama.cpp decode unconstrained.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from respond.backends.toolcalls.plan import CLOSE, MAX_PARALLEL_CALLS, OPEN, CallPlan

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
