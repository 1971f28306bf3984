"""The Files API: uploads kept in the store, listed, read back and deleted.

An upload arrives as a temporary file (the HTTP layer streams the multipart body there, so
no upload is ever held in memory) and is copied into the store chunk by chunk. Files expire
at ``expires_after`` or after the retention period, whichever comes first, and are then
purged with their contents.

Rule: wire objects are built here, as plain dicts in the shape of ``openai.types.FileObject``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from respond.engine.formats import guess_type
from respond.errors import InvalidRequest, NotFound
from respond.ids import new_id
from respond.protocol.response import list_object
from respond.store import Store, StoredFile

log = logging.getLogger(__name__)

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
CHUNK_BYTES = 1024 * 1024  # the size of the stored chunks
MIN_EXPIRES_AFTER = 3600
MAX_EXPIRES_AFTER = 30 * 86400
MAX_FILENAME = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Upload:
    """An uploaded file waiting in a temporary file."""

    path: Path
    size: int
    filename: str
    content_type: str | None  # as the multipart part declared it


def file_object(file: StoredFile) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "expires_at": file.expires_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


class FilesService:
    def __init__(self, store: Store, *, retention_seconds: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_seconds = retention_seconds
        self.clock = clock

    async def create(self, upload: Upload, *, purpose: str | None,
                     expires_after: int | None) -> dict[str, Any]:
        if not purpose:
            raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose",
                                 code="missing_required_parameter")
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"Invalid value for 'purpose': '{purpose}'. Supported values are: "
                + ", ".join(f"'{p}'" for p in PURPOSES) + ".", param="purpose",
                code="invalid_value")
        if expires_after is not None and not MIN_EXPIRES_AFTER <= expires_after <= \
                MAX_EXPIRES_AFTER:
            raise InvalidRequest(
                f"Invalid value for 'expires_after.seconds': must be between "
                f"{MIN_EXPIRES_AFTER} and {MAX_EXPIRES_AFTER}.",
                param="expires_after.seconds", code="invalid_value")
        filename = upload.filename.replace("\\", "/").rsplit("/", 1)[-1][:MAX_FILENAME]
        if not filename:
            raise InvalidRequest("The uploaded file has no file name.", param="file",
                                 code="invalid_value")
        now = int(self.clock())
        lifetime = self.retention_seconds
        if expires_after is not None:
            lifetime = min(lifetime, expires_after)
        head = await asyncio.to_thread(_head, upload.path)
        stored = StoredFile(
            id=new_id("file"), filename=filename, purpose=purpose, bytes=upload.size,
            content_type=guess_type(filename, upload.content_type, head),
            created_at=now, expires_at=now + lifetime,
        )
        await self.store.save_file(stored, _chunks(upload.path))
        log.info("stored file %s (%d bytes, %s)", stored.id, stored.bytes, stored.content_type)
        return file_object(stored)

    async def get(self, file_id: str) -> dict[str, Any]:
        return file_object(await self._get(file_id))

    async def _get(self, file_id: str) -> StoredFile:
        found = await self.store.get_file(file_id, int(self.clock()))
        if found is None:
            raise NotFound(f"No such File object: {file_id}", param="id")
        return found

    async def list(self, *, purpose: str | None, limit: int, order: Literal["asc", "desc"],
                   after: str | None) -> dict[str, Any]:
        page = await self.store.list_files(purpose=purpose, limit=limit, order=order,
                                           after=after, now=int(self.clock()))
        return list_object([file_object(f) for f in page.files], page.has_more)

    async def content(self, file_id: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        """The file and its contents, chunk by chunk."""
        found = await self._get(file_id)
        return found, self.store.read_file(found.id)

    async def delete(self, file_id: str) -> dict[str, Any]:
        if not await self.store.delete_file(file_id, int(self.clock())):
            raise NotFound(f"No such File object: {file_id}", param="id")
        return {"id": file_id, "object": "file", "deleted": True}


def _head(path: Path) -> bytes:
    with path.open("rb") as source:
        return source.read(64 * 1024)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    """The temporary file in store-sized chunks, read off the event loop."""
    source = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
            yield chunk
    finally:
        source.close()
