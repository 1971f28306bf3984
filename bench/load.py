"""A lean closed-loop load generator: ``concurrency`` workers on one aiohttp session.

Each worker sends the same pre-encoded body again and again until ``n`` requests have been
sent. Latency runs from just before the request is written to the last byte of the body;
for streams, time to first text is taken when the first chunk holding the text marker
arrives. Bodies are searched as bytes (no JSON parsing, no per-line iteration), so the
client spends as little CPU as it can: it shares the cores with the servers it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from harness import percentile

# What marks the first text and a complete answer, per kind of endpoint.
RESPONSES_TEXT = b'"type":"response.output_text.delta"'
RESPONSES_DONE = b"event: response.completed"
RESPONSES_OK_JSON = b'"status":"completed"'
CHAT_TEXT = b'"content":"'  # followed by a non-empty string (checked)
CHAT_DONE = b"data: [DONE]"
CHAT_OK_JSON = b'"finish_reason":"stop"'


@dataclass
class Target:
    """What to send and how to recognise success."""

    url: str
    body: bytes
    stream: bool
    chat: bool  # Chat Completions (the upstream called directly) rather than Responses

    @property
    def text_marker(self) -> bytes:
        return CHAT_TEXT if self.chat else RESPONSES_TEXT

    @property
    def done_marker(self) -> bytes:
        if self.stream:
            return CHAT_DONE if self.chat else RESPONSES_DONE
        return CHAT_OK_JSON if self.chat else RESPONSES_OK_JSON


@dataclass
class LoadResult:
    n: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    ttft: list[float] = field(default_factory=list)  # seconds, streams only
    first_error: str | None = None

    def merge(self, other: LoadResult) -> None:
        self.n += other.n
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.ttft += other.ttft
        self.first_error = self.first_error or other.first_error

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        ms = 1000.0
        out: dict[str, Any] = {
            "requests": self.n,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 3),
            "rps": round(ok / self.elapsed, 1) if self.elapsed else None,
            "latency_p50_ms": _ms(percentile(self.latencies, 50)),
            "latency_p99_ms": _ms(percentile(self.latencies, 99)),
            "latency_mean_ms": round(sum(self.latencies) / ok * ms, 3) if ok else None,
        }
        if self.ttft:
            out["ttft_p50_ms"] = _ms(percentile(self.ttft, 50))
            out["ttft_p99_ms"] = _ms(percentile(self.ttft, 99))
        if self.first_error:
            out["first_error"] = self.first_error
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _has_text(buffer: bytes, marker: bytes, chat: bool) -> bool:
    start = 0
    while True:
        at = buffer.find(marker, start)
        if at < 0:
            return False
        if not chat:
            return True
        # Chat Completions: "content":"" (empty) and "content":null are not text yet
        after = at + len(marker)
        if after < len(buffer) and buffer[after:after + 1] != b'"':
            return True
        start = after


def session(limit: int = 0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=60,
                                     force_close=False, use_dns_cache=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
        headers={"content-type": "application/json"},
        skip_auto_headers=("User-Agent",),
    )


async def one(http: aiohttp.ClientSession, target: Target, result: LoadResult) -> None:
    """One request: record latency (and time to first text) or an error."""
    start = time.perf_counter()
    try:
        async with http.post(target.url, data=target.body) as response:
            if target.stream:
                seen_text = None
                done = False
                tail = b""
                text_marker, done_marker = target.text_marker, target.done_marker
                async for chunk in response.content.iter_any():
                    window = tail + chunk  # a marker may straddle two chunks
                    if seen_text is None and _has_text(window, text_marker, target.chat):
                        seen_text = time.perf_counter()
                    if not done and done_marker in window:
                        done = True
                    tail = window[-64:]
                body = tail
            else:
                body = await response.read()
                done = target.done_marker in body
            end = time.perf_counter()
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        result.errors += 1
        result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
        return
    if status != 200 or not done:
        result.errors += 1
        result.first_error = result.first_error or f"HTTP {status}: {body[-300:]!r}"
        return
    result.latencies.append(end - start)
    if target.stream:
        if seen_text is None:
            result.errors += 1
            result.first_error = result.first_error or "stream without text"
            return
        result.ttft.append(seen_text - start)


async def run_load(http: aiohttp.ClientSession, target: Target, n: int,
                   concurrency: int, min_seconds: float = 0.0) -> LoadResult:
    """At least ``n`` requests, ``concurrency`` at a time (closed loop), going on until
    ``min_seconds`` have passed: CPU time is read in clock ticks (10 ms), so a run must be
    long enough for them not to matter."""
    result = LoadResult()
    start = time.perf_counter()
    until = start + min_seconds

    async def worker() -> None:
        while result.n < n or time.perf_counter() < until:
            result.n += 1
            await one(http, target, result)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    result.elapsed = time.perf_counter() - start
    return result


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it comes with uvicorn[standard]): the leanest client loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)
