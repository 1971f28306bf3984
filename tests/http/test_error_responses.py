"""Errors a client sees, end to end: every one in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``, with the status the SDK maps to the
right exception, and none of them disturbing what is already stored.

Most requests here are refused before any generation, so they run against respond in
front of the upstream test server (fast); image input is checked on the embedded model.
"""

# ruff: noqa: F811  (pytest fixtures imported from e2e are parameters here)

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from e2e import (
    EMBEDDED_MODEL,
    UP,
    assert_error,
    chat_messages,
    client_for,
    fronted,  # noqa: F401  (fixture)
    sdk_error,
    upstream,  # noqa: F401  (fixture)
)
from servers import RunningServer, serve

from respond.testing.upstream import UpstreamServer

BODY_LIMIT = 2000


@pytest.fixture
def client(fronted: RunningServer) -> openai.OpenAI:
    return client_for(fronted)


@pytest.fixture(scope="module")
def stored(fronted: RunningServer) -> Any:
    """One stored, completed response to chain on and to check stays intact."""
    return client_for(fronted).responses.create(model=UP, input="remember me")


def post(server: RunningServer, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(server.base_url + "/responses", timeout=30, **kwargs)


# -- the request body ------------------------------------------------------------------------


def test_malformed_json_is_a_400(fronted: RunningServer) -> None:
    reply = post(fronted, content=b'{"model": "up", "input": ',
                 headers={"content-type": "application/json"})
    error = assert_error(reply, 400)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


def test_a_body_that_is_not_an_object_is_a_400(fronted: RunningServer) -> None:
    assert_error(post(fronted, [{"model": UP}]), 400)


def test_unknown_parameter_is_named(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, input="hi", extra_body={"temprature": 0.2})
    error = sdk_error(caught.value, 400, code="unknown_parameter", param="temprature")
    assert "temprature" in error["message"]


def test_missing_input_is_named(fronted: RunningServer) -> None:
    assert_error(post(fronted, {"model": UP}), 400, code="missing_required_parameter",
                 param="input")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_output_tokens": 15}, "max_output_tokens"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"note": "x" * 600}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"temperature": "hot"}, "temperature"),
    ],
    ids=["temperature", "top_p", "max_output_tokens", "metadata-17-pairs",
         "metadata-long-value", "metadata-long-key", "truncation", "temperature-type"],
)
def test_bad_values_are_400s_naming_the_parameter(client: openai.OpenAI, extra: dict[str, Any],
                                                  param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, input="hi", extra_body=extra)
    error = sdk_error(caught.value, 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert error["code"] in ("invalid_value", "invalid_type")


def test_values_at_the_limits_are_accepted(client: openai.OpenAI) -> None:
    metadata = {f"{i:0>64}": "v" * 512 for i in range(16)}
    response = client.responses.create(model=UP, input="hi", metadata=metadata,
                                       temperature=2, top_p=0, max_output_tokens=16)
    assert response.metadata == metadata
    assert response.temperature == 2 and response.top_p == 0


def test_assistant_message_with_input_text_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, input=[
            {"role": "assistant", "content": [{"type": "input_text", "text": "I said so"}]},
            {"role": "user", "content": "really?"},
        ])
    error = sdk_error(caught.value, 400, param="input[0].content[0].type")
    assert "output_text" in error["message"]


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-nonexistent", input="hi")
    error = sdk_error(caught.value, 404, code="model_not_found", param="model")
    assert "gpt-nonexistent" in error["message"]


def test_unknown_previous_response_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, input="hi", previous_response_id="resp_doesnotexist")
    error = sdk_error(caught.value, 400, code="previous_response_not_found",
                      param="previous_response_id")
    assert "resp_doesnotexist" in error["message"]


def test_duplicate_item_with_previous_response_is_a_400(client: openai.OpenAI,
                                                        stored: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, previous_response_id=stored.id,
                                input=[*stored.output, {"role": "user", "content": "again"}])
    error = sdk_error(caught.value, 400)
    assert stored.output[0].id in error["message"]


# -- images on a text-only model -------------------------------------------------------------

IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}


