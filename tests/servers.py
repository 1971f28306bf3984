"""Real respond servers on loopback ports, for tests driven with the official ``openai`` SDK."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from respond.app import create_app
from respond.http.corking import CorkedHttpToolsProtocol
from respond.settings import Settings, build_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    """A respond server in a background thread with its own event loop."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings, **overrides)
        # the HTTP protocol ``respond serve`` uses
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", access_log=False, proxy_headers=False,
                                http=CorkedHttpToolsProtocol)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("respond did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (to reach its store or service)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @property
    def service(self) -> Any:
        return self.app.state.service


@contextlib.contextmanager
def serve(raw_config: dict[str, Any], data_dir: Path, **overrides: Any) -> Iterator[RunningServer]:
    """A running respond with this configuration, on the suite's database (see below)."""
    with contextlib.ExitStack() as stack:
        server_config = dict(raw_config.get("server") or {})
        if "database_url" not in server_config:
            url = stack.enter_context(suite_database())
            if url is not None:
                server_config["database_url"] = url
        config = {**raw_config, "server": server_config}
        server = RunningServer(build_settings(config, {}, data_dir), **overrides).start()
        stack.callback(server.stop)
        yield server


# -- the database under test ------------------------------------------------------------------
# RESPOND_TEST_DATABASE=postgres runs every server of the end-to-end suite on PostgreSQL
# (RESPOND_TEST_POSTGRES_URL, default the local test database), each in a fresh schema.

TEST_DATABASE = os.environ.get("RESPOND_TEST_DATABASE", "sqlite")
POSTGRES_URL = os.environ.get(
    "RESPOND_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _on_postgres(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callers may be inside a loop
        pool.submit(asyncio.run, run()).result(timeout=60)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A ``database_url`` on a fresh PostgreSQL schema, dropped afterwards."""
    schema = f"e2e_{secrets.token_hex(6)}"
    _on_postgres(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        _on_postgres(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def suite_database() -> Iterator[str | None]:
    """The database_url the suite's servers use: None (SQLite in the data dir) or PostgreSQL."""
    if TEST_DATABASE == "postgres":
        with postgres_database() as url:
            yield url
    else:
        yield None
