"""A busy zero-config server keeps its promises: background work that waits for the embedded
model's slots is never failed by the server's own reaper, whatever the load, and a request
abandoned by its client stops generating.

The leases here are the shortest allowed (1 s), so any job that a live worker holds while it
waits longer than that for a slot would be reaped if leases alone decided. Nothing asserts a
duration: each test waits for the state it needs, with generous guards against hangs only.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from e2e import EMBEDDED_MODEL, client_for
from servers import RunningServer, serve

HANG_GUARD = 600.0  # seconds; only a hang gets anywhere near this
LONG = {"max_output_tokens": 120, "temperature": 0.8}
STORY = "Write a very long story about a lighthouse keeper and the sea, chapter by chapter."


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = {"server": {"job_lease_seconds": 1, "background_workers": 8}}
    with serve(config, tmp_path_factory.mktemp("busy")) as server:
        yield server


def generating(server: RunningServer) -> int:
    return int(server.service.backends[EMBEDDED_MODEL].generating)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def holding_every_slot(client: openai.OpenAI, server: RunningServer,
                       slots: int = 4) -> Iterator[None]:
    """Long foreground streams, one per slot, each already generating."""
    started = threading.Semaphore(0)
    errors: list[BaseException] = []

    def stream(n: int) -> None:
        try:
            first = True
            with client.responses.stream(model=EMBEDDED_MODEL, input=f"{STORY} ({n})",
                                         **LONG) as events:
                for event in events:
                    if first and event.type == "response.output_text.delta":
                        first = False
                        started.release()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            started.release()

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(slots)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=HANG_GUARD), "a foreground stream never started"
    assert not errors, errors
    try:
        yield
    finally:
        for thread in threads:
            thread.join(timeout=HANG_GUARD)
        assert not errors, errors


def run_background_jobs(client: openai.OpenAI, count: int = 12) -> dict[str, set[str]]:
    """Create ``count`` short background responses and poll them all to their end; every
    status each one was seen in."""
    ids = [client.responses.create(model=EMBEDDED_MODEL, input=f"Say hello to #{n}.",
                                   background=True, max_output_tokens=16).id
           for n in range(count)]
    seen: dict[str, set[str]] = {i: set() for i in ids}
    deadline = time.monotonic() + HANG_GUARD
    while True:
        for response_id in ids:
            seen[response_id].add(client.responses.retrieve(response_id).status or "")
        if all(s & {"completed", "incomplete", "failed", "cancelled"} for s in seen.values()):
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)


def assert_all_finished(seen: dict[str, set[str]]) -> None:
    failed = [i for i, statuses in seen.items() if "failed" in statuses]
    assert not failed, f"{len(failed)} of {len(seen)} background responses were failed: {seen}"
    for statuses in seen.values():
        assert statuses & {"completed", "incomplete"}, statuses


def test_background_jobs_waiting_for_slots_all_finish(busy: RunningServer) -> None:
    client = client_for(busy, timeout=HANG_GUARD)
    with holding_every_slot(client, busy):
        seen = run_background_jobs(client)
    assert_all_finished(seen)


@pytest.fixture
def loaded_cores() -> Iterator[None]:
    """A busy loop on every core, for as long as the test runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_background_jobs_finish_while_busy_loops_load_the_cores(
        busy: RunningServer, loaded_cores: None) -> None:
    client = client_for(busy, timeout=HANG_GUARD)
    with holding_every_slot(client, busy):
        seen = run_background_jobs(client)
    assert_all_finished(seen)


def test_an_abandoned_request_stops_generating(busy: RunningServer, tmp_path: Path) -> None:
    """A plain (non-streaming) request whose client hangs up mid-generation: the generation
    stops, its slot is freed, and the response is stored as cancelled with what it had."""
    wait_for(lambda: generating(busy) == 0, "an idle model")
    live = busy.service.recorder.live
    body = orjson.dumps({"model": EMBEDDED_MODEL, "input": STORY, "max_output_tokens": 4000})
    with socket.create_connection(("127.0.0.1", busy.port)) as conn:
        conn.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: len(live) == 1 and generating(busy) == 1, "the generation to start")
        [response_id] = list(live)
        wait_for(lambda: any(item["type"] == "message" for item
                             in live[response_id].response["output"]) if live else True,
                 "the first tokens")
    wait_for(lambda: generating(busy) == 0, "the abandoned generation to stop")
    client = client_for(busy)
    stored = client.responses.retrieve(response_id)
    assert stored.status == "cancelled"
    assert stored.output and stored.output[0].type == "message"
