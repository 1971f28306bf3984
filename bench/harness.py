"""Processes and measurements shared by every section of the benchmark.

respond and the upstream run as separate processes so that the CPU time of each can be read
on its own (``/proc/<pid>/stat`` through psutil: user + system, all threads). The load
generator runs in the benchmark's own process and competes with them for the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """A section (or one row of it) cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft limit on open files (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def calibration_ms() -> float:
    """CPU milliseconds of a fixed pure-Python workload (best of 5): compare machines with it."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        data = {}
        for i in range(20000):
            data[f"k{i}"] = [i, str(i), {"x": i * 2}]
        total = sum(len(v[1]) for v in data.values())
        assert total > 0
        best = min(best, time.process_time() - start)
    return round(best * 1000, 2)


@dataclass
class Proc:
    """A child process with its log file; CPU and RSS read from /proc."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        """User + system CPU seconds of the whole process (every thread) so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def _spawn(name: str, args: list[str], workdir: Path, port: int) -> Proc:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    env = dict(os.environ)
    env.pop("RESPOND_DATABASE_URL", None)
    env.pop("RESPOND_API_KEYS", None)
    popen = subprocess.Popen(
        [PYTHON, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=workdir, env=env,
    )
    log.close()
    return Proc(name, popen, log_path, port)


def last_error(log: str) -> str:
    """The last line of a log that names an exception or an error, else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) or line.startswith("respond:"):
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def _wait_ready(proc: Proc, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2, trust_env=False) as client:
        while True:
            if not proc.alive():
                tail = proc.log_tail(40)
                raise Unavailable(
                    f"{proc.name} exited with code {proc.popen.returncode} at start-up: "
                    f"{last_error(tail)}\n{tail}"
                )
            try:
                if client.get(proc.url + path).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                proc.stop()
                raise Unavailable(f"{proc.name} did not answer {path} within {timeout:.0f} s:\n"
                                  + proc.log_tail())
            time.sleep(0.05)


def start_upstream(workdir: Path, *, tokens: int, delay: float = 0.0,
                   name: str = "upstream") -> Proc:
    """``python -m respond.testing.upstream``: a fast fake Chat Completions server."""
    port = free_port()
    args = ["-m", "respond.testing.upstream", "--port", str(port), "--tokens", str(tokens)]
    if delay:
        args += ["--delay", str(delay)]
    proc = _spawn(name, args, workdir, port)
    _wait_ready(proc, "/v1/models", 30)
    return proc


def upstream_model(name: str, upstream: Proc) -> str:
    return (f'[models.{name}]\nbackend = "openai"\nbase_url = "{upstream.url}/v1"\n'
            f'model = "upstream-model"\n')


def start_respond(workdir: Path, config: str, *, name: str = "respond",
                  timeout: float = 120) -> Proc:
    """``python -m respond serve`` with ``config`` (TOML text) and its own data directory."""
    port = free_port()
    config_path = workdir / f"{name}.toml"
    config_path.write_text(config)
    data_dir = workdir / f"{name}-data"
    args = ["-m", "respond", "serve", "--config", str(config_path), "--data-dir", str(data_dir),
            "--port", str(port), "--log-level", "warning"]
    proc = _spawn(name, args, workdir, port)
    _wait_ready(proc, "/health", timeout)
    return proc


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"respond-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / sxx if sxx else 0.0


# -- PostgreSQL ------------------------------------------------------------------------------


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[tuple[str, str]]:
    """A fresh database beside ``url``'s, dropped afterwards: (its URL, a note). Test suites
    running against the same server at the same time then cannot see its rows (nor claim
    its background jobs), and it cannot see theirs."""
    try:
        import asyncpg
    except ImportError:
        yield url, "asyncpg not installed: used the configured database as it is"
        return
    parts = urlsplit(url)
    name = f"respond_bench_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name}"))
        asyncio.run(admin(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001 - fall back to the configured database
        yield url, f"could not create a scratch database ({exc}): used {parts.path[1:]}"
        return
    try:
        yield urlunsplit(parts._replace(path=f"/{name}")), f"scratch database {name}"
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
