"""Background: jobs per second through respond's durable queue, on SQLite and PostgreSQL.

The client submits ``n`` background responses (16 at a time), then polls them in the order
they were submitted (4 pollers; the queue hands out the oldest job first) until every one
is terminal. jobs/s = n / (last job seen terminal - first submission). PostgreSQL runs in
a scratch database (``harness.scratch_database``), so concurrent test runs on the same
server cannot claim the benchmark's jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import load
import orjson

MODEL = "bench"
TERMINAL = {"completed", "incomplete", "failed", "cancelled"}
POLL_SLEEP = 0.02
TIMEOUT = 180.0


def measure(work: Path, upstream: harness.Proc, database_url: str | None, name: str,
            n: int) -> dict[str, Any]:
    server = "[server]\n"
    if database_url:
        server += f'database_url = "{database_url}"\n'
    config = server + harness.upstream_model(MODEL, upstream)
    respond = harness.start_respond(work, config, name=f"respond-{name}")
    with harness.running(respond):
        return load.run(_jobs(respond, n))


async def _jobs(respond: harness.Proc, n: int) -> dict[str, Any]:
    body = orjson.dumps({"model": MODEL, "input": "Say something in the background.",
                         "background": True})
    ids: list[str] = []
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    last_terminal = 0.0
    async with load.session() as http:
        cpu_before = respond.cpu()
        start = time.perf_counter()
        remaining = n

        async def submitter() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with http.post(respond.url + "/v1/responses", data=body) as response:
                    raw = await response.read()
                if response.status != 200:
                    remaining = 0
                    raise harness.Unavailable(
                        f"POST background:true answered HTTP {response.status}: {raw[:300]!r}"
                        + _log_hint(respond))
                ids.append(orjson.loads(raw)["id"])

        await asyncio.gather(*(submitter() for _ in range(16)))
        submitted = time.perf_counter()
        queue = list(ids)

        async def poller() -> None:
            nonlocal last_terminal
            while queue:
                response_id = queue.pop(0)
                while True:
                    async with http.get(f"{respond.url}/v1/responses/{response_id}") as response:
                        raw = await response.read()
                    if response.status != 200:
                        problems.append(f"GET {response_id}: HTTP {response.status}")
                        break
                    answer = orjson.loads(raw)
                    if answer["status"] in TERMINAL:
                        statuses[answer["status"]] += 1
                        last_terminal = max(last_terminal, time.perf_counter())
                        if answer["status"] != "completed" and len(problems) < 3:
                            problems.append(f"{response_id}: {answer['status']} "
                                            f"{answer.get('error')}")
                        break
                    if time.perf_counter() - start > TIMEOUT:
                        raise harness.Unavailable(
                            f"jobs still not terminal after {TIMEOUT:.0f} s "
                            f"({sum(statuses.values())} of {n} done)" + _log_hint(respond))
                    await asyncio.sleep(POLL_SLEEP)

        await asyncio.gather(*(poller() for _ in range(4)))
        cpu = respond.cpu() - cpu_before
    elapsed = last_terminal - start
    return {
        "jobs": n,
        "statuses": dict(statuses),
        "jobs_per_s": round(statuses["completed"] / elapsed, 1) if elapsed > 0 else None,
        "elapsed_s": round(elapsed, 3),
        "submit_per_s": round(n / (submitted - start), 1),
        "respond_cpu_ms_per_job": round(cpu / n * 1000, 3),
        "problems": problems[:3],
    }


def _log_hint(respond: harness.Proc) -> str:
    tail = [line for line in respond.log_tail(40).splitlines() if line.strip()]
    errors = [line for line in tail if "Error" in line or "error" in line]
    return f" (respond's log: {errors[-1].strip()[:300]})" if errors else ""
