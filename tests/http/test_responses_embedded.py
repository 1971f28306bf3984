"""End to end against the zero-config server: the embedded llama.cpp model, SQLite, the
official ``openai`` SDK on a real loopback socket.

Generation is kept short (small ``max_output_tokens``, greedy decoding where the output
matters) so the whole module runs in seconds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from e2e import EMBEDDED_MODEL, client_for, sse_events
from servers import RunningServer
from wire import check_response, check_stream

MODEL = EMBEDDED_MODEL
SHORT = {"max_output_tokens": 48, "temperature": 0}  # greedy: a short, repeatable answer
QUESTION = "What is 2+2? Answer with a number only."

# streaming.md §4.1: a plain text answer, in exactly this order (deltas repeat)
PLAIN_TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def client(embedded: RunningServer) -> openai.OpenAI:
    return client_for(embedded, timeout=60)


@pytest.fixture(scope="module")
def first(client: openai.OpenAI) -> dict[str, Any]:
    """One completed response, as the raw JSON body the server sent."""
    raw = client.responses.with_raw_response.create(model=MODEL, input=QUESTION, **SHORT)
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    return raw.http_response.json()  # type: ignore[no-any-return]


def output_text(body: dict[str, Any]) -> str:
    return "".join(part["text"] for item in body["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def collapse_repeats(types: list[str]) -> list[str]:
    out: list[str] = []
    for kind in types:
        if not out or out[-1] != kind:
            out.append(kind)
    return out


# -- create / retrieve -----------------------------------------------------------------------


def test_create_completes_with_text_and_usage(first: dict[str, Any]) -> None:
    response = check_response(first)
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.model == MODEL
    assert response.output_text.strip()
    assert "4" in response.output_text
    assert response.completed_at is not None
    assert response.error is None and response.incomplete_details is None
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")


def test_retrieve_returns_the_same_object(client: openai.OpenAI, first: dict[str, Any]) -> None:
    raw = client.responses.with_raw_response.retrieve(first["id"])
    body = raw.http_response.json()
    check_response(body)
    assert body == first
    assert client.responses.retrieve(first["id"]).output_text == output_text(first)


def test_chaining_carries_the_whole_conversation(client: openai.OpenAI) -> None:
    r1 = client.responses.create(model=MODEL, input=QUESTION, **SHORT)
    r2 = client.responses.create(model=MODEL, input="And 3+3?", previous_response_id=r1.id,
                                 **SHORT)
    assert r2.status == "completed" and r2.previous_response_id == r1.id
    assert r1.usage is not None and r2.usage is not None
    # the second prompt holds the first prompt and the first answer
    assert r2.usage.input_tokens >= r1.usage.input_tokens + r1.usage.output_tokens

    asc = client.responses.input_items.list(r2.id, order="asc")
    assert [item.type for item in asc.data] == ["message"] * 3
    assert [item.role for item in asc.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert asc.data[0].content[0].text == QUESTION  # type: ignore[union-attr]
    assert asc.data[1].id == r1.output[0].id
    assert asc.data[1].content[0].text == r1.output_text  # type: ignore[union-attr]
    assert asc.data[2].content[0].text == "And 3+3?"  # type: ignore[union-attr]
    assert asc.has_more is False

    desc = client.responses.input_items.list(r2.id)  # the default order is desc
    assert [item.id for item in desc.data] == [item.id for item in reversed(asc.data)]

    # turn 1's own items: just its user message
    own = client.responses.input_items.list(r1.id)
    assert [item.id for item in own.data] == [asc.data[0].id]


# -- streaming -------------------------------------------------------------------------------


def test_sdk_stream_follows_the_plain_text_sequence(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input=QUESTION, **SHORT) as stream:
        events = list(stream)
        final = stream.get_final_response()

    types = [event.type for event in events]
    assert collapse_repeats(types) == PLAIN_TEXT_ORDER
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert deltas and all(deltas)
    assert "".join(deltas) == final.output_text
    assert final.output_text.strip()

    created = events[0]
    assert created.type == "response.created"
    assert created.response.status == "in_progress" and created.response.output == []
    assert created.response.id == final.id
    message_id = final.output[0].id
    for event in events:
        if hasattr(event, "item_id"):
            assert event.item_id == message_id
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == final.output_text

    stored = client.responses.retrieve(final.id)
    assert stored.id == final.id
    assert stored.status == final.status == "completed"
    assert [item.id for item in stored.output] == [item.id for item in final.output]
    assert stored.output_text == final.output_text
    assert stored.usage == final.usage


def test_raw_sse_framing(embedded: RunningServer) -> None:
    body = {"model": MODEL, "input": QUESTION, "stream": True, **SHORT}
    with httpx.Client(timeout=60) as http, \
            http.stream("POST", embedded.base_url + "/responses", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["cache-control"] == "no-cache"
        assert "content-length" not in reply.headers
        raw = reply.read().decode()
    assert "[DONE]" not in raw
    assert raw.startswith("event: response.created\ndata: {")
    for frame in raw.strip("\n").split("\n\n"):
        lines = frame.split("\n")
        assert len(lines) == 2, frame
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ")
    events = sse_events(raw)
    check_stream(events)
    assert collapse_repeats([e["type"] for e in events]) == PLAIN_TEXT_ORDER
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == output_text(final) and text.strip()
    # the terminal event is what GET returns afterwards
    assert httpx.get(embedded.base_url + f"/responses/{final['id']}").json() == final


# -- delete / store=false --------------------------------------------------------------------


def test_delete_then_gone_everywhere(client: openai.OpenAI, embedded: RunningServer) -> None:
    r = client.responses.create(model=MODEL, input="Hi!", max_output_tokens=16)
    reply = httpx.delete(embedded.base_url + f"/responses/{r.id}")
    assert reply.status_code == 200
    assert reply.json() == {"id": r.id, "object": "response.deleted", "deleted": True}

    with pytest.raises(openai.NotFoundError) as not_found:
        client.responses.retrieve(r.id)
    assert not_found.value.status_code == 404
    assert r.id in not_found.value.message
    with pytest.raises(openai.BadRequestError) as chained:
        client.responses.create(model=MODEL, input="again", previous_response_id=r.id,
                                max_output_tokens=16)
    assert chained.value.code == "previous_response_not_found"
    assert chained.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)  # a second delete finds nothing
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(r.id)


def test_store_false_is_not_retrievable_nor_chainable(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Hi!", max_output_tokens=16, store=False)
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.model_extra is not None and r.model_extra.get("store") is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as chained:
        client.responses.create(model=MODEL, input="again", previous_response_id=r.id,
                                max_output_tokens=16)
    assert chained.value.code == "previous_response_not_found"
    assert chained.value.param == "previous_response_id"


# -- limits and echoes -----------------------------------------------------------------------


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="Write a very long story about a dragon and a knight.",
        max_output_tokens=16, temperature=0,
    )
    body = raw.http_response.json()
    response = check_response(body)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 16
    assert response.completed_at is None
    assert response.output_text.strip()
    assert response.output[-1].status == "incomplete"
    assert response.max_output_tokens == 16
    assert client.responses.retrieve(response.id).status == "incomplete"


def test_request_parameters_are_echoed(client: openai.OpenAI) -> None:
    params: dict[str, Any] = {
        "metadata": {"team": "blue", "ticket": "42"},
        "user": "user-7",
        "safety_identifier": "hashed-user-7",
        "prompt_cache_key": "cache-bucket-1",
        "parallel_tool_calls": False,
        "temperature": 0.5,
        "top_p": 0.9,
        "instructions": "Answer in one short sentence.",
    }
    created = client.responses.create(model=MODEL, input="Hi!", max_output_tokens=16, **params)
    fetched = client.responses.retrieve(created.id)
    for response in (created, fetched):
        for name, value in params.items():
            assert getattr(response, name) == value, name
        assert response.max_output_tokens == 16
        assert response.truncation == "disabled"
        assert response.tool_choice == "auto" and response.tools == []


def test_models_lists_the_embedded_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert MODEL in [m.id for m in models.data]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_concurrent_requests_all_complete(client: openai.OpenAI) -> None:
    def ask(n: int) -> Any:
        return client.responses.create(
            model=MODEL, input=f"What is {n}+{n}? Answer with a number only.",
            max_output_tokens=32, temperature=0,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(range(1, 5), pool.map(ask, range(1, 5)), strict=True))
    assert len({r.id for r in results.values()}) == 4
    for n, response in results.items():
        assert response.status == "completed", (n, response.status, response.output_text)
        assert response.output_text.strip()
        assert client.responses.retrieve(response.id).output_text == response.output_text
