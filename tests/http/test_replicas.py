"""Two respond replicas on one PostgreSQL serve the same clients.

A background response created on one is finished, polled, cancelled and stream-resumed on
the other; a batch of jobs submitted to both runs each job exactly once.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e import UP, client_for, finished, sse_events, upstream_config, wait_until
from servers import POSTGRES_URL, RunningServer, postgres_database, serve
from wire import check_stream

from respond.testing.upstream import UpstreamServer


def _postgres_reachable() -> bool:
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        await conn.close()

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, probe()).result(timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    if not _postgres_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable on CI")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable")
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(tokens=12) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_upstream(upstream: UpstreamServer) -> Iterator[None]:
    upstream.reset()
    yield
    upstream.reset()


@pytest.fixture(scope="module")
def replicas(upstream: UpstreamServer, database: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[RunningServer, RunningServer]]:
    config = upstream_config(upstream, database_url=database, background_workers=4)
    with serve(config, tmp_path_factory.mktemp("a")) as a, \
            serve(config, tmp_path_factory.mktemp("b")) as b:
        yield a, b


def test_created_on_one_finished_and_read_on_the_other(
        replicas: tuple[RunningServer, RunningServer]) -> None:
    a, b = replicas
    created = client_for(a).responses.create(model=UP, input="hello", background=True)
    final = finished(client_for(b), created.id)
    assert final.status == "completed"
    assert final.output_text == " ".join(f"tok{i}" for i in range(12))
    # chaining works across replicas too
    follow_up = client_for(b).responses.create(model=UP, input="more",
                                               previous_response_id=created.id)
    assert follow_up.status == "completed"
    items = list(client_for(a).responses.input_items.list(follow_up.id, order="asc"))
    assert [i.id for i in items][1] == final.output[0].id


def test_cancelled_on_the_other_replica(replicas: tuple[RunningServer, RunningServer],
                                        upstream: UpstreamServer) -> None:
    a, b = replicas
    upstream.configure(tokens=5000, delay=0.02)  # 100 s of tokens, had it run on
    created = client_for(a).responses.create(model=UP, input="long", background=True)
    assert wait_until(lambda: len(client_for(b).responses.retrieve(created.id).output_text) > 0)
    cancelled = client_for(b).responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    text = cancelled.output_text
    # the worker, on replica a, stops: the upstream sees its stream abandoned
    assert wait_until(lambda: upstream.disconnects == 1), "the worker kept generating"
    after = client_for(a).responses.retrieve(created.id)
    assert after.status == "cancelled" and after.output_text == text
    assert len(text.split()) < 5000


def test_stream_resumed_on_the_other_replica(replicas: tuple[RunningServer, RunningServer],
                                             upstream: UpstreamServer) -> None:
    a, b = replicas
    upstream.configure(tokens=50, delay=0.01)
    first: list[dict[str, Any]] = []
    buffer = ""
    with httpx.stream("POST", f"{a.base_url}/responses", timeout=30,
                      json={"model": UP, "input": "go", "background": True,
                            "stream": True}) as response:
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                first.extend(sse_events(frame + "\n\n"))
            if len(first) >= 5:
                break
    response_id = first[0]["response"]["id"]
    cursor = first[-1]["sequence_number"]
    got = httpx.get(f"{b.base_url}/responses/{response_id}", timeout=30,
                    params={"stream": "true", "starting_after": str(cursor)})
    rest = sse_events(got.text)
    assert rest[0]["sequence_number"] == cursor + 1
    whole = first + rest
    check_stream(whole)
    text = "".join(e["delta"] for e in whole if e["type"] == "response.output_text.delta")
    assert text == client_for(a).responses.retrieve(response_id).output_text
    assert len(text.split()) == 50


def test_a_batch_of_jobs_runs_each_exactly_once(replicas: tuple[RunningServer, RunningServer],
                                                upstream: UpstreamServer,
                                                tmp_path: Path) -> None:
    a, b = replicas
    upstream.configure(tokens=4, delay=0.005)
    clients = [client_for(a), client_for(b)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: clients[i % 2].responses.create(
            model=UP, input=f"job number {i}", background=True).id, range(40)))
        finals = list(pool.map(lambda rid: finished(clients[1], rid), ids))
    assert [f.status for f in finals] == ["completed"] * 40
    prompts = [r.body["messages"][-1]["content"] for r in upstream.requests]
    assert sorted(prompts) == sorted(f"job number {i}" for i in range(40)), \
        "some job ran twice or not at all"
