"""EventBuilder: a pure state machine from model deltas to numbered stream events.

It owns the response being built: ``output_item.added`` → deltas → ``done`` for each item,
``sequence_number`` from 0 without gaps, and the same ids in the events and in the final
object. No I/O: its tests are plain lists. Events are dicts shaped as the ``openai``
package's ``ResponseStreamEvent`` models.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from respond.domain import Finish, Usage
from respond.ids import new_id
from respond.store import TERMINAL_STATUSES

Event = dict[str, Any]

# What a call the model makes becomes, by the name it calls (see "tool calls" below).
Classifier = Callable[[str], tuple[str, ...]]


def _all_functions(name: str) -> tuple[str, ...]:
    return ("function",)


def usage_object(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage(0, 0)
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.input_tokens + u.output_tokens,
    }


class EventBuilder:
    """Builds the events of one response. ``response`` is the live object being built."""

    def __init__(self, response: dict[str, Any], *, sequence: int = 0,
                 classify: Classifier = _all_functions) -> None:
        """``sequence``: the number of the first event (a background run goes on from the
        events logged when it was queued); ``classify``: what each called name becomes."""
        self.response = response
        self.sequence = sequence
        self._classify = classify
        self._message: dict[str, Any] | None = None  # the open output message, if any
        self._text: list[str] = []
        self._output_index = -1
        self._call: dict[str, Any] | None = None  # the open function call, if any
        self._call_key: int | None = None  # the backend's index of the open call
        self._arguments: list[str] = []
        self._pending_arguments: str = ""  # fragments that came before the call's name
        self._awaiting: dict[str, Any] | None = None  # a closed mcp_call not yet run
        self._listing: dict[str, Any] | None = None  # an mcp_list_tools being filled
        self._usage = Usage(0, 0)  # of earlier model turns of this response

    # -- framing ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _snapshot(self, kind: str) -> Event:
        # Only status, usage, timestamps, error details and the output list change after a
        # snapshot is taken (the request echoes never do): copy those, not the whole tree.
        snapshot = dict(self.response)
        snapshot["output"] = copy.deepcopy(self.response["output"])
        return self._event(kind, response=snapshot)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the response as it stands, open items showing what they hold so far."""
        response = copy.deepcopy(self.response)
        if self._message is not None:
            response["output"][self._output_index]["content"][0]["text"] = "".join(self._text)
        if self._call is not None and self._call["type"] != "mcp_approval_request":
            response["output"][self._output_index]["arguments"] = "".join(self._arguments)
        return response

    @property
    def terminal(self) -> bool:
        return self.response["status"] in TERMINAL_STATUSES

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> list[Event]:
        """Foreground: ``response.created`` then ``response.in_progress``."""
        self.response["status"] = "in_progress"
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def queued(self) -> list[Event]:
        """Background: ``response.created`` and ``response.queued``, both with status queued."""
        self.response["status"] = "queued"
        return [self._snapshot("response.created"), self._snapshot("response.queued")]

    def in_progress(self) -> list[Event]:
        """Background: a worker took the response up."""
        self.response["status"] = "in_progress"
        return [self._snapshot("response.in_progress")]

    def text(self, delta: str) -> list[Event]:
        events: list[Event] = self._close_call()
        if self._message is None:
            events.extend(self._open_message())
        self._text.append(delta)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._message["id"],  # type: ignore[index]
                output_index=self._output_index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return events

    def finish(self, finish: Finish) -> list[Event]:
        """Close open items and end with ``response.completed`` or ``response.incomplete``."""
        incomplete = finish.reason == "length"
        status = "incomplete" if incomplete else "completed"
        events = self._close_message(status) + self._close_call(status)
        self.add_usage(finish.usage)
        self.response["usage"] = usage_object(self._usage)
        if incomplete:
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
            events.append(self._event("response.incomplete", response=self.response))
        elif finish.reason == "content_filter":
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": "content_filter"}
            events.append(self._event("response.incomplete", response=self.response))
        else:
            self.response["status"] = "completed"
            self.response["completed_at"] = int(time.time())
            events.append(self._event("response.completed", response=self.response))
        return events

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        """A failure after the stream began: an ``error`` event, then ``response.failed``."""
        events = self._close_message("incomplete") + self._close_call("incomplete")
        error = {"type": "server_error", "code": code, "message": message, "param": None}
        events.append(self._event("error", code=code, message=message, param=None, error=error))
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        events.append(self._event("response.failed", response=self.response))
        return events

    def cancel(self) -> None:
        """The consumer went away: mark the response cancelled; no event can be delivered."""
        if self._message is not None:
            self._message["content"][0]["text"] = "".join(self._text)
            self._message["status"] = "incomplete"
            self._message = None
        if self._call is not None:
            self._call["arguments"] = "".join(self._arguments)
            self._call["status"] = "incomplete"
            self._call = None
        self.response["status"] = "cancelled"

    # -- items -----------------------------------------------------------------------------

    def _open_message(self) -> list[Event]:
        item_id = new_id("message")
        self._output_index = len(self.response["output"])
        added = {"id": item_id, "type": "message", "status": "in_progress",
                 "role": "assistant", "content": []}
        self._message = {"id": item_id, "type": "message", "status": "in_progress",
                         "role": "assistant",
                         "content": [{"type": "output_text", "text": "", "annotations": [],
                                      "logprobs": []}]}
        self.response["output"].append(self._message)
        self._text = []
        return [
            self._event("response.output_item.added", output_index=self._output_index,
                        item=added),
            self._event("response.content_part.added", item_id=item_id,
                        output_index=self._output_index, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": [],
                              "logprobs": []}),
        ]

    def _close_message(self, status: str) -> list[Event]:
        message = self._message
        if message is None:
            return []
        self._message = None
        text = "".join(self._text)
        part = message["content"][0]
        part["text"] = text
        message["status"] = status
        index = self._output_index
        item_id = message["id"]
        return [
            self._event("response.output_text.done", item_id=item_id, output_index=index,
                        content_index=0, text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=item_id, output_index=index,
                        content_index=0, part=dict(part)),
            self._event("response.output_item.done", output_index=index,
                        item=copy.deepcopy(message)),
        ]

    # -- tool calls ------------------------------------------------------------------------
    # A call the model makes becomes one of three items, as ``classify(name)`` says (calls
    # over a turn's limit never reach the builder: the run drops them):
    #   ("function",)            a function_call the client runs;
    #   ("mcp", label, tool)     an mcp_call respond runs: after its arguments are done the
    #                            caller executes it and reports with ``mcp_result``;
    #   ("approval", label, tool) an mcp_approval_request, announced whole when complete.

    def tool_call(self, key: int, call_id: str | None, name: str | None,
                  arguments: str) -> list[Event]:
        """A fragment of the backend's call number ``key`` (fragments of one call are adjacent)."""
        events: list[Event] = []
        if key != self._call_key:
            events += self._close_message("completed") + self._close_call()
            self._call_key = key
            self._pending_arguments = ""
        if self._call is None:
            if not name:  # the name has not arrived yet: hold the arguments back
                self._pending_arguments += arguments
                return events
            arguments = self._pending_arguments + arguments
            self._pending_arguments = ""
            kind = self._classify(name)
            if kind[0] == "mcp":
                events += self._open_mcp_call(kind[1], kind[2])
            elif kind[0] == "approval":
                self._open_approval(kind[1], kind[2])
            else:
                events += self._open_call(call_id or new_id("call"), name)
        if self._call is None or not arguments:
            return events
        self._arguments.append(arguments)
        kind_of_call = self._call["type"]
        if kind_of_call == "function_call":
            events.append(self._event("response.function_call_arguments.delta",
                                      item_id=self._call["id"], output_index=self._output_index,
                                      delta=arguments))
        elif kind_of_call == "mcp_call":
            events.append(self._event("response.mcp_call_arguments.delta",
                                      item_id=self._call["id"], output_index=self._output_index,
                                      delta=arguments))
        return events

    @property
    def open_server_call(self) -> bool:
        """Whether an mcp_call is open: it must be closed and run before anything else."""
        return self._call is not None and self._call["type"] == "mcp_call"

    @property
    def open_call_key(self) -> int | None:
        return self._call_key if self._call is not None else None

    def close_call(self) -> list[Event]:
        return self._close_call()

    def _open_call(self, call_id: str, name: str) -> list[Event]:
        item_id = new_id("function_call")
        self._output_index = len(self.response["output"])
        self._call = {"id": item_id, "type": "function_call", "status": "in_progress",
                      "call_id": call_id, "name": name, "arguments": ""}
        self._arguments = []
        self.response["output"].append(self._call)
        return [self._event("response.output_item.added", output_index=self._output_index,
                            item=dict(self._call))]

    def _open_mcp_call(self, label: str, name: str,
                       approval_request_id: str | None = None) -> list[Event]:
        item_id = new_id("mcp_call")
        self._output_index = len(self.response["output"])
        self._call = {"id": item_id, "type": "mcp_call", "status": "in_progress",
                      "server_label": label, "name": name, "arguments": "", "output": None,
                      "error": None, "approval_request_id": approval_request_id}
        self._arguments = []
        self.response["output"].append(self._call)
        return [
            self._event("response.output_item.added", output_index=self._output_index,
                        item=dict(self._call)),
            self._event("response.mcp_call.in_progress", item_id=item_id,
                        output_index=self._output_index),
        ]

    def _open_approval(self, label: str, name: str) -> None:
        self._call = {"id": new_id("mcp_approval_request"), "type": "mcp_approval_request",
                      "server_label": label, "name": name, "arguments": ""}
        self._arguments = []

    def _close_call(self, status: str = "completed") -> list[Event]:
        call = self._call
        if call is None:
            return []
        self._call = None
        call["arguments"] = "".join(self._arguments)
        index = self._output_index
        if call["type"] == "mcp_approval_request":
            if status != "completed":
                return []  # a request cut short is never shown: it could not be approved
            self._output_index = index = len(self.response["output"])
            self.response["output"].append(call)
            return [
                self._event("response.output_item.added", output_index=index, item=dict(call)),
                self._event("response.output_item.done", output_index=index, item=dict(call)),
            ]
        if call["type"] == "mcp_call":
            self._awaiting = call
            events = [self._event("response.mcp_call_arguments.done", item_id=call["id"],
                                  output_index=index, arguments=call["arguments"])]
            if status != "completed":
                events += self.mcp_result(None, {
                    "type": "mcp_protocol_error", "code": -32602,
                    "message": "The call was cut short before its arguments were complete; "
                               "it was not made."})
            return events
        call["status"] = status
        return [
            self._event("response.function_call_arguments.done", item_id=call["id"],
                        output_index=index, arguments=call["arguments"], name=call["name"]),
            self._event("response.output_item.done", output_index=index, item=dict(call)),
        ]

    @property
    def awaiting(self) -> dict[str, Any] | None:
        """The closed mcp_call waiting to be run, if any."""
        return self._awaiting

    def mcp_result(self, output: str | None, error: dict[str, Any] | None) -> list[Event]:
        """The outcome of the awaiting mcp_call: ``.completed`` or ``.failed``, then done."""
        call = self._awaiting
        assert call is not None, "no mcp_call is waiting for a result"
        self._awaiting = None
        index = self.response["output"].index(call)
        call["output"] = output
        call["error"] = error
        call["status"] = "failed" if error is not None else "completed"
        kind = "response.mcp_call.failed" if error is not None else "response.mcp_call.completed"
        return [
            self._event(kind, item_id=call["id"], output_index=index),
            self._event("response.output_item.done", output_index=index, item=dict(call)),
        ]

    def mcp_approved_call(self, label: str, name: str, arguments: str,
                          approval_request_id: str) -> list[Event]:
        """An approved call, run before the model's turn: announced, then awaiting its result."""
        events = self._open_mcp_call(label, name, approval_request_id)
        self._arguments = [arguments]
        call = self._call
        assert call is not None
        events.append(self._event("response.mcp_call_arguments.delta", item_id=call["id"],
                                  output_index=self._output_index, delta=arguments))
        self._call_key = None
        return events + self._close_call()

    # -- tool listings ---------------------------------------------------------------------

    def mcp_list_started(self, label: str) -> list[Event]:
        item: dict[str, Any] = {"id": new_id("mcp_list_tools"), "type": "mcp_list_tools", "server_label": label,
                "tools": [], "error": None}
        index = len(self.response["output"])
        self.response["output"].append(item)
        self._listing = item
        return [
            self._event("response.output_item.added", output_index=index, item=dict(item)),
            self._event("response.mcp_list_tools.in_progress", item_id=item["id"],
                        output_index=index),
        ]

    def mcp_list_done(self, tools: list[dict[str, Any]] | None, error: str | None) -> list[Event]:
        item: dict[str, Any] | None = self._listing
        assert item is not None
        self._listing = None
        index = self.response["output"].index(item)
        item["tools"] = tools or []
        item["error"] = error
        kind = ("response.mcp_list_tools.failed" if error is not None
                else "response.mcp_list_tools.completed")
        return [
            self._event(kind, item_id=item["id"], output_index=index),
            self._event("response.output_item.done", output_index=index,
                        item=copy.deepcopy(item)),
        ]

    # -- usage across model turns ----------------------------------------------------------

    def add_usage(self, usage: Usage | None) -> None:
        """Count a model turn that did not end the response (a tool loop goes on)."""
        if usage is not None:
            self._usage = Usage(self._usage.input_tokens + usage.input_tokens,
                                self._usage.output_tokens + usage.output_tokens,
                                self._usage.cached_tokens + usage.cached_tokens)
