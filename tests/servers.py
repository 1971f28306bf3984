"""Real respond servers on loopback ports, for tests driven with the official ``openai`` SDK."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from respond.app import create_app
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
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", access_log=False)
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
    server = RunningServer(build_settings(raw_config, {}, data_dir), **overrides).start()
    try:
        yield server
    finally:
        server.stop()