def test_image_input_on_the_embedded_model_is_a_400(embedded: RunningServer) -> None:
    client = client_for(embedded)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=EMBEDDED_MODEL, max_output_tokens=16, input=[
            {"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, IMAGE]}])
    error = sdk_error(caught.value, 400)
    assert "image" in error["message"].lower()
    assert error["param"] is not None and error["param"].startswith("input[0]")


def test_image_error_names_the_input_index_when_chaining(client: openai.OpenAI,
                                                         stored: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=UP, previous_response_id=stored.id, input=[
            {"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, IMAGE]}])
    error = sdk_error(caught.value, 400)
    assert "image" in error["message"].lower()
    assert error["param"] is not None and error["param"].startswith("input[0]")


# -- other endpoints -------------------------------------------------------------------------


def test_cancel_of_a_foreground_response_is_a_400(client: openai.OpenAI, stored: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(stored.id)
    sdk_error(caught.value, 400)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.cancel("resp_doesnotexist")
    sdk_error(unknown.value, 404)
    assert client.responses.retrieve(stored.id).status == "completed"


def test_get_of_an_unknown_id_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve("resp_doesnotexist")
    error = sdk_error(caught.value, 404)
    assert "resp_doesnotexist" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_doesnotexist")


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_input_items_limit_out_of_range(client: openai.OpenAI, stored: Any, limit: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(stored.id, limit=limit)
    sdk_error(caught.value, 400, param="limit")


def test_input_items_limit_bounds_are_accepted(client: openai.OpenAI, stored: Any) -> None:
    assert len(client.responses.input_items.list(stored.id, limit=1).data) == 1
    assert len(client.responses.input_items.list(stored.id, limit=100).data) == 1


def test_unknown_route_and_method_use_the_envelope(fronted: RunningServer) -> None:
    assert_error(httpx.get(fronted.base_url + "/nothing-here"), 404)
    assert_error(httpx.put(fronted.base_url + "/responses", json={}), 405)


def test_a_bad_request_leaves_stored_responses_intact(
        client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.reset()
    upstream.configure(reply="kept answer")
    first = client.responses.create(model=UP, input="kept question")
    before = client.responses.retrieve(first.id).model_dump()
    bad = [
        {"previous_response_id": first.id, "input": "x", "temperature": 9},
        {"previous_response_id": first.id, "input": [
            {"role": "assistant", "content": [{"type": "input_text", "text": "bad"}]}]},
        {"previous_response_id": first.id, "input": "x", "unknown_thing": 1},
    ]
    for extra in bad:
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=UP, extra_body=extra)
    assert len(upstream.requests) == 1  # nothing bad reached the model
    assert client.responses.retrieve(first.id).model_dump() == before
    upstream.configure(reply="follow-up answer")
    follow = client.responses.create(model=UP, input="follow-up", previous_response_id=first.id)
    assert follow.status == "completed"
    assert chat_messages(upstream.requests[-1]) == [
        {"role": "user", "content": "kept question"},
        {"role": "assistant", "content": "kept answer"},
        {"role": "user", "content": "follow-up"},
    ]


# -- body size -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bodies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # the model is never reached: every request here is refused or fails before generation
    config = {
        "server": {"max_body_bytes": BODY_LIMIT},
        "models": {"m": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                         "timeout": 1}},
    }
    with serve(config, tmp_path_factory.mktemp("small-bodies")) as server:
        yield server


def test_body_over_the_limit_is_a_413(small_bodies: RunningServer) -> None:
    big = {"model": "m", "input": "x" * (BODY_LIMIT + 100)}
    assert_error(post(small_bodies, big), 413)

    def chunks() -> Iterator[bytes]:  # no content-length: the server must count
        yield b'{"model": "m", "input": "'
        for _ in range(30):
            yield b"y" * 100
        yield b'"}'

    assert_error(post(small_bodies, content=chunks(),
                      headers={"content-type": "application/json"}), 413)

    client = client_for(small_bodies)
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="m", input="z" * (BODY_LIMIT + 100))
    assert caught.value.status_code == 413
    sdk_error(caught.value, 413)


def test_body_under_the_limit_is_read(small_bodies: RunningServer) -> None:
    # just under the limit: parsed (so the unknown model is what gets reported)
    body = {"model": "nope", "input": "x" * (BODY_LIMIT - 100)}
    assert_error(post(small_bodies, body), 404, code="model_not_found")
