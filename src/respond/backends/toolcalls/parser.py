"""The stream parser: the embedded model's text back into answer text and tool calls.

Rules: call markup never reaches a client (text that might begin the marker is held back);
a call goes out only once it is complete, is one of the offered functions, and is not a
repeat in the same turn; its arguments are checked against the function's original schema
(a mismatch is logged, since only a keyword the decoder could not enforce lets one through).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import jsonschema
import referencing.exceptions

from respond.backends.toolcalls.plan import CLOSE, OPEN, CallPlan
from respond.domain import Delta, Finish, TextDelta, ToolCallDelta
from respond.errors import BackendError, InvalidRequest
from respond.ids import new_id

logger = logging.getLogger(__name__)

_ARGUMENT_PIECE = 32  # characters per streamed arguments fragment


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
