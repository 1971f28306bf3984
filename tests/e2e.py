"""Helpers for the end-to-end tests in ``tests/http``: raw SSE decoding, error-envelope checks,
and module-scoped servers (a real ``UpstreamServer`` and a respond server in front of it).

Fixtures defined here are imported by name into the test modules that use them (pytest finds
fixtures in a module's namespace); each module gets its own servers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from servers import RunningServer, free_port, serve

from respond.testing.upstream import UpstreamServer

EMBEDDED_MODEL = "smollm2-135m-instruct"

# The respond server in front of the upstream offers three models:
#   up   - the upstream, generous timeout
#   slow - the same upstream with a short timeout (for 504s)
#   dead - a loopback port nobody listens on (for 502s)
UP, SLOW, DEAD = "up", "slow", "dead"
SLOW_TIMEOUT = 0.5


def upstream_config(upstream: UpstreamServer, **server: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": {
            UP: {"backend": "openai", "base_url": upstream.base_url, "timeout": 5},
            SLOW: {"backend": "openai", "base_url": upstream.base_url, "timeout": SLOW_TIMEOUT},
            DEAD: {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                   "timeout": 2},
        }
    }
    if server:
        config["server"] = server
    return config


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tokens=16) as server:
        yield server


@pytest.fixture(scope="module")
def fronted(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RunningServer]:
    """respond with the upstream-backed models and no API keys."""
    with serve(upstream_config(upstream), tmp_path_factory.mktemp("fronted")) as server:
        yield server


def client_for(server: RunningServer, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "sk-unused")
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 30)
    return openai.OpenAI(base_url=server.base_url, **kwargs)


# -- wire helpers ---------------------------------------------------------------------------


def parse_sse(raw: str) -> list[tuple[str | None, list[str]]]:
    """Each SSE frame as (event name, data lines); comment lines are skipped."""
    frames: list[tuple[str | None, list[str]]] = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            else:
                raise AssertionError(f"unexpected SSE field {field!r} in frame {block!r}")
        if event is None and not data:
            continue
        frames.append((event, data))
    return frames


def sse_events(raw: str) -> list[dict[str, Any]]:
    """The decoded events of a stream, checking the framing of every frame on the way."""
    events = []
    for name, data in parse_sse(raw):
        assert len(data) == 1, f"expected one data line, got {data!r}"
        assert data[0] != "[DONE]", "respond must not send [DONE]"
        event = json.loads(data[0])
        assert name == event["type"], f"event: {name!r} but type {event['type']!r}"
        events.append(event)
    return events


def assert_error(response: httpx.Response, status: int, *, code: Any = ...,
                 param: Any = ...) -> dict[str, Any]:
    """The OpenAI error envelope with all four keys; ``code``/``param`` checked when given."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not ...:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    return error


def sdk_error(exc: openai.APIStatusError, status: int, *, code: Any = ...,
              param: Any = ...) -> dict[str, Any]:
    """Same checks on an error the SDK raised."""
    return assert_error(exc.response, status, code=code, param=param)


def wait_until(condition: Callable[[], bool], within: float = 60.0) -> bool:
    """Whether ``condition`` comes true; ``within`` only guards against a hang."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


TERMINAL = ("completed", "incomplete", "failed", "cancelled")


def finished(client: openai.OpenAI, response_id: str, within: float = 60.0) -> Any:
    """The response once it reached a terminal status (``within`` only guards against a
    hang: the last state seen is returned then, for the caller's assertion to name)."""
    deadline = time.monotonic() + within
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in TERMINAL or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def chat_messages(received: Any) -> list[dict[str, Any]]:
    """The messages of one recorded upstream request, reduced to role and content."""
    return [{"role": m["role"], "content": m.get("content")} for m in received.body["messages"]]
