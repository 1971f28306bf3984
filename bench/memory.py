"""Memory: respond's RSS idle, then with many concurrent streams held open.

respond serves two models: ``fast`` (the fast upstream, for warming up) and ``slow`` (an
upstream that waits ``delay`` seconds before each chunk, so its streams stay open). The
client opens ``streams`` streaming requests at once, waits until every one has received its
first text delta, samples respond's RSS for a few seconds, then closes them all.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import harness
import load
import orjson

HOLD_SECONDS = 3.0
OPEN_TIMEOUT = 90.0


def measure(respond: harness.Proc, streams: int, warmup: int) -> dict[str, Any]:
    fast = orjson.dumps({"model": "fast", "input": "Say something."})
    slow = orjson.dumps({"model": "slow", "input": "Say something slowly.", "stream": True})
    result: dict[str, Any] = {"streams": streams}

    async def go() -> None:
        async with load.session() as http:
            warm = await load.run_load(
                http, load.Target(respond.url + "/v1/responses", fast, False, False), warmup, 8)
            if warm.errors:
                raise harness.Unavailable(f"warm-up failed: {warm.first_error}")
        await asyncio.sleep(1.0)
        result["idle_rss_mb"] = round(respond.rss() / 2**20, 1)
        await _hold(respond, slow, streams, result)

    load.run(go())
    return result


async def _hold(respond: harness.Proc, body: bytes, streams: int, result: dict[str, Any]) -> None:
    opened = 0
    all_open = asyncio.Event()
    release = asyncio.Event()
    failures: list[str] = []
    ended_early = 0

    async def stream(http: Any) -> None:
        nonlocal opened, ended_early
        try:
            async with http.post(respond.url + "/v1/responses", data=body) as response:
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {(await response.read())[:200]!r}")
                    return
                seen = False
                async for chunk in response.content.iter_any():
                    if not seen and load.RESPONSES_TEXT in chunk:
                        seen = True
                        opened += 1
                        if opened == streams:
                            all_open.set()
                        await release.wait()
                        return  # leaving the block closes the connection mid-stream
                ended_early += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failures.append(f"{type(exc).__name__}: {exc}")

    # one connection per stream: the pool must not cap them
    async with load.session(limit=0) as http:
        cpu_before = respond.cpu()
        started = time.perf_counter()
        tasks = [asyncio.create_task(stream(http)) for _ in range(streams)]
        peak = 0
        while not all_open.is_set():
            peak = max(peak, respond.rss())
            settled = opened + len(failures) + ended_early
            if time.perf_counter() - started > OPEN_TIMEOUT or settled >= streams:
                break  # timed out, or every stream is open or has failed
            await asyncio.sleep(0.1)
        result["open_seconds"] = round(time.perf_counter() - started, 2)
        result["opened"] = opened
        samples = []
        hold_start = time.perf_counter()
        cpu_hold = respond.cpu()
        while time.perf_counter() - hold_start < HOLD_SECONDS:
            samples.append(respond.rss())
            await asyncio.sleep(0.25)
        result["open_streams_at_sample"] = opened
        result["streams_rss_mb"] = round(max(samples + [peak]) / 2**20, 1)
        result["streams_rss_mean_mb"] = round(sum(samples) / len(samples) / 2**20, 1)
        result["respond_cpu_while_holding_pct"] = round(
            (respond.cpu() - cpu_hold) / (time.perf_counter() - hold_start) * 100, 1)
        result["respond_cpu_to_open_ms_per_stream"] = round(
            (cpu_hold - cpu_before) / max(opened, 1) * 1000, 3)
        release.set()
        await asyncio.gather(*tasks)
    result["failures"] = len(failures)
    if failures:
        result["first_failure"] = failures[0]
    result["ended_before_release"] = ended_early
    await asyncio.sleep(2.0)  # respond stores the cancelled responses
    result["rss_after_close_mb"] = round(respond.rss() / 2**20, 1)
