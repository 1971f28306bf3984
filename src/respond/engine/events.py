"""EventBuilder: a pure state machine from model deltas to numbered stream events.

It owns the response being built: ``output_item.added`` → deltas → ``done`` for each item,
``sequence_number`` from 0 without gaps, and the same ids in the events and in the final
object. No I/O: its tests are plain lists. Events are dicts shaped as the ``openai``
package's ``ResponseStreamEvent`` models.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from respond.domain import Finish, Usage
from respond.ids import new_id

Event = dict[str, Any]


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

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.sequence = 0
        self._message: dict[str, Any] | None = None  # the open output message, if any
        self._text: list[str] = []
        self._output_index = -1
        self._call: dict[str, Any] | None = None  # the open function call, if any
        self._call_key: int | None = None  # the backend's index of the open call
        self._arguments: list[str] = []
        self._pending_arguments: str = ""  # fragments that came before the call's name
        self.calls_made = 0
        self.max_calls: int | None = None  # calls beyond this are dropped

    # -- framing ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _snapshot(self, kind: str) -> Event:
        return self._event(kind, response=copy.deepcopy(self.response))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the response as it stands, open items showing what they hold so far."""
        response = copy.deepcopy(self.response)
        if self._message is not None:
            response["output"][self._output_index]["content"][0]["text"] = "".join(self._text)
        if self._call is not None:
            response["output"][self._output_index]["arguments"] = "".join(self._arguments)
        return response

    @property
    def terminal(self) -> bool:
        return self.response["status"] in ("completed", "incomplete", "failed", "cancelled")

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
        self.response["usage"] = usage_object(finish.usage)
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
                        content_index=0, part=copy.deepcopy(part)),
            self._event("response.output_item.done", output_index=index,
                        item=copy.deepcopy(message)),
        ]

    # -- function calls --------------------------------------------------------------------

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
            if self.max_calls is not None and self.calls_made >= self.max_calls:
                return events  # over the limit: this call is dropped
            arguments = self._pending_arguments + arguments
            self._pending_arguments = ""
            events += self._open_call(call_id or new_id("call"), name)
        if self._call is None or not arguments:
            return events
        self._arguments.append(arguments)
        events.append(self._event("response.function_call_arguments.delta",
                                  item_id=self._call["id"], output_index=self._output_index,
                                  delta=arguments))
        return events

    def _open_call(self, call_id: str, name: str) -> list[Event]:
        item_id = new_id("function_call")
        self._output_index = len(self.response["output"])
        self._call = {"id": item_id, "type": "function_call", "status": "in_progress",
                      "call_id": call_id, "name": name, "arguments": ""}
        self._arguments = []
        self.calls_made += 1
        self.response["output"].append(self._call)
        return [self._event("response.output_item.added", output_index=self._output_index,
                            item=dict(self._call))]

    def _close_call(self, status: str = "completed") -> list[Event]:
        call = self._call
        if call is None:
            return []
        self._call = None
        call["arguments"] = "".join(self._arguments)
        call["status"] = status
        index = self._output_index
        return [
            self._event("response.function_call_arguments.done", item_id=call["id"],
                        output_index=index, arguments=call["arguments"], name=call["name"]),
            self._event("response.output_item.done", output_index=index, item=dict(call)),
        ]
