"""The Files API end to end with the official SDK: upload, retrieve, download, list, delete,
expiry and the size limit, on the suite's database (SQLite, or PostgreSQL with
RESPOND_TEST_DATABASE=postgres)."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from documents import make_image, make_pdf
from e2e import assert_error, client_for, sdk_error, wait_until
from openai.types import FileObject
from servers import RunningServer, serve

from respond.http.uploads import remove_stale_uploads

MAX_FILE_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = {"server": {"max_file_bytes": MAX_FILE_BYTES},
              "models": {"m": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}}}
    with serve(config, tmp_path_factory.mktemp("files")) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return client_for(server)


def test_upload_retrieve_download_list_delete(client: openai.OpenAI) -> None:
    pdf = make_pdf(["A report."])
    before = int(time.time())
    created = client.files.create(file=("report.pdf", io.BytesIO(pdf), "application/pdf"),
                                  purpose="user_data")
    FileObject.model_validate(created.model_dump())
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(pdf)
    assert created.filename == "report.pdf"
    assert created.purpose == "user_data"
    assert created.status == "processed"
    assert created.status_details is None
    assert before <= created.created_at <= int(time.time())
    assert created.expires_at is not None and created.expires_at > created.created_at

    assert client.files.retrieve(created.id) == created
    content = client.files.content(created.id)
    assert content.content == pdf
    assert content.response.headers["content-type"] == "application/pdf"
    assert "report.pdf" in content.response.headers["content-disposition"]
    assert created.id in [f.id for f in client.files.list()]

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.retrieve(created.id)
    sdk_error(caught.value, 404)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    assert created.id not in [f.id for f in client.files.list()]


def test_temporary_uploads_are_removed(client: openai.OpenAI, server: RunningServer,
                                       tmp_path: Path) -> None:
    client.files.create(file=("a.txt", b"hello"), purpose="user_data")
    assert temporary_uploads(server) == []
    stale, fresh = tmp_path / "upload-stale", tmp_path / "upload-fresh"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    assert remove_stale_uploads(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["upload-fresh"]


def test_contents_come_back_byte_for_byte(client: openai.OpenAI) -> None:
    data = os.urandom(MAX_FILE_BYTES)  # exactly the limit: accepted
    created = client.files.create(file=("noise.bin", data), purpose="assistants")
    assert created.bytes == MAX_FILE_BYTES
    reply = client.files.content(created.id)
    assert reply.content == data
    assert reply.response.headers["content-type"] == "application/octet-stream"
    png = make_image("PNG")
    image = client.files.create(file=("pixel.png", png), purpose="vision")
    reply = client.files.content(image.id)
    assert (reply.content, reply.response.headers["content-type"]) == (png, "image/png")


def temporary_uploads(server: RunningServer) -> list[str]:
    return [p.name for p in (server.settings.data_dir / "uploads").iterdir()]


def test_an_upload_over_the_limit_is_a_413(client: openai.OpenAI,
                                           server: RunningServer) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.bin", b"x" * (MAX_FILE_BYTES + 1)), purpose="user_data")
    error = sdk_error(caught.value, 413, param="file")
    assert str(MAX_FILE_BYTES) in error["message"]
    assert not any(f.filename == "big.bin" for f in client.files.list())
    assert temporary_uploads(server) == []  # the partial upload's temporary file is gone


def test_listing_filters_orders_and_pages(client: openai.OpenAI) -> None:
    made = [client.files.create(file=(f"batch{n}.jsonl", b"{}\n"), purpose="batch").id
            for n in range(3)]
    newest_first = [f.id for f in client.files.list(purpose="batch")]
    assert newest_first[:3] == made[::-1]
    page = client.files.list(purpose="batch", limit=2, order="asc")
    assert [f.id for f in page.data] == newest_first[::-1][:2]
    assert page.has_more is True
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    rest = client.files.list(purpose="batch", limit=2, order="asc", after=page.data[1].id)
    assert [f.id for f in rest.data] == newest_first[::-1][2:4]
    every = [f.id for f in client.files.list(purpose="batch", limit=1)]  # the SDK pages on
    assert every == newest_first
    assert all(f.purpose == "batch" for f in client.files.list(purpose="batch"))
    assert not any(f.purpose == "batch" for f in client.files.list(purpose="vision"))


def test_expires_after(client: openai.OpenAI) -> None:
    created = client.files.create(file=("a.txt", b"hello"), purpose="user_data",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.expires_at == created.created_at + 3600
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.txt", b"hello"), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 10})
    sdk_error(caught.value, 400, param="expires_after.seconds")


def test_bad_uploads_are_400s(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.txt", b"hello"), purpose="nonsense")  # type: ignore[arg-type]
    sdk_error(caught.value, 400, param="purpose")
    with httpx.Client(timeout=10) as http:
        url = server.base_url + "/files"
        assert_error(http.post(url, data={"purpose": "user_data"}, files={"x": ("a", b"1")}),
                     400, param="x")
        assert_error(http.post(url, files={"file": ("a.txt", b"1")}), 400, param="purpose")
        assert_error(http.post(url, data={"purpose": "user_data"}), 400)
        assert_error(http.post(url, json={"purpose": "user_data"}), 400)
        truncated = (b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                     b'user_data\r\n--xyz\r\nContent-Disposition: form-data; name="file"; '
                     b'filename="cut.txt"\r\n\r\nhalf a fi')
        error = assert_error(http.post(url, content=truncated, headers={
            "content-type": "multipart/form-data; boundary=xyz"}), 400)
        assert "closing boundary" in error["message"]
        assert_error(http.get(url, params={"limit": 0}), 400, param="limit")
        assert_error(http.get(url, params={"order": "up"}), 400, param="order")


def test_every_prefix_serves_files(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        created = http.post("/openai/v1/files", data={"purpose": "assistants"},
                            files={"file": ("notes.md", b"# Notes\n", "text/markdown")})
        assert created.status_code == 200, created.text
        file_id = created.json()["id"]
        for prefix in ("/v1", "/openai/v1", "/openai"):
            assert http.get(f"{prefix}/files/{file_id}",
                            params={"api-version": "2025-04-01-preview"}).json()["id"] == file_id
            content = http.get(f"{prefix}/files/{file_id}/content")
            assert content.content == b"# Notes\n"
            assert content.headers["content-type"].startswith("text/markdown")
        assert http.delete(f"/openai/files/{file_id}").json()["deleted"] is True


def test_expired_files_are_hidden_and_purged(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = {"server": {"retention_days": 4 / 86400},  # files live four seconds
              "models": {"m": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}}}
    with serve(config, tmp_path_factory.mktemp("expiring")) as short:
        client = client_for(short)
        created = client.files.create(file=("a.txt", b"soon gone"), purpose="user_data")
        assert created.expires_at == created.created_at + 4
        assert client.files.retrieve(created.id).id == created.id

        def hidden() -> bool:
            try:
                client.files.retrieve(created.id)
            except openai.NotFoundError:
                return True
            return False

        assert wait_until(hidden), "the file outlived its expiry"
        assert time.time() >= created.expires_at, "the file was hidden before its expiry"
        assert created.id not in [f.id for f in client.files.list()]
        store = short.service.store
        assert short.call(store.purge_files(int(time.time()))) >= 1

        async def contents() -> bytes:
            return b"".join([chunk async for chunk in store.read_file(created.id)])

        assert short.call(contents()) == b""
