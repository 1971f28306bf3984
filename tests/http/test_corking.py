"""CorkedTransport: a response's header block leaves with its first body write."""

from __future__ import annotations

import asyncio
from typing import Any

from respond.http.corking import CorkedTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1234)}.get(name, default)


async def test_headers_leave_with_the_first_body_write() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(b"")
    assert raw.writes == []  # held for the body
    corked.writelines([b'{"id": 1}', bytearray(b"more")])
    # the headers left with the first body write; the next one went out at once
    assert raw.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"id": 1}', b"more"]


async def test_body_writes_are_never_held() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    for n in range(3):
        corked.write(b"data: %d\n\n" % n)
    assert raw.writes == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]


async def test_headers_alone_leave_at_the_end_of_the_loop_pass() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    assert raw.writes == []
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"]


async def test_close_sends_what_is_held_first_and_nothing_after() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    corked.close()
    assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"] and raw.closed
    corked.write(b"too late")
    await asyncio.sleep(0)  # a write after close goes nowhere
    assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


async def test_everything_else_is_the_real_transport() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert corked.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert corked.is_closing() is False
