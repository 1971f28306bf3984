"""History depth: a chain of turns linked with previous_response_id, served in-process.

respond runs here, in this process (``create_app`` served by uvicorn on its own thread and
event loop, as the tests do), so that its store can be wrapped in a counting proxy and
read after every turn. The client is a plain blocking HTTP connection on the main thread;
respond's CPU for a turn is the process's CPU clock minus the main thread's CPU clock
(both nanosecond clocks), i.e. everything the server's threads (event loop, SQLite) spent.
The upstream is a separate process.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import load
import orjson
import uvicorn

MODEL = "bench"
BUCKET = 50


class CountingStore:
    """Forwards to a real store and counts calls of its coroutine methods."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def statements(self) -> int | None:
        value = getattr(self._inner, "statements", None)
        return value if isinstance(value, int) else None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        calls = self.calls

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await attr(*args, **kwargs)

        return counted


class InProcessServer:
    """respond's app with a counting store, on a uvicorn server in a thread."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.port = harness.free_port()
        self.counting: CountingStore | None = None
        self.server: uvicorn.Server | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="respond-server", daemon=True)

    def _main(self) -> None:
        from respond.app import create_app
        from respond.cli import tune_gc
        from respond.http.corking import CorkedHttpToolsProtocol
        from respond.store.open import open_store

        async def serve() -> None:
            store = await open_store(self.settings.database_url())
            try:
                self.counting = CountingStore(store)
                app = create_app(self.settings, store=self.counting)
                tune_gc()  # as ``respond serve`` does
                config = uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                        log_level="warning", lifespan="on", access_log=False,
                                        http=CorkedHttpToolsProtocol, proxy_headers=False)
                self.server = uvicorn.Server(config)
                await self.server.serve()
            finally:
                await store.aclose()

        loop = load.new_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc
        finally:
            loop.close()

    def start(self) -> InProcessServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while self.server is None or not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise harness.Unavailable(f"in-process respond did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise harness.Unavailable("in-process respond did not start within 60 s")
            time.sleep(0.02)
        # the retention purge runs once at start-up (then hourly): let it finish, so that its
        # store calls are not counted as part of a turn
        while self.counting is None or not self.counting.calls["purge_files"]:
            if time.monotonic() > deadline:
                raise harness.Unavailable("in-process respond did not run its start-up purge")
            time.sleep(0.02)
        time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self._thread.join(timeout=30)


def _server_cpu() -> float:
    """CPU seconds of every thread of this process but the calling (client) thread."""
    return time.process_time() - time.thread_time()


def measure(work: Path, upstream: harness.Proc, turns: int,
            database_url: str | None = None) -> dict[str, Any]:
    """The chain on SQLite in ``work`` (the default), or on ``database_url``."""
    from respond.settings import build_settings

    # no background workers: their polling would add store calls unrelated to the turns
    server: dict[str, Any] = {"background_workers": 0}
    if database_url:
        server["database_url"] = database_url
    config = {
        "server": server,
        "models": {MODEL: {"backend": "openai", "base_url": upstream.url + "/v1",
                           "model": "upstream-model"}},
    }
    settings = build_settings(config, {}, work / f"chain-data-{harness.free_port()}")
    server = InProcessServer(settings).start()
    try:
        return _run_chain(server, turns)
    finally:
        server.stop()


def _run_chain(server: InProcessServer, turns: int) -> dict[str, Any]:
    assert server.counting is not None
    counting = server.counting
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"content-type": "application/json"}
    previous: str | None = None
    latency_ms: list[float] = []
    cpu_ms: list[float] = []
    statements: list[int | None] = []
    calls: list[dict[str, int]] = []
    try:
        for turn in range(1, turns + 1):
            body: dict[str, Any] = {"model": MODEL, "input": f"Turn {turn}: tell me more."}
            if previous is not None:
                body["previous_response_id"] = previous
            payload = orjson.dumps(body)
            calls_before = Counter(counting.calls)
            statements_before = counting.statements
            cpu_before = _server_cpu()
            start = time.perf_counter()
            conn.request("POST", "/v1/responses", payload, headers)
            response = conn.getresponse()
            raw = response.read()
            elapsed = time.perf_counter() - start
            cpu = _server_cpu() - cpu_before
            if response.status != 200:
                raise harness.Unavailable(
                    f"turn {turn} answered HTTP {response.status}: {raw[:300]!r}")
            answer = orjson.loads(raw)
            if answer.get("status") != "completed":
                raise harness.Unavailable(f"turn {turn} ended {answer.get('status')}: "
                                          f"{answer.get('error')}")
            previous = answer["id"]
            latency_ms.append(elapsed * 1000)
            cpu_ms.append(cpu * 1000)
            after = counting.statements
            statements.append(None if after is None or statements_before is None
                              else after - statements_before)
            calls.append(dict(Counter(counting.calls) - calls_before))
    finally:
        conn.close()
    return summarize(latency_ms, cpu_ms, statements, calls)


def summarize(latency_ms: list[float], cpu_ms: list[float], statements: list[int | None],
              calls: list[dict[str, int]]) -> dict[str, Any]:
    turns = len(latency_ms)
    chained = range(1, turns)  # turn 1 has no previous response; depth counts from turn 2
    depths = [float(i + 1) for i in chained]
    buckets = []
    for start in range(1, turns, BUCKET):
        idx = list(range(start, min(start + BUCKET, turns)))
        buckets.append({
            "turns": f"{idx[0] + 1}-{idx[-1] + 1}",
            "depth_mid": (idx[0] + idx[-1]) / 2 + 1,
            "latency_p50_ms": round(harness.percentile([latency_ms[i] for i in idx], 50), 3),
            "cpu_p50_ms": round(harness.percentile([cpu_ms[i] for i in idx], 50), 3),
            "cpu_mean_ms": round(sum(cpu_ms[i] for i in idx) / len(idx), 3),
        })
    mids = [b["depth_mid"] for b in buckets]
    chained_statements = {statements[i] for i in chained}
    chained_calls = {tuple(sorted(calls[i].items())) for i in chained}
    return {
        "turns": turns,
        "items_in_last_context": 2 * turns - 1,
        # the checked slope: least squares over the bucket medians (robust to GC spikes)
        "cpu_slope_ms_per_turn": round(harness.slope(mids, [b["cpu_p50_ms"] for b in buckets]),
                                       5),
        "cpu_slope_all_turns_ms_per_turn": round(
            harness.slope(depths, [cpu_ms[i] for i in chained]), 5),
        "latency_slope_ms_per_turn": round(
            harness.slope(mids, [b["latency_p50_ms"] for b in buckets]), 5),
        "cpu_first_bucket_ms": buckets[0]["cpu_p50_ms"],
        "cpu_last_bucket_ms": buckets[-1]["cpu_p50_ms"],
        "latency_first_bucket_ms": buckets[0]["latency_p50_ms"],
        "latency_last_bucket_ms": buckets[-1]["latency_p50_ms"],
        "statements_first_turn": statements[0],
        "statements_per_chained_turn": sorted(chained_statements, key=lambda v: v or 0),
        "statements_constant": len(chained_statements) == 1 and None not in chained_statements,
        "store_calls_first_turn": calls[0],
        "store_calls_per_chained_turn": [dict(c) for c in chained_calls],
        "store_calls_constant": len(chained_calls) == 1,
        "buckets": buckets,
        "per_turn": {
            "latency_ms": [round(v, 3) for v in latency_ms],
            "cpu_ms": [round(v, 3) for v in cpu_ms],
            "statements": statements,
        },
    }
