"""End to end with respond in front of a real OpenAI-compatible upstream over HTTP
(``respond.testing.upstream.UpstreamServer``): exact text, what the upstream is sent,
upstream failures, truncation and client disconnects.
"""

# ruff: noqa: F811  (pytest fixtures imported from e2e are parameters here)

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from e2e import (
    DEAD,
    SLOW,
    SLOW_TIMEOUT,
    UP,
    chat_messages,
    client_for,
    fronted,  # noqa: F401  (fixture)
    sdk_error,
    sse_events,
    upstream,  # noqa: F401  (fixture)
    wait_until,
)
from servers import RunningServer
from wire import check_response, check_stream

from respond.testing.upstream import UpstreamServer, prompt_tokens

SIXTEEN = " ".join(f"tok{i}" for i in range(16))


@pytest.fixture(autouse=True)
def _fresh(upstream: UpstreamServer) -> None:
    upstream.reset()


@pytest.fixture
def client(fronted: RunningServer) -> openai.OpenAI:
    return client_for(fronted)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def stream_raw(server: RunningServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.Client(timeout=30) as http, \
            http.stream("POST", server.base_url + "/responses", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        return sse_events(reply.read().decode())


# -- the happy path --------------------------------------------------------------------------


def test_exact_text_and_usage_from_the_upstream(client: openai.OpenAI,
                                                upstream: UpstreamServer) -> None:
    upstream.configure(reply="The quick brown fox jumps.")
    raw = client.responses.with_raw_response.create(model=UP, input="Tell me about foxes")
    response = check_response(raw.http_response.json())
    assert response.status == "completed"
    assert response.output_text == "The quick brown fox jumps."
    assert response.model == UP
    [sent] = upstream.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == UP
    assert chat_messages(sent) == [user("Tell me about foxes")]
    assert response.usage is not None
    assert response.usage.input_tokens == prompt_tokens(sent.body["messages"])
    assert response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + 5


def test_parameters_reach_the_upstream(client: openai.OpenAI,
                                       upstream: UpstreamServer) -> None:
    client.responses.create(model=UP, input="hi", max_output_tokens=20, temperature=0.25,
                            top_p=0.5)
    [sent] = upstream.requests
    assert sent.body["max_tokens"] == 20
    assert sent.body["temperature"] == 0.25
    assert sent.body["top_p"] == 0.5


def test_streaming_through_the_sdk(client: openai.OpenAI) -> None:
    with client.responses.stream(model=UP, input="count") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["tok0"] + [f" tok{i}" for i in range(1, 16)]
    assert final.output_text == SIXTEEN
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert client.responses.retrieve(final.id).output_text == SIXTEEN


def test_max_output_tokens_cuts_the_upstream_answer(client: openai.OpenAI,
                                                    upstream: UpstreamServer) -> None:
    upstream.configure(tokens=40)
    response = client.responses.create(model=UP, input="count", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == SIXTEEN
    assert response.usage is not None and response.usage.output_tokens == 16
    assert response.output[0].status == "incomplete"
    assert upstream.requests[0].body["max_tokens"] == 16


def test_raw_stream_ends_with_what_get_returns(fronted: RunningServer) -> None:
    events = stream_raw(fronted, {"model": UP, "input": "count", "stream": True})
    check_stream(events)
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert httpx.get(fronted.base_url + f"/responses/{final['id']}").json() == final


# -- conversation state ----------------------------------------------------------------------


def test_instructions_are_not_carried_over(client: openai.OpenAI,
                                           upstream: UpstreamServer) -> None:
    upstream.configure(reply="First answer.")
    r1 = client.responses.create(model=UP, input="first question",
                                 instructions="You are a pirate.")
    assert r1.instructions == "You are a pirate."
    assert chat_messages(upstream.requests[0]) == [
        {"role": "system", "content": "You are a pirate."}, user("first question")]
    upstream.configure(reply="Second answer.")
    r2 = client.responses.create(model=UP, input="second question", previous_response_id=r1.id)
    assert r2.instructions is None
    assert client.responses.retrieve(r2.id).instructions is None
    assert chat_messages(upstream.requests[1]) == [
        user("first question"), assistant("First answer."), user("second question")]


def test_branches_stay_separate(client: openai.OpenAI,
                                upstream: UpstreamServer) -> None:
    def turn(text: str, answer: str, previous: str | None) -> str:
        upstream.configure(reply=answer)
        return client.responses.create(model=UP, input=text, previous_response_id=previous).id

    root = turn("root question", "root answer", None)
    left = turn("left question", "left answer", root)
    right = turn("right question", "right answer", root)
    turn("left again", "left end", left)
    turn("right again", "right end", right)
    conversations = [chat_messages(r) for r in upstream.requests]
    trunk = [user("root question"), assistant("root answer")]
    assert conversations[1] == trunk + [user("left question")]
    assert conversations[2] == trunk + [user("right question")]
    assert conversations[3] == trunk + [user("left question"), assistant("left answer"),
                                        user("left again")]
    assert conversations[4] == trunk + [user("right question"), assistant("right answer"),
                                        user("right again")]
    left_items = client.responses.input_items.list(left, order="asc").data
    assert [i.content[0].text for i in left_items] == [  # type: ignore[union-attr]
        "root question", "root answer", "left question"]


def test_manual_chaining_without_storage(client: openai.OpenAI,
                                         upstream: UpstreamServer) -> None:
    upstream.configure(reply="Paris is the capital.")
    r1 = client.responses.create(model=UP, input="Capital of France?", store=False)
    upstream.configure(reply="About two million people.")
    r2 = client.responses.create(
        model=UP, store=False,
        input=[user("Capital of France?"), *r1.output, user("How many people live there?")],
    )
    assert r2.output_text == "About two million people."
    assert chat_messages(upstream.requests[1]) == [
        user("Capital of France?"), assistant("Paris is the capital."),
        user("How many people live there?")]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r2.id)


def test_input_items_paginate_through_the_sdk(client: openai.OpenAI) -> None:
    r1 = client.responses.create(model=UP, input="one")
    r2 = client.responses.create(model=UP, input="two", previous_response_id=r1.id)
    r3 = client.responses.create(model=UP, input="three", previous_response_id=r2.id)
    everything = client.responses.input_items.list(r3.id, order="asc", limit=100).data
    assert len(everything) == 5
    ids = [item.id for item in everything]
    first_page = client.responses.input_items.list(r3.id, order="asc", limit=2)
    assert [i.id for i in first_page.data] == ids[:2] and first_page.has_more is True
    assert [i.id for i in client.responses.input_items.list(r3.id, order="asc", limit=2)] == ids
    assert [i.id for i in client.responses.input_items.list(r3.id, limit=2)] == ids[::-1]
    assert [i.id for i in client.responses.input_items.list(
        r3.id, order="asc", after=ids[1], limit=100).data] == ids[2:]


def test_deleting_an_ancestor_keeps_the_descendants_whole(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(reply="old answer")
    r1 = client.responses.create(model=UP, input="old question")
    upstream.configure(reply="middle answer")
    r2 = client.responses.create(model=UP, input="middle question", previous_response_id=r1.id)
    client.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r1.id)
    upstream.configure(reply="new answer")
    client.responses.create(model=UP, input="new question", previous_response_id=r2.id)
    assert chat_messages(upstream.requests[-1]) == [
        user("old question"), assistant("old answer"), user("middle question"),
        assistant("middle answer"), user("new question")]
    assert len(client.responses.input_items.list(r2.id).data) == 3


def test_item_reference_pulls_a_stored_item(client: openai.OpenAI,
                                            upstream: UpstreamServer) -> None:
    upstream.configure(reply="referenced answer")
    r1 = client.responses.create(model=UP, input="question")
    client.responses.create(model=UP, input=[
        {"type": "item_reference", "id": r1.output[0].id}, user("and then?")])
    assert chat_messages(upstream.requests[-1]) == [assistant("referenced answer"),
                                                    user("and then?")]


def test_an_item_sent_by_value_is_remembered_as_sent(client: openai.OpenAI,
                                                     upstream: UpstreamServer) -> None:
    upstream.configure(reply="noted")
    client.responses.create(model=UP, input=[
        {"type": "message", "role": "user", "content": "apples", "id": "msg_client_1"}])
    try:
        second = client.responses.create(model=UP, input=[
            {"type": "message", "role": "user", "content": "bananas", "id": "msg_client_1"}])
    except openai.BadRequestError:
        return  # refusing the clashing id is an honest answer too
    assert chat_messages(upstream.requests[-1]) == [user("bananas")]
    items = client.responses.input_items.list(second.id).data
    assert [i.content[0].text for i in items] == ["bananas"]  # type: ignore[union-attr]
    client.responses.create(model=UP, input="and then?", previous_response_id=second.id)
    assert chat_messages(upstream.requests[-1]) == [
        user("bananas"), assistant("noted"), user("and then?")]


# -- upstream failures -----------------------------------------------------------------------


def test_upstream_500_is_a_502(client: openai.OpenAI,
                               upstream: UpstreamServer) -> None:
    upstream.configure(error_status=500, error_message="engine exploded")
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=UP, input="hi")
    error = sdk_error(caught.value, 502)
    assert error["type"] == "server_error"
    assert "engine exploded" in error["message"]
    assert len(upstream.requests) == 1  # respond itself does not retry behind the client


def test_upstream_500_on_a_stream_is_an_http_error_before_any_event(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(error_status=500)
    with pytest.raises(openai.InternalServerError) as caught, \
            client.responses.stream(model=UP, input="hi") as stream:
        list(stream)
    sdk_error(caught.value, 502)


def test_slow_upstream_is_a_504(client: openai.OpenAI,
                                upstream: UpstreamServer) -> None:
    upstream.configure(delay=SLOW_TIMEOUT * 4)
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=SLOW, input="hi")
    error = sdk_error(caught.value, 504)
    assert error["type"] == "server_error"


def test_dead_upstream_is_a_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=DEAD, input="hi")
    sdk_error(caught.value, 502)


