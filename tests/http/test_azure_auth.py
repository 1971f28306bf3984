"""Azure flavours and API keys, end to end: ``AzureOpenAI`` on the legacy ``/openai`` routes,
``OpenAI`` on ``/openai/v1``, and a server configured with ``[server] api_keys``.

The server sits in front of the upstream test server, so no second embedded model loads.
"""

# ruff: noqa: F811  (pytest fixtures imported from e2e are parameters here)

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from e2e import UP, assert_error, upstream, upstream_config  # noqa: F401  (fixture)
from servers import RunningServer, serve

from respond.testing.upstream import UpstreamServer

KEY = "sk-test"
API_VERSION = "2025-04-01-preview"
ANSWER = "Hello from the upstream."


@pytest.fixture(scope="module")
def keyed(upstream: UpstreamServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(upstream_config(upstream, api_keys=[KEY]),
               tmp_path_factory.mktemp("keyed")) as server:
        yield server


@pytest.fixture(autouse=True)
def _answer(upstream: UpstreamServer) -> None:
    upstream.reset()
    upstream.configure(reply=ANSWER)


class Recorder:
    """An SDK HTTP client that remembers what it sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, httpx.URL | Any, dict[str, str]]] = []
        self.http = openai.DefaultHttpxClient(event_hooks={"request": [self._hook]})

    def _hook(self, request: Any) -> None:
        self.sent.append((request.method, request.url, dict(request.headers)))


def test_azure_client_on_the_legacy_routes(keyed: RunningServer) -> None:
    recorder = Recorder()
    client = openai.AzureOpenAI(azure_endpoint=keyed.url, api_key=KEY, api_version=API_VERSION,
                                http_client=recorder.http, max_retries=0)
    created = client.responses.create(model=UP, input="hi")
    assert created.status == "completed" and created.output_text == ANSWER
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == ANSWER
    items = client.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["hi"]  # type: ignore[union-attr]

    assert [(m, u.path) for m, u, _ in recorder.sent] == [
        ("POST", "/openai/responses"),
        ("GET", f"/openai/responses/{created.id}"),
        ("GET", f"/openai/responses/{created.id}/input_items"),
    ]
    for _, url, headers in recorder.sent:
        assert url.params["api-version"] == API_VERSION
        assert headers["api-key"] == KEY
        assert "authorization" not in headers


def test_azure_streaming_on_the_legacy_routes(keyed: RunningServer) -> None:
    client = openai.AzureOpenAI(azure_endpoint=keyed.url, api_key=KEY, api_version=API_VERSION,
                                max_retries=0)
    with client.responses.stream(model=UP, input="hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == ANSWER == final.output_text


def test_openai_client_on_the_azure_v1_routes(keyed: RunningServer) -> None:
    recorder = Recorder()
    client = openai.OpenAI(base_url=keyed.url + "/openai/v1", api_key=KEY,
                           http_client=recorder.http, max_retries=0)
    created = client.responses.create(model=UP, input="hi")
    assert created.output_text == ANSWER
    assert client.responses.retrieve(created.id).output_text == ANSWER
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert {u.path for _, u, _ in recorder.sent} == {
        "/openai/v1/responses", f"/openai/v1/responses/{created.id}"}
    assert all(h["authorization"] == f"Bearer {KEY}" for _, _, h in recorder.sent)


def test_a_response_is_the_same_on_every_prefix(keyed: RunningServer) -> None:
    client = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    created = client.responses.create(model=UP, input="hi")
    headers = {"authorization": f"Bearer {KEY}"}
    bodies = [httpx.get(f"{keyed.url}{prefix}/responses/{created.id}", headers=headers,
                        params={"api-version": API_VERSION}).json()
              for prefix in ("/v1", "/openai/v1", "/openai")]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["id"] == created.id


# -- API keys --------------------------------------------------------------------------------


def test_no_key_is_a_401(keyed: RunningServer) -> None:
    for path in ("/v1/responses", "/openai/responses", "/openai/v1/models"):
        reply = httpx.get(keyed.url + path)
        assert_error(reply, 401, code="invalid_api_key")
    reply = httpx.post(keyed.base_url + "/responses", json={"model": UP, "input": "hi"})
    error = assert_error(reply, 401, code="invalid_api_key")
    assert error["type"] == "invalid_request_error"


def test_wrong_key_is_refused(keyed: RunningServer, upstream: UpstreamServer) -> None:
    client = openai.OpenAI(base_url=keyed.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.responses.create(model=UP, input="hi")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    azure = openai.AzureOpenAI(azure_endpoint=keyed.url, api_key="sk-wrong",
                               api_version=API_VERSION, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        azure.responses.create(model=UP, input="hi")
    for headers in ({"authorization": "Bearer sk-tes"}, {"authorization": f"Basic {KEY}"},
                    {"api-key": KEY + "x"}, {"authorization": KEY}):
        reply = httpx.post(keyed.base_url + "/responses", headers=headers,
                           json={"model": UP, "input": "hi"})
        assert_error(reply, 401, code="invalid_api_key")
    assert upstream.requests == []  # nothing unauthenticated reached the model


def test_right_key_as_bearer_or_api_key(keyed: RunningServer) -> None:
    body = {"model": UP, "input": "hi"}
    for headers in ({"authorization": f"Bearer {KEY}"}, {"api-key": KEY}):
        reply = httpx.post(keyed.base_url + "/responses", headers=headers, json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "completed"
    client = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    assert client.responses.create(**body).output_text == ANSWER
    assert UP in [m.id for m in client.models.list().data]


def test_health_needs_no_key(keyed: RunningServer) -> None:
    reply = httpx.get(keyed.url + "/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}
