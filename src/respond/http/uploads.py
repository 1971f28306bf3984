"""Multipart uploads (``POST /files``), streamed.

The body is parsed as it arrives (``python-multipart``'s push parser): the ``file`` part goes
straight to a temporary file in the data directory, counted as it grows, so an upload is
never held in memory and one over the limit is refused with a 413 as soon as it crosses it.
Other parts are small form fields. The temporary file is removed when the ``async with``
ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from respond.engine.files import Upload
from respond.errors import InvalidRequest, PayloadTooLarge

log = logging.getLogger(__name__)

FILE_FIELD = "file"
MAX_FIELDS = 16
MAX_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 1024 * 1024  # room for the other fields and the part headers
TEMP_PREFIX = "upload-"
STALE_SECONDS = 86400


@dataclass
class Form:
    fields: dict[str, str]
    upload: Upload | None  # the ``file`` part


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)  # a field's value


class _Reader:
    """The parser's callbacks: they sort the parts and queue the file's bytes, which
    ``receive_upload`` then writes off the event loop."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.file: _Part | None = None
        self.file_size = 0
        self.pending: list[bytes] = []  # file bytes not yet written
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self.ended = False  # the closing boundary was seen

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def _begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("A part of the multipart body has no form-data name.")
        part = self._part
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")
            declared = self._headers.get("content-type")
            part.content_type = declared.decode("latin-1") if declared else None
        if part.name == FILE_FIELD:
            if part.filename is None:
                raise InvalidRequest("'file' must be a file part (with a filename).",
                                     param="file", code="invalid_type")
            if self.file is not None:
                raise InvalidRequest("Only one 'file' may be uploaded per request.",
                                     param="file")
            self.file = part
        elif len(self.fields) >= MAX_FIELDS:
            raise InvalidRequest("Too many form fields.")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is self.file:
            self.file_size += end - start
            if self.file_size > self.max_file_bytes:
                raise PayloadTooLarge(f"File too large: the limit is {self.max_file_bytes} "
                                      "bytes.", param="file")
            self.pending.append(data[start:end])
        else:
            self._part.data.extend(data[start:end])
            if len(self._part.data) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"The form field '{self._part.name}' is too long.",
                                     param=self._part.name)

    def _finished(self) -> None:
        self.ended = True

    def _end(self) -> None:
        part = self._part
        if part is not self.file:
            try:
                self.fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"The form field '{part.name}' is not UTF-8 text.",
                                     param=part.name) from None


@contextlib.asynccontextmanager
async def receive_upload(request: Request, directory: Path,
                         max_file_bytes: int) -> AsyncIterator[Form]:
    """Parse the multipart body of ``request``; the file part waits in ``directory``."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Expected a multipart/form-data body (with a boundary).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and \
            int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(f"File too large: the limit is {max_file_bytes} bytes.",
                              param="file")
    reader = _Reader(max_file_bytes)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    target: IO[bytes] = await asyncio.to_thread(
        tempfile.NamedTemporaryFile, dir=directory, prefix=TEMP_PREFIX, delete=False)
    path = Path(target.name)
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if reader.pending:
                    pending, reader.pending = b"".join(reader.pending), []
                    await asyncio.to_thread(target.write, pending)
            parser.finalize()
        except FormParserError as exc:
            raise InvalidRequest(f"The multipart body is malformed: {exc}") from None
        except ClientDisconnect:
            raise InvalidRequest("The upload was interrupted.") from None
        finally:
            await asyncio.to_thread(target.close)
        if not reader.ended:  # the parser does not check this itself
            raise InvalidRequest("The multipart body ended before its closing boundary.")
        upload = None
        if reader.file is not None:
            upload = Upload(path=path, size=reader.file_size,
                            filename=reader.file.filename or "",
                            content_type=reader.file.content_type)
        yield Form(fields=reader.fields, upload=upload)
    finally:
        await asyncio.to_thread(path.unlink, True)


def remove_stale_uploads(directory: Path, now: float | None = None) -> int:
    """Delete temporary uploads a crashed process left behind (older than a day)."""
    now = time.time() if now is None else now
    removed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.glob(TEMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > STALE_SECONDS:
                os.unlink(entry)
                removed += 1
    return removed
