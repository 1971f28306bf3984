"""One socket write per small response: uvicorn's HTTP protocol with the header block held
for the body that follows it.

uvicorn writes a response's status line and headers, then each body chunk, each with its own
``transport.write``: one system call, and one segment for the client to read, each. Here a
write that starts a response (``HTTP/1.1 ...``) is held until the next write, or the end of
the current pass of the event loop, and leaves together with it: a JSON response goes out as
one segment instead of two, and a stream's headers go out with its first event. Every other
write goes out at once, so no event of a stream waits for anything (a token arriving alone
costs no extra pass of the loop either).

Rules: ``close`` sends what is held before closing; everything else is the real transport's
(flow control acts on it as before: what is held is one header block at most).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport:
    """A transport that holds a header block until the next write or the loop's next pass."""

    __slots__ = ("_held", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._held is not None:
            held, self._held = self._held, None
            self._send(held + bytes(data))
        elif data[:5] == b"HTTP/":  # a status line and headers: wait for the body
            self._held = bytes(data)
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._end_of_pass)
        else:
            self._send(data)  # type: ignore[arg-type]

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
