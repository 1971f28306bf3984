"""EventBuilder: deltas in, numbered events out — plain lists, no app, no sockets."""

from __future__ import annotations

from wire import check_response, check_stream

from respond.domain import Finish, Usage
from respond.engine.events import EventBuilder
from respond.protocol.request import CreateResponse
from respond.protocol.response import response_skeleton


def _builder(**fields) -> EventBuilder:
    req = CreateResponse(model="m", input="hi", **fields)
    return EventBuilder(response_skeleton(req, response_id="resp_1", created_at=1,
                                          model="m", status="in_progress"))


def test_plain_text_follows_the_canonical_sequence() -> None:
    b = _builder()
    events = b.start() + b.text("Hel") + b.text("lo!") + b.finish(Finish("stop", Usage(5, 2)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    check_stream(events)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello!"
    assert events[6]["text"] == "Hello!"
    assert final["usage"]["total_tokens"] == 7
    assert final["completed_at"] is not None
    # lifecycle snapshots are taken when sent, not mutated afterwards
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    item_id = events[2]["item"]["id"]
    assert all(e.get("item_id", item_id) == item_id for e in events)
    assert final["output"][0]["id"] == item_id
    parsed = check_response(final)
    assert parsed.output_text == "Hello!"


def test_length_finish_is_incomplete_with_reason() -> None:
    b = _builder(max_output_tokens=16)
    events = b.start() + b.text("a") + b.finish(Finish("length", Usage(3, 16)))
    check_stream(events)
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.incomplete"
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"
    assert final["completed_at"] is None
    check_response(final)


def test_failure_mid_stream_sends_error_then_failed() -> None:
    b = _builder()
    events = b.start() + b.text("partial") + b.fail("upstream went away")
    check_stream(events)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    error = events[-2]
    assert error["message"] == "upstream went away" and error["code"] == "server_error"
    assert error["error"]["message"] == "upstream went away"
    final = events[-1]["response"]
    assert final["error"] == {"code": "server_error", "message": "upstream went away"}
    assert final["output"][0]["content"][0]["text"] == "partial"
    check_response(final)


def test_finish_without_text_has_no_items() -> None:
    b = _builder()
    events = b.start() + b.finish(Finish("stop", Usage(1, 0)))
    check_stream(events)
    assert events[-1]["response"]["output"] == []


def test_cancel_keeps_partial_text() -> None:
    b = _builder()
    b.start()
    b.text("par")
    b.text("tial")
    b.cancel()
    assert b.response["status"] == "cancelled"
    assert b.response["output"][0]["content"][0]["text"] == "partial"
    assert b.terminal
