"""Embedded throughput: the zero-config model streamed through respond vs called in-process.

respond runs as ``respond serve`` with no model configured (the bundled SmolLM2-135M on the
embedded llama.cpp). The baseline loads the same GGUF with the same engine parameters into
this process with ``xllamacpp`` and calls ``Server.handle_chat_completions`` directly, with
a chunk callback and no HTTP. Same prompt, ``max_tokens``, temperature 0; runs alternate
(respond first on even pairs, direct first on odd ones) to cancel drift, and the medians are
compared. tokens/s = output tokens / (request start to last token).
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import harness
import load
import orjson

PROMPT = "Write a long story about a lighthouse keeper and a storm."
MODEL = "smollm2-135m-instruct"


def _engine_params(path: str) -> Any:
    """The parameters respond's LlamaCppBackend uses for its default model config
    (context 8192 per slot, 4 parallel slots, threads = usable cores)."""
    import xllamacpp as xlc

    from respond.settings import LlamaCppModel

    config = LlamaCppModel(backend="llamacpp")
    try:
        threads = config.threads or len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count() or 1
    params = xlc.CommonParams()
    params.model.path = path
    params.n_parallel = config.parallel
    params.n_ctx = config.context * config.parallel
    params.kv_unified = False
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.api_keys = [secrets.token_urlsafe(24)]
    params.ui = False
    params.verbosity = 0
    return params


class Direct:
    """The same model in this process, called without respond."""

    def __init__(self, max_tokens: int) -> None:
        import xllamacpp as xlc

        from respond.backends.llamacpp import bundled_model_path

        self.path = str(bundled_model_path())
        self.server = xlc.Server(_engine_params(self.path))
        self.body = {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def run(self) -> dict[str, Any]:
        first: list[float] = []
        last = [0.0]
        usage: dict[str, Any] = {}

        def on_chunk(chunk: dict[str, Any]) -> bool:
            now = time.perf_counter()
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    if not first:
                        first.append(now)
                    last[0] = now
            if chunk.get("usage"):
                usage.update(chunk["usage"])
            return False

        start = time.perf_counter()
        error = self.server.handle_chat_completions(self.body, on_chunk)
        end = time.perf_counter()
        if error:
            raise harness.Unavailable(f"xllamacpp answered {error}")
        return _figures(start, first[0] if first else end, last[0] or end, end,
                        int(usage.get("completion_tokens", 0)))

    def close(self) -> None:
        self.server = None


def through_respond(respond: harness.Proc, max_tokens: int) -> dict[str, Any]:
    body = orjson.dumps({"model": MODEL, "input": PROMPT, "max_output_tokens": max_tokens,
                         "temperature": 0, "stream": True})

    async def go() -> dict[str, Any]:
        async with load.session() as http:
            chunks: list[bytes] = []
            first = last = 0.0
            start = time.perf_counter()
            async with http.post(respond.url + "/v1/responses", data=body) as response:
                async for chunk in response.content.iter_any():
                    now = time.perf_counter()
                    if load.RESPONSES_TEXT in chunk:
                        first = first or now
                        last = now
                    chunks.append(chunk)
            end = time.perf_counter()
            if response.status != 200:
                raise harness.Unavailable(f"respond answered HTTP {response.status}: "
                                          f"{b''.join(chunks)[:300]!r}")
        text = b"".join(chunks)
        tokens = 0
        for line in text.split(b"\n"):
            # max_output_tokens reached ends with response.incomplete: still a full run
            if line.startswith(b"data: ") and (b'"type":"response.completed"' in line[:60]
                                               or b'"type":"response.incomplete"' in line[:60]):
                tokens = orjson.loads(line[6:])["response"]["usage"]["output_tokens"]
        if not tokens:
            raise harness.Unavailable(f"no terminal event with usage in the stream: "
                                      f"{text[-300:]!r}")
        figures = _figures(start, first or end, last or end, end, tokens)
        figures["text_deltas"] = text.count(load.RESPONSES_TEXT)
        return figures

    result: dict[str, Any] = load.run(go())
    return result


def _figures(start: float, first: float, last: float, end: float, tokens: int) -> dict[str, Any]:
    return {
        "tokens": tokens,
        "seconds": round(end - start, 4),
        "tokens_per_s": round(tokens / (end - start), 2) if tokens else 0.0,
        "ttft_ms": round((first - start) * 1000, 2),
        "decode_tokens_per_s": round((tokens - 1) / (last - first), 2)
        if tokens > 1 and last > first else None,
    }


def measure(respond: harness.Proc, pairs: int, max_tokens: int,
            budget_seconds: float) -> dict[str, Any]:
    """``pairs`` alternations, fewer (at least one) once ``budget_seconds`` have gone: on a
    busy machine llama.cpp slows down many times over and would hold up the whole run."""
    direct = Direct(max_tokens)
    started = time.perf_counter()
    try:
        through_respond(respond, max_tokens)  # warm-up: prompt cache, pages, pools
        direct.run()
        runs: dict[str, list[dict[str, Any]]] = {"respond": [], "direct": []}
        for pair in range(pairs):
            if pair and time.perf_counter() - started > budget_seconds:
                break
            order = ("respond", "direct") if pair % 2 == 0 else ("direct", "respond")
            for side in order:
                cpu_before, own_before = respond.cpu(), time.process_time()
                figures = through_respond(respond, max_tokens) if side == "respond" \
                    else direct.run()
                # each side's idle engine should stay idle while the other one generates
                figures["respond_process_cpu_s"] = round(respond.cpu() - cpu_before, 3)
                figures["bench_process_cpu_s"] = round(time.process_time() - own_before, 3)
                runs[side].append(figures)
    finally:
        direct.close()
    out: dict[str, Any] = {"prompt": PROMPT, "max_tokens": max_tokens, "model_path": direct.path,
                           "pairs": len(runs["direct"]), "pairs_planned": pairs}
    for side, figures in runs.items():
        out[side] = {
            "tokens_per_s": harness.percentile([f["tokens_per_s"] for f in figures], 50),
            "decode_tokens_per_s": harness.percentile(
                [f["decode_tokens_per_s"] or 0.0 for f in figures], 50),
            "ttft_ms": harness.percentile([f["ttft_ms"] for f in figures], 50),
            "tokens": [f["tokens"] for f in figures],
            "runs": figures,
        }
    return out
