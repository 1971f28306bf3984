"""Fewer socket writes: uvicorn's HTTP protocol with each write held for the next one.

uvicorn writes a response's status line and headers, then every body chunk, each with its
own ``transport.write`` (one system call, and one segment for the client to read, each).
Here a write is held until the next write or the end of the current pass of the event loop,
whichever comes first, and a held write leaves together with the one that follows it: a JSON
response leaves in one segment instead of two, and SSE events produced back to back (a burst
of tokens read in one block from the upstream) leave two by two. Nothing is held past the
next write, so a burst delays its first token by one event at most, and a token that arrives
alone is sent at the end of the loop pass that wrote it.

Rules: ``close`` sends what is held before closing; everything else is the real transport's
(flow control acts on it as before: a held write is at most one chunk).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport:
    """A transport that holds each write until the next one or the loop's next pass."""

    __slots__ = ("_held", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._held is None:
            self._held = bytes(data)
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._end_of_pass)
            return
        held, self._held = self._held, None
        self._send(held + bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._send(held)

    def _end_of_pass(self) -> None:
        self._scheduled = False
        self.flush()

    def _send(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``CorkedTransport``; pass it as ``http=``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
