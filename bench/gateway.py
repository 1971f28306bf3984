"""Gateway cost: respond in front of the fast upstream vs the upstream called directly.

For each mode (non-streaming, streaming) and concurrency level, direct and respond runs
alternate (``rounds`` times each) so slow drift of a shared machine hits both alike. The CPU
time of the respond and upstream processes is read before and after every run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import harness
import load
import orjson

MODEL = "bench"
PROMPT = "Say something."
WARMUP = 100


def bodies(stream: bool) -> tuple[bytes, bytes]:
    """(Responses body for respond, Chat Completions body for the upstream): same content."""
    responses: dict[str, Any] = {"model": MODEL, "input": PROMPT}
    chat: dict[str, Any] = {"model": "upstream-model",
                            "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        responses["stream"] = True
        chat["stream"] = True
    return orjson.dumps(responses), orjson.dumps(chat)


def measure(respond: harness.Proc, upstream: harness.Proc, levels: dict[int, int],
            rounds: int, min_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stream in (False, True):
        mode = "streaming" if stream else "non_streaming"
        respond_body, chat_body = bodies(stream)
        targets = {
            "respond": load.Target(respond.url + "/v1/responses", respond_body, stream, False),
            "direct": load.Target(upstream.url + "/v1/chat/completions", chat_body, stream, True),
        }
        out[mode] = {}
        for concurrency, n in levels.items():
            out[mode][str(concurrency)] = _level(targets, respond, upstream, concurrency, n,
                                                 rounds, min_seconds)
    return out


def _level(targets: dict[str, load.Target], respond: harness.Proc, upstream: harness.Proc,
           concurrency: int, n: int, rounds: int, min_seconds: float) -> dict[str, Any]:
    per_round = max(1, n // rounds)
    totals = {side: load.LoadResult() for side in targets}
    cpu = {side: {"respond": 0.0, "upstream": 0.0, "client": 0.0} for side in targets}

    async def go() -> None:
        async with load.session() as http:
            for target in targets.values():  # warm both paths and their connection pools
                await load.run_load(http, target, min(WARMUP, n), concurrency)
            for _ in range(rounds):
                for side, target in targets.items():
                    before = (respond.cpu(), upstream.cpu(), time.process_time())
                    result = await load.run_load(http, target, per_round, concurrency,
                                                 min_seconds)
                    after = (respond.cpu(), upstream.cpu(), time.process_time())
                    cpu[side]["respond"] += after[0] - before[0]
                    cpu[side]["upstream"] += after[1] - before[1]
                    cpu[side]["client"] += after[2] - before[2]
                    totals[side].merge(result)

    load.run(go())
    level: dict[str, Any] = {}
    for side, result in totals.items():
        summary = result.summary()
        ok = max(len(result.latencies), 1)
        summary["respond_cpu_ms_per_request"] = round(cpu[side]["respond"] / ok * 1000, 3)
        summary["upstream_cpu_ms_per_request"] = round(cpu[side]["upstream"] / ok * 1000, 3)
        summary["client_cpu_ms_per_request"] = round(cpu[side]["client"] / ok * 1000, 3)
        level[side] = summary
    return level


def profile(respond: harness.Proc, n: int, concurrency: int, min_seconds: float,
            out_dir: Path) -> dict[str, Any]:
    """py-spy on respond during a non-streaming run (not one of the measured runs)."""
    py_spy = shutil.which("py-spy") or str(Path(harness.PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        raise harness.Unavailable("py-spy is not installed (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "profile-gateway.txt"
    body, _ = bodies(False)
    target = load.Target(respond.url + "/v1/responses", body, False, False)
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(respond.pid), "--format", "raw", "--rate", "250",
         "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # let py-spy attach

    async def go() -> None:
        async with load.session() as http:
            await load.run_load(http, target, n, concurrency, min_seconds)

    load.run(go())
    spy.send_signal(signal.SIGINT)  # SIGINT: py-spy writes its output and exits
    try:
        _, err = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        raise harness.Unavailable("py-spy did not finish") from None
    if not raw.exists():
        raise harness.Unavailable(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    return {"raw_file": str(raw), **top_functions(raw.read_text())}


# Frames that sit under every sample of the server (process entry, event loop, thread start):
# they would fill the cumulative list without saying anything.
_ROOT_FILES = ("<frozen runpy>", "asyncio/runners.py", "asyncio/base_events.py",
               "asyncio/events.py", "uvicorn/main.py", "uvicorn/server.py", "uvicorn/_compat.py",
               "respond/__main__.py", "respond/cli.py", "threading.py")


def _frame(frame: str) -> tuple[str, str]:
    """("function (file)", file) from py-spy's "function (file:line)"."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})", path


def _package(path: str) -> str:
    parts = path.split("/")
    if parts[0] == "respond" and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else "stdlib:" + parts[0]


def top_functions(collapsed: str, count: int = 15) -> dict[str, Any]:
    """Cumulative and self shares of samples per function (lines merged), and self shares
    per package, from py-spy's collapsed stacks (``frame;frame;... samples``)."""
    cumulative: dict[str, int] = {}
    own: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples_text = line.rpartition(" ")
        if not stack or not samples_text.isdigit():
            continue
        samples = int(samples_text)
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += samples
        for name in {name for name, path in frames if not path.endswith(_ROOT_FILES)}:
            cumulative[name] = cumulative.get(name, 0) + samples
        leaf, leaf_path = frames[-1]
        own[leaf] = own.get(leaf, 0) + samples
        package = _package(leaf_path)
        packages[package] = packages.get(package, 0) + samples

    def share(table: dict[str, int], limit: int) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:limit]
        return [{"function": f, "share": round(n / total, 3)} for f, n in ranked]

    return {
        "samples": total,
        "top_cumulative": share(cumulative, count),
        "top_self": share(own, count),
        "self_by_package": [{"package": p["function"], "share": p["share"]}
                            for p in share(packages, 20)],
    }
