"""The ``Store`` contract for uploaded files, on every adapter (SQLite and PostgreSQL): the
contents come back byte for byte, a file is visible only once complete, listings page in
upload order, and deleted or expired files go with their contents."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable

import pytest
from storekit import NOW, TTL, Backend

from respond.store import Store, StoredFile

CHUNK = 64 * 1024


def stored(file_id: str, size: int, *, purpose: str = "user_data", created_at: int = NOW,
           expires_at: int = NOW + TTL, filename: str = "a.bin") -> StoredFile:
    return StoredFile(file_id, filename, purpose, size, "application/octet-stream",
                      created_at, expires_at)


async def chunks_of(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def save(store: Store, file_id: str, data: bytes = b"contents", **kwargs: object) -> None:
    await store.save_file(stored(file_id, len(data), **kwargs), chunks_of(data))  # type: ignore[arg-type]


async def read_all(store: Store, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.read_file(file_id)])


def ids_of(files: Iterable[StoredFile]) -> list[str]:
    return [f.id for f in files]


async def test_contents_come_back_byte_for_byte(store: Store, backend: Backend) -> None:
    data = os.urandom(CHUNK * 9 + 123)  # more chunks than one read fetches, and a short tail
    meta = stored("file-1", len(data), filename="résumé.pdf")
    await store.save_file(meta, chunks_of(data))
    assert await store.get_file("file-1", NOW) == meta
    assert await read_all(store, "file-1") == data
    assert await backend.count("file_chunks") == 10
    empty = stored("file-empty", 0)
    await store.save_file(empty, chunks_of(b""))
    assert await store.get_file("file-empty", NOW) == empty
    assert await read_all(store, "file-empty") == b""


async def test_unknown_file(store: Store) -> None:
    assert await store.get_file("file-nope", NOW) is None
    assert await read_all(store, "file-nope") == b""
    assert await store.delete_file("file-nope", NOW) is False


async def test_a_file_is_invisible_until_its_upload_completes(store: Store,
                                                              backend: Backend) -> None:
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"first half "
        await release.wait()
        yield b"second half"

    upload = asyncio.create_task(store.save_file(stored("file-1", 22), slow()))
    while await backend.count("file_chunks") == 0:
        await asyncio.sleep(0.01)
    assert await store.get_file("file-1", NOW) is None
    assert (await store.list_files(purpose=None, limit=10, order="desc", after=None,
                                   now=NOW)).files == []
    release.set()
    await upload
    assert await store.get_file("file-1", NOW) is not None
    assert await read_all(store, "file-1") == b"first half second half"


async def test_a_failed_upload_leaves_nothing(store: Store, backend: Backend) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"some bytes"
        raise OSError("the client went away")

    with pytest.raises(OSError):
        await store.save_file(stored("file-1", 100), broken())
    assert await store.get_file("file-1", NOW) is None
    assert await backend.count("files") == 0
    assert await backend.count("file_chunks") == 0
    with pytest.raises(ValueError):  # fewer bytes than declared
        await store.save_file(stored("file-2", 100), chunks_of(b"short"))
    assert await backend.count("files") == 0


async def test_listing_pages_in_upload_order(store: Store) -> None:
    for n in range(5):
        await save(store, f"file-{n}", purpose="vision" if n % 2 else "user_data")

    async def listing(**kwargs: object) -> tuple[list[str], bool]:
        args: dict[str, object] = {"purpose": None, "limit": 10, "order": "desc",
                                   "after": None, "now": NOW, **kwargs}
        got = await store.list_files(**args)  # type: ignore[arg-type]
        return ids_of(got.files), got.has_more

    assert await listing() == (["file-4", "file-3", "file-2", "file-1", "file-0"], False)
    assert await listing(order="asc", limit=2) == (["file-0", "file-1"], True)
    assert await listing(order="asc", limit=2, after="file-1") == (["file-2", "file-3"], True)
    assert await listing(order="asc", limit=2, after="file-3") == (["file-4"], False)
    assert await listing(limit=3, after="file-4") == (["file-3", "file-2", "file-1"], True)
    assert await listing(purpose="vision") == (["file-3", "file-1"], False)
    assert await listing(purpose="batch") == ([], False)
    assert await listing(after="file-unknown") == ([], False)


async def test_delete_removes_the_contents(store: Store, backend: Backend) -> None:
    await save(store, "file-1", os.urandom(3 * CHUNK))
    await save(store, "file-2")
    assert await store.delete_file("file-1", NOW) is True
    assert await store.get_file("file-1", NOW) is None
    assert await read_all(store, "file-1") == b""
    assert await store.delete_file("file-1", NOW) is False
    assert await backend.count("file_chunks") == 1
    assert await store.get_file("file-2", NOW) is not None


async def test_expired_files_are_hidden_then_purged(store: Store, backend: Backend) -> None:
    await save(store, "file-short", expires_at=NOW + 10)
    await save(store, "file-long", expires_at=NOW + 100)
    assert await store.get_file("file-short", NOW + 9) is not None
    assert await store.get_file("file-short", NOW + 10) is None
    assert await store.delete_file("file-short", NOW + 10) is False
    listed = await store.list_files(purpose=None, limit=10, order="asc", after=None,
                                    now=NOW + 10)
    assert ids_of(listed.files) == ["file-long"]
    assert await store.purge_files(NOW + 9) == 0
    assert await store.purge_files(NOW + 10) == 1
    assert await backend.count("files") == 1
    assert await backend.count("file_chunks") == 1
    assert await store.get_file("file-long", NOW + 10) is not None


async def test_an_unfinished_upload_is_purged_a_day_later(store: Store,
                                                          backend: Backend) -> None:
    await backend.execute(
        "INSERT INTO files (id, filename, purpose, bytes, content_type, created_at, expires_at)"
        f" VALUES ('file-dead', 'x', 'user_data', 5, 'text/plain', {NOW}, {NOW + 86400})")
    assert await store.get_file("file-dead", NOW) is None
    assert await store.purge_files(NOW + 86399) == 0
    assert await store.purge_files(NOW + 86400) == 1
    assert await backend.count("files") == 0


async def test_another_replica_reads_the_same_file(store: Store, backend: Backend) -> None:
    data = os.urandom(2 * CHUNK + 1)
    await save(store, "file-1", data)
    other = await backend.open()
    assert await other.get_file("file-1", NOW) == await store.get_file("file-1", NOW)
    assert await read_all(other, "file-1") == data
