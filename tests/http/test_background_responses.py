"""Background mode end to end: polling, cancel, stream resume, many jobs, kill -9.

respond runs in front of a real upstream over HTTP whose per-token delay makes responses
long enough to poll, cancel and interrupt.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e import (
    UP,
    assert_error,
    client_for,
    finished,
    sse_events,
    upstream_config,
    wait_until,
)
from servers import RunningServer, free_port, serve, suite_database
from wire import check_response, check_stream

from respond.testing.upstream import UpstreamServer

HANG_GUARD = 120.0  # seconds: waits end on the state they wait for; this only stops a hang


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tokens=12) as server:
        yield server


@pytest.fixture(scope="module")
def server(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    with serve(upstream_config(upstream), tmp_path_factory.mktemp("bg")) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return client_for(server)


@pytest.fixture(autouse=True)
def _fresh_upstream(upstream: UpstreamServer) -> Iterator[None]:
    upstream.reset()
    yield
    upstream.reset()


def poll(client: openai.OpenAI, response_id: str) -> Any:
    return finished(client, response_id, within=HANG_GUARD)


def test_background_response_is_queued_then_completes(client: openai.OpenAI) -> None:
    created = client.responses.create(model=UP, input="hello", background=True)
    assert created.background is True
    assert created.status in ("queued", "in_progress")
    assert created.output == [] and created.usage is None
    final = poll(client, created.id)
    assert final.status == "completed"
    assert final.output_text == " ".join(f"tok{i}" for i in range(12))
    assert final.usage is not None and final.usage.output_tokens == 12
    raw = httpx.get(f"{client.base_url}responses/{created.id}").json()
    check_response(raw)


def test_background_requires_store(server: RunningServer) -> None:
    response = httpx.post(f"{server.base_url}/responses",
                          json={"model": UP, "input": "x", "background": True, "store": False})
    assert_error(response, 400, param="store")


def test_cancel_stops_a_long_response(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(tokens=100_000, delay=0.02)  # far longer than any test runs
    created = client.responses.create(model=UP, input="a long story", background=True)

    def has_output() -> bool:
        current = client.responses.retrieve(created.id)
        return current.status == "in_progress" and len(current.output_text) > 0

    assert wait_until(has_output, within=HANG_GUARD), "the response never showed output"
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    text = cancelled.output_text
    # the upstream was told to stop: its stream was abandoned
    assert wait_until(lambda: upstream.disconnects >= 1, within=HANG_GUARD)
    later = client.responses.retrieve(created.id)
    assert later.status == "cancelled"
    assert later.output_text == text, "output kept growing after the cancel"
    # cancelling again returns the same response
    again = client.responses.cancel(created.id)
    assert again.status == "cancelled" and again.output_text == text


def test_cancel_of_finished_response_returns_it_unchanged(client: openai.OpenAI) -> None:
    created = client.responses.create(model=UP, input="hi", background=True)
    final = poll(client, created.id)
    assert final.status == "completed"
    after = client.responses.cancel(created.id)
    assert after.status == "completed"
    assert after.output_text == final.output_text


def test_cancel_of_foreground_response_is_400(client: openai.OpenAI) -> None:
    response = client.responses.create(model=UP, input="hi")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.cancel(response.id)
    assert_error(info.value.response, 400)


def test_cancel_unknown_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_unknown")


def _read_events(url: str, count: int | None = None, **params: Any) -> list[dict[str, Any]]:
    """Read SSE events from ``url``; stop (and drop the connection) after ``count``."""
    events: list[dict[str, Any]] = []
    buffer = ""
    with httpx.stream("GET" if params.pop("_get", False) else "POST", url,
                      timeout=30, **params) as response:
        assert response.status_code == 200, response.read()
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                events.extend(sse_events(frame + "\n\n"))
                if count is not None and len(events) >= count:
                    return events
    return events


def test_background_stream_resumes_without_gaps(server: RunningServer,
                                                upstream: UpstreamServer) -> None:
    upstream.configure(tokens=60, delay=0.01)
    first = _read_events(f"{server.base_url}/responses", count=6,
                         json={"model": UP, "input": "go", "background": True, "stream": True})
    assert [e["type"] for e in first[:3]] == ["response.created", "response.queued",
                                             "response.in_progress"]
    assert first[0]["response"]["status"] == "queued"
    response_id = first[0]["response"]["id"]
    cursor = first[-1]["sequence_number"]
    # dropped: the response goes on without the client
    rest = _read_events(f"{server.base_url}/responses/{response_id}", _get=True,
                        params={"stream": "true", "starting_after": str(cursor)})
    assert rest[0]["sequence_number"] == cursor + 1
    whole = first + rest
    check_stream(whole)
    assert whole[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in whole if e["type"] == "response.output_text.delta")
    stored = httpx.get(f"{server.base_url}/responses/{response_id}").json()
    assert stored["status"] == "completed"
    assert text == stored["output"][0]["content"][0]["text"]
    assert len(text.split()) == 60
    # a full replay from the start equals what was streamed
    replay = _read_events(f"{server.base_url}/responses/{response_id}", _get=True,
                          params={"stream": "true"})
    assert replay == whole


def test_sdk_resumes_a_background_stream(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(tokens=30, delay=0.005)
    stream = client.responses.create(model=UP, input="go", background=True, stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 5:
            break
    stream.close()
    response_id = seen[0].response.id
    with client.responses.stream(response_id=response_id,
                                 starting_after=seen[-1].sequence_number) as resumed:
        later = list(resumed)
        final = resumed.get_final_response()
    assert later[0].sequence_number == seen[-1].sequence_number + 1
    assert final.status == "completed"
    assert final.output_text == client.responses.retrieve(response_id).output_text


def test_stream_of_a_foreground_response_is_refused(client: openai.OpenAI,
                                                    server: RunningServer) -> None:
    response = client.responses.create(model=UP, input="hi")
    got = httpx.get(f"{server.base_url}/responses/{response.id}", params={"stream": "true"})
    assert_error(got, 400, param="stream")


def test_many_concurrent_background_responses(client: openai.OpenAI) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: client.responses.create(
            model=UP, input=f"job {i}", background=True).id, range(24)))
        finals = list(pool.map(lambda rid: poll(client, rid), ids))
    assert [f.status for f in finals] == ["completed"] * 24
    assert len(set(ids)) == 24


# -- kill -9 --------------------------------------------------------------------------------


def _start_respond(config: Path, data: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "respond", "serve", "--port", str(port), "--config", str(config),
         "--data-dir", str(data), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/health"
    if not wait_until(lambda: _healthy(url), within=30):
        process.kill()
        raise AssertionError(process.stderr.read().decode() if process.stderr else "no start")
    return process


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def database_line() -> Iterator[str]:
    with suite_database() as url:
        yield "" if url is None else f'database_url = "{url}"\n'


def test_kill_9_leaves_no_response_in_progress(upstream: UpstreamServer, tmp_path: Path,
                                               database_line: str) -> None:
    upstream.configure(tokens=2000, delay=0.01)
    config = tmp_path / "respond.toml"
    config.write_text(
        "[server]\njob_lease_seconds = 2\n" + database_line +
        f'[models.up]\nbackend = "openai"\nbase_url = "{upstream.base_url}"\n'
    )
    port = free_port()
    process = _start_respond(config, tmp_path / "data", port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    done_before = client.responses.create(model=UP, input="short", background=False,
                                          max_output_tokens=16)
    created = client.responses.create(model=UP, input="long", background=True)
    assert wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress",
                      within=HANG_GUARD)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)

    process = _start_respond(config, tmp_path / "data", port)
    try:
        final = poll(client, created.id)
        assert final.status == "failed"
        assert final.error is not None and "not retried" in final.error.message
        # nothing stored before the crash was lost
        assert client.responses.retrieve(done_before.id).output_text == done_before.output_text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
