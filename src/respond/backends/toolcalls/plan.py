"""What a turn may call (``CallPlan``) and the markers of the text form a call takes.

Rule: the plan is read from Chat Completions ``tools`` / ``tool_choice`` once per turn; the
prompt, the grammar and the parser all take it, so they agree on what may be called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from respond.errors import BackendError

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"

# Calls one turn may hold when parallel calls are allowed. A small model that starts
# repeating itself would otherwise call until it runs out of tokens; repeats are dropped.
MAX_PARALLEL_CALLS = 4


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
