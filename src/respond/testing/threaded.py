"""Running a uvicorn server in a background thread, shared by the test servers."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def start_in_thread(server: uvicorn.Server, sock: socket.socket, *, name: str,
                    timeout: float, what: str) -> threading.Thread:
    """Serve ``sock`` with ``server`` in a daemon thread; return once it accepts requests."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name,
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)
    return thread


def stop_in_thread(server: uvicorn.Server | None, thread: threading.Thread | None) -> None:
    if server is not None and thread is not None:
        server.should_exit = True
        thread.join(timeout=10)