def test_break_mid_stream_ends_with_error_then_failed(
        fronted: RunningServer, upstream: UpstreamServer) -> None:
    upstream.configure(break_after=3)
    events = stream_raw(fronted, {"model": UP, "input": "count", "stream": True})
    check_stream(events)
    types = [e["type"] for e in events]
    assert types[-2:] == ["error", "response.failed"]
    assert "response.completed" not in types
    error = events[-2]
    assert error["message"] and error["error"]["message"] == error["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] and failed["error"]["message"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "tok0 tok1 tok2"

    stored = httpx.get(fronted.base_url + f"/responses/{failed['id']}").json()
    check_response(stored)
    assert stored["status"] == "failed"
    assert stored["error"] == failed["error"]
    assert stored["output"][0]["content"][0]["text"] == "tok0 tok1 tok2"


def test_break_mid_stream_raises_in_the_sdk(client: openai.OpenAI,
                                            upstream: UpstreamServer) -> None:
    upstream.configure(break_after=2)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for event in client.responses.create(model=UP, input="count", stream=True):
            seen.append(event.type)
    assert "upstream" in caught.value.message.lower()
    assert seen.count("response.output_text.delta") == 2
    assert "response.completed" not in seen


def test_break_without_streaming_is_a_failed_response(client: openai.OpenAI,
                                                      upstream: UpstreamServer) -> None:
    upstream.configure(break_after=4)
    raw = client.responses.with_raw_response.create(model=UP, input="count")
    assert raw.status_code == 200
    response = check_response(raw.http_response.json())
    assert response.status == "failed"
    assert response.error is not None and response.error.message
    assert response.output_text == "tok0 tok1 tok2 tok3"
    assert client.responses.retrieve(response.id).status == "failed"


def test_the_response_is_stored_before_the_stream_ends(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(reply="first answer")
    with client.responses.stream(model=UP, input="first") as stream:
        for event in stream:
            if event.type == "response.completed":
                # chain before the stream has even closed
                stored = client.responses.retrieve(event.response.id)
                assert stored.status == "completed"
                assert stored.output_text == "first answer"
                upstream.configure(reply="second answer")
                follow = client.responses.create(model=UP, input="second",
                                                 previous_response_id=event.response.id)
                assert follow.output_text == "second answer"
    assert chat_messages(upstream.requests[-1]) == [
        user("first"), assistant("first answer"), user("second")]


# -- truncation ------------------------------------------------------------------------------


def _long_history(client: openai.OpenAI, upstream: UpstreamServer,
                  turns: int) -> str:
    previous = None
    for n in range(turns):
        upstream.configure(reply=" ".join(f"answer{n}" for _ in range(10)))
        previous = client.responses.create(
            model=UP, input=" ".join(f"question{n}" for _ in range(10)),
            previous_response_id=previous).id
    assert previous is not None
    return previous


def test_context_overflow_without_truncation_is_a_400(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    last = _long_history(client, upstream, 4)  # 8 messages of 13 tokens
    upstream.configure(context_limit=60, reply="fits")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, input="newest question", previous_response_id=last,
                                truncation="disabled")
    sdk_error(caught.value, 400, code="context_length_exceeded")


def test_truncation_auto_drops_the_oldest_turns(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    last = _long_history(client, upstream, 4)
    upstream.configure(context_limit=60, reply="fits")
    response = client.responses.create(model=UP, input="newest question",
                                       previous_response_id=last, truncation="auto",
                                       instructions="Be brief.")
    assert response.status == "completed" and response.output_text == "fits"
    assert response.truncation == "auto"
    sent = chat_messages(upstream.requests[-1])
    assert prompt_tokens(upstream.requests[-1].body["messages"]) <= 60
    assert sent[0] == {"role": "system", "content": "Be brief."}  # instructions stay
    assert sent[1]["role"] == "user"  # cut at a turn boundary
    assert sent[-1] == user("newest question")
    assert user(" ".join(["question0"] * 10)) not in sent
    assert len(sent) < 10
    # the stored conversation itself is not truncated
    assert len(client.responses.input_items.list(response.id, limit=100).data) == 9


# -- the client goes away --------------------------------------------------------------------


def test_closing_a_foreground_stream_stops_the_upstream(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(tokens=5000, delay=0.02)  # 100 s of tokens, had it run on
    response_id = None
    deltas = 0
    with client.responses.stream(model=UP, input="count slowly") as stream:
        for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                deltas += 1
                if deltas == 3:
                    break
    assert response_id is not None
    assert wait_until(lambda: upstream.disconnects >= 1), "upstream kept generating"

    def stored() -> bool:
        return httpx.get(client_base(client) + f"/responses/{response_id}").status_code == 200

    assert wait_until(stored)
    body = httpx.get(client_base(client) + f"/responses/{response_id}").json()
    check_response(body)
    assert body["status"] == "cancelled"
    assert body["output"][0]["content"][0]["text"].startswith("tok0 tok1 tok2")


def test_a_response_being_generated_can_be_retrieved(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    # 100 s of tokens: the response is still being generated whenever the client looks
    upstream.configure(tokens=5000, delay=0.02)
    with client.responses.stream(model=UP, input="count slowly") as stream:
        deltas = 0
        for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                deltas += 1
                if deltas == 5:
                    during = httpx.get(client_base(client) + f"/responses/{response_id}").json()
                    break
    check_response(during)
    assert during["status"] == "in_progress"
    text = during["output"][0]["content"][0]["text"]
    assert text.startswith("tok0 tok1 tok2 tok3 tok4")
    # the client went away: what is stored in the end continues what was seen
    assert wait_until(lambda: client.responses.retrieve(response_id).status == "cancelled")
    stored = client.responses.retrieve(response_id).output_text
    assert stored.startswith(text) and len(stored.split()) < 5000


def client_base(client: openai.OpenAI) -> str:
    return str(client.base_url).rstrip("/")

