"""CorkedTransport: writes made during one pass of the event loop leave as one write."""

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


async def test_a_write_leaves_with_the_next_one_or_at_the_end_of_the_pass() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(b"")
    assert raw.writes == []  # held for the next write
    corked.writelines([b"data: 1\n\n", bytearray(b"data: 2\n\n")])
    # the headers left with the first event; the second waits for a partner
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n"]
    await asyncio.sleep(0)  # the end of the pass sends it alone
    assert raw.writes[1:] == [b"data: 2\n\n"]

    corked.write(b"data: 3\n\n")  # a later pass: held until that pass ends
    assert raw.writes[2:] == []
    await asyncio.sleep(0)
    assert raw.writes[2:] == [b"data: 3\n\n"]


async def test_a_burst_of_writes_leaves_in_pairs() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    for n in range(5):
        corked.write(b"%d" % n)
    assert raw.writes == [b"01", b"23"]  # nothing is held past the next write
    await asyncio.sleep(0)
    assert raw.writes == [b"01", b"23", b"4"]


async def test_close_sends_what_is_held_first_and_nothing_after() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"last words")
    corked.close()
    assert raw.writes == [b"last words"] and raw.closed
    corked.write(b"too late")
    await asyncio.sleep(0)  # the scheduled flush finds the transport closing
    assert raw.writes == [b"last words"]


async def test_everything_else_is_the_real_transport() -> None:
    raw = RecordingTransport()
    corked = CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert corked.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert corked.is_closing() is False
