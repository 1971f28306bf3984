"""Function calling and structured output for models whose chat template knows no tools.

The embedded model is offered tools in its prompt and answers in one fixed text form:

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

Four pieces make that reliable, one module each:

* ``plan``: ``CallPlan``, which functions a turn offers and whether it must call one, and
  the markers of the text form.
* ``prompt``: ``render_messages`` writes the tool list and the call format into the system
  message, and rewrites history the template cannot show: an assistant's ``tool_calls``
  become the same text form, ``tool`` results become plain messages wrapped in
  ``<tool_response>`` (role ``tool`` where the template prints any role, as ChatML does,
  else ``user``).
* ``grammar``: ``call_grammar`` / ``format_grammar`` build an LLGuidance (lark) grammar, so
  decoding is valid by construction: a forced call is exactly one call to an allowed
  function whose arguments follow its schema; in ``auto`` mode free text may never contain
  the marker, and once the marker is written the rest must be a valid call.
* ``parser``: ``CallParser`` turns the streamed text back into ``TextDelta`` and
  ``ToolCallDelta``: text that might be the start of the marker is held back, so call
  markup never reaches a client.

Rules: pure functions and a small state machine, no I/O; schemas are never trusted to be in
a shape LLGuidance fully supports, so generation uses a tightened copy (every output of the
copy is valid for the original) and each parsed call is checked against the original.
Callers import from this package; its modules import each other, never the package.
"""

from __future__ import annotations

from respond.backends.toolcalls.grammar import (
    call_grammar,
    call_schema,
    format_grammar,
    format_schema,
    generation_schema,
)
from respond.backends.toolcalls.parser import CallParser, parse_all
from respond.backends.toolcalls.plan import (
    CLOSE,
    MAX_PARALLEL_CALLS,
    OPEN,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    CallPlan,
)
from respond.backends.toolcalls.prompt import (
    call_text,
    needs_rendering,
    render_messages,
    tool_instructions,
)

__all__ = [
    "CLOSE", "MAX_PARALLEL_CALLS", "OPEN", "RESPONSE_CLOSE", "RESPONSE_OPEN", "CallParser",
    "CallPlan", "call_grammar", "call_schema", "call_text", "format_grammar", "format_schema",
    "generation_schema", "needs_rendering", "parse_all", "render_messages", "tool_instructions",
]
