"""Media: what the model sees of the images and files in a conversation.

Stored items keep images and files exactly as they were sent (a file id, a data URL, a URL),
so ``previous_response_id`` replays them and ``input_items`` returns them unchanged. This
module resolves them whenever a response is about to run (``ResponsesService.prepare``, and
the background worker on whichever replica runs the job): file ids are read from the store,
URLs are fetched by the ``Fetcher`` the resolver is given (``respond.web``; the engine does
no network I/O of its own), PDFs and text files become text, images are checked and become
data URLs of their original bytes. The result, a ``Media`` mapping of (item id, part index)
to a Chat Completions content part, is what ``history.to_messages`` puts in place of each
stored part.

Rules: every refusal is an ``APIError`` naming the part ("input[0].content[1]", or
``previous_response_id`` for a part of an earlier turn); images are resolved only for models
that take them (``to_messages`` refuses them for the others); PDF parsing runs in a worker
thread; texts of stored files (immutable) and of inline data are kept in a small cache, so a
long conversation over one PDF does not parse it again every turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from respond.engine.formats import (
    MAX_DOCUMENT_BYTES,
    MAX_IMAGE_BYTES,
    FormatError,
    data_url,
    decode_base64,
    document_text,
    image_info,
    is_data_url,
    parse_data_url,
)
from respond.engine.history import media_parts
from respond.errors import APIError, InvalidRequest, NotFound
from respond.store import Store, StoredFile
from respond.web import Fetcher, FetchError, FetchRefused, FetchTimeout, FetchTooLarge

Item = dict[str, Any]
Media = dict[tuple[str, int], dict[str, Any]]
"""(item id, index of the part in the item's content) -> the Chat Completions part."""

CACHE_ENTRIES = 32
CACHE_CHARACTERS = 32 * 1024 * 1024

_CHAT_DETAIL = {"low": "low", "high": "high", "original": "high"}  # Chat Completions' values


class _Place:
    """Where a part sits, for error messages: this request's input, or an earlier turn."""

    def __init__(self, param: str | None, index: int, field: str = "content") -> None:
        self.history = param is None
        self.param = "previous_response_id" if param is None else f"{param}.{field}[{index}]"

    def fail(self, message: str, field: str | None = None, *,
             error: type[APIError] = InvalidRequest) -> APIError:
        if self.history:
            message = ("A part of the conversation continued with 'previous_response_id' "
                       f"cannot be used: {message}")
            return error(message, param=self.param, code="invalid_value")
        param = f"{self.param}.{field}" if field else self.param
        return error(message, param=param, code="invalid_value")


class _TextCache:
    """Least recently used texts of documents, bounded in entries and in characters."""

    def __init__(self) -> None:
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._size = 0

    def get(self, key: str) -> str | None:
        text = self._texts.get(key)
        if text is not None:
            self._texts.move_to_end(key)
        return text

    def put(self, key: str, text: str) -> None:
        if len(text) > CACHE_CHARACTERS // 4 or key in self._texts:
            return
        self._texts[key] = text
        self._size += len(text)
        while len(self._texts) > CACHE_ENTRIES or self._size > CACHE_CHARACTERS:
            _, dropped = self._texts.popitem(last=False)
            self._size -= len(dropped)


class MediaResolver:
    """Resolves the images and files of a context; one per service, shared by all requests."""

    def __init__(self, store: Store, fetcher: Fetcher, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.fetcher = fetcher
        self.clock = clock
        self._texts = _TextCache()

    async def resolve(self, context: list[Item], *, vision: bool,
                      params: Mapping[str, str] | None = None) -> Media:
        """The parts ``to_messages`` needs for ``context``. ``params`` maps the ids of this
        request's items to their place in its input ("input[2]"); other items are history."""
        params = params or {}
        media: Media = {}
        for item in context:
            found = media_parts(item)
            if found is None:
                continue
            field, parts = found
            for index, part in enumerate(parts):
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind == "input_text":  # by far the most common part: nothing to resolve
                    continue
                if kind == "input_image" and vision:
                    place = _Place(params.get(item["id"]), index, field)
                    media[(item["id"], index)] = await self._image(part, place)
                elif kind == "input_file":
                    place = _Place(params.get(item["id"]), index, field)
                    media[(item["id"], index)] = await self._file(part, place)
        return media

    # -- images ----------------------------------------------------------------------------

    async def _image(self, part: dict[str, Any], place: _Place) -> dict[str, Any]:
        if part.get("file_id"):
            _, data = await self._stored(part["file_id"], place, MAX_IMAGE_BYTES, "image")
        else:
            url = part["image_url"]
            if is_data_url(url):
                try:
                    data = parse_data_url(url).data
                except FormatError as exc:
                    raise place.fail(f"The image's data URL is not valid: {exc}",
                                     "image_url") from None
            else:
                data, _ = await self._fetch(url, place, "image_url", MAX_IMAGE_BYTES, "image")
        try:
            info = image_info(data)
        except FormatError as exc:
            raise place.fail(str(exc)) from None
        detail = _CHAT_DETAIL.get(part.get("detail") or "auto", "auto")
        return {"type": "image_url",
                "image_url": {"url": data_url(info.media_type, data), "detail": detail}}

    # -- files -----------------------------------------------------------------------------

    async def _file(self, part: dict[str, Any], place: _Place) -> dict[str, Any]:
        filename = part.get("filename")
        if part.get("file_id"):
            meta = await self._meta(part["file_id"], place, MAX_DOCUMENT_BYTES, "file")
            filename = filename or meta.filename
            key = f"file:{meta.id}"
            text = self._texts.get(key)
            if text is None:
                data = await self._read(meta, place)
                text = await self._text(data, filename, meta.content_type, place, key)
        elif part.get("file_data"):
            raw = part["file_data"]
            key = "data:" + hashlib.sha256(raw.encode()).hexdigest()
            text = self._texts.get(key)
            if text is None:
                try:
                    if is_data_url(raw):
                        parsed = parse_data_url(raw)
                        data, declared = parsed.data, parsed.media_type
                    else:
                        data, declared = decode_base64(raw), None
                except FormatError as exc:
                    raise place.fail(f"'file_data' is not valid: {exc}", "file_data") from None
                text = await self._text(data, filename, declared, place, key)
        else:
            url = part["file_url"]
            filename = filename or _url_filename(url)
            data, declared = await self._fetch(url, place, "file_url", MAX_DOCUMENT_BYTES,
                                               "file")
            text = await self._text(data, filename, declared, place, None)
        return {"type": "text", "text": f"[file: {filename or 'file'}]\n{text}"}

    async def _text(self, data: bytes, filename: str | None, declared: str | None,
                    place: _Place, key: str | None) -> str:
        try:
            text = await asyncio.to_thread(document_text, data, filename=filename,
                                           media_type=declared)
        except FormatError as exc:
            raise place.fail(str(exc)) from None
        if key is not None:
            self._texts.put(key, text)
        return text

    # -- sources ---------------------------------------------------------------------------

    async def _meta(self, file_id: str, place: _Place, limit: int, what: str) -> StoredFile:
        meta = await self.store.get_file(file_id, int(self.clock()))
        if meta is None:
            raise place.fail(f"No file found with id '{file_id}'.", "file_id", error=NotFound)
        if meta.bytes > limit:
            raise place.fail(f"The file '{file_id}' is {meta.bytes} bytes; the limit for "
                             f"{what}s is {limit}.", "file_id")
        return meta

    async def _read(self, meta: StoredFile, place: _Place) -> bytes:
        data = b"".join([chunk async for chunk in self.store.read_file(meta.id)])
        if len(data) != meta.bytes:  # deleted while it was read
            raise place.fail(f"No file found with id '{meta.id}'.", "file_id", error=NotFound)
        return data

    async def _stored(self, file_id: str, place: _Place, limit: int,
                      what: str) -> tuple[StoredFile, bytes]:
        meta = await self._meta(file_id, place, limit, what)
        return meta, await self._read(meta, place)

    async def _fetch(self, url: str, place: _Place, field: str, limit: int,
                     what: str) -> tuple[bytes, str | None]:
        """The body and declared content type of ``url``, or a refusal naming the part."""
        try:
            fetched = await self.fetcher.fetch(url, max_bytes=limit)
        except FetchRefused as exc:
            raise place.fail(f"The {what} URL may not be fetched: {exc}", field) from None
        except FetchTooLarge as exc:
            size = (f"is {exc.size} bytes; the limit is {exc.limit}" if exc.size is not None
                    else f"is larger than the limit of {exc.limit} bytes")
            raise place.fail(f"The {what} at the URL {size}.", field) from None
        except FetchTimeout as exc:
            raise place.fail(f"Fetching the {what} URL timed out after {exc.seconds:g} s.",
                             field) from None
        except FetchError as exc:
            raise place.fail(f"The {what} URL could not be fetched: {exc}.", field) from None
        return fetched.content, fetched.content_type


def _url_filename(url: str) -> str | None:
    path = urlsplit(url).path
    name = unquote(path.rsplit("/", 1)[-1]) if path else ""
    return name or None
