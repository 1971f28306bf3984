"""Fewer, larger socket writes: uvicorn's HTTP protocol with writes gathered per loop turn.

uvicorn writes a response's status line and headers, then every body chunk, each with its
own ``transport.write`` (one system call each when the socket buffer is empty). Here the
transport holds what is written during one pass of the event loop and sends it as one write
at the start of the next pass (``call_soon``): a JSON response leaves in one segment instead
of two, and SSE events produced back to back (a burst of tokens read in one block from the
upstream) leave together. Nothing waits longer than the rest of the current loop pass, so a
token that arrives alone is sent at once.

Rules: ``close`` sends what is held before closing; everything else is the real transport's
(flow control still acts on it: writes reach it one loop pass later).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport:
    """A transport whose writes are held until the event loop's next pass, then joined."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``CorkedTransport``; pass it as ``http=``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
