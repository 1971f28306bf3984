"""The media resolver with the static fetcher: URLs of images and files become the parts the
model sees, and every refusal names the part it is about (the real fetcher, its egress
policy and a real server are exercised in tests/web and tests/http/test_media_inputs.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from documents import decode_data_url, make_image, make_pdf

from respond.engine.media import MediaResolver
from respond.errors import APIError
from respond.store.sqlite import SQLiteStore
from respond.web import Fetched, FetchError, FetchRefused, FetchTimeout, FetchTooLarge
from respond.web.static import StaticFetcher

PNG = make_image("PNG")
PDF = make_pdf(["The secret word is PERIWINKLE."])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = await SQLiteStore.open(tmp_path / "r.db")
    yield store
    await store.aclose()


def message(*parts: dict[str, Any], id: str = "msg_1") -> dict[str, Any]:
    return {"id": id, "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "look"}, *parts]}


async def test_urls_are_fetched_and_become_parts(store: SQLiteStore) -> None:
    web = StaticFetcher({"https://a.test/photo": Fetched(PNG, "image/png"),
                         "https://a.test/docs/report%20v2.pdf": Fetched(PDF, "application/pdf")})
    resolver = MediaResolver(store, web)
    context = [message({"type": "input_image", "image_url": "https://a.test/photo",
                        "detail": "original"},
                       {"type": "input_file", "file_url": "https://a.test/docs/report%20v2.pdf"})]
    media = await resolver.resolve(context, vision=True)
    image, file = media[("msg_1", 1)], media[("msg_1", 2)]
    assert decode_data_url(image["image_url"]["url"]) == ("image/png", PNG)
    assert image["image_url"]["detail"] == "high"
    assert file["text"].startswith("[file: report v2.pdf]\n") and "PERIWINKLE" in file["text"]
    assert web.requests == ["https://a.test/photo", "https://a.test/docs/report%20v2.pdf"]

    assert await resolver.resolve(context, vision=False) == {("msg_1", 2): file}
    assert web.requests[2:] == ["https://a.test/docs/report%20v2.pdf"]  # images not fetched


@pytest.mark.parametrize(("failure", "words"), [
    (FetchRefused("The URL's host resolves to 10.0.0.1, a private address, which is not "
                  "allowed."), "The image URL may not be fetched: The URL's host resolves"),
    (FetchTooLarge(10, 99), "The image at the URL is 99 bytes; the limit is 10."),
    (FetchTooLarge(10), "The image at the URL is larger than the limit of 10 bytes."),
    (FetchTimeout(30), "Fetching the image URL timed out after 30 s."),
    (FetchError("it answered with HTTP 503"),
     "The image URL could not be fetched: it answered with HTTP 503."),
])
async def test_a_failed_fetch_is_a_400_naming_the_part(store: SQLiteStore, failure: FetchError,
                                                       words: str) -> None:
    resolver = MediaResolver(store, StaticFetcher({"https://a.test/x": failure}))
    context = [message({"type": "input_image", "image_url": "https://a.test/x"})]
    with pytest.raises(APIError) as caught:
        await resolver.resolve(context, vision=True, params={"msg_1": "input[0]"})
    assert caught.value.status == 400
    assert caught.value.param == "input[0].content[1].image_url"
    assert caught.value.message.startswith(words)


async def test_the_size_limit_is_passed_to_the_fetcher(store: SQLiteStore) -> None:
    from respond.engine.formats import MAX_DOCUMENT_BYTES

    class Recording(StaticFetcher):
        def __init__(self, pages: dict[str, Fetched]) -> None:
            super().__init__(pages)
            self.limits: list[int] = []

        async def fetch(self, url: str, *, max_bytes: int) -> Fetched:
            self.limits.append(max_bytes)
            return await super().fetch(url, max_bytes=max_bytes)

    web = Recording({"https://a.test/n.txt": Fetched(b"notes", "text/plain")})
    media = await MediaResolver(store, web).resolve(
        [message({"type": "input_file", "file_url": "https://a.test/n.txt"})], vision=False)
    assert media[("msg_1", 1)]["text"] == "[file: n.txt]\nnotes"
    assert web.limits == [MAX_DOCUMENT_BYTES]


async def test_a_failure_in_an_earlier_turn_names_previous_response_id(
        store: SQLiteStore) -> None:
    resolver = MediaResolver(store, StaticFetcher())  # the URL is gone since
    context = [message({"type": "input_file", "file_url": "https://a.test/gone.pdf"},
                       id="msg_old")]
    with pytest.raises(APIError) as caught:
        await resolver.resolve(context, vision=False)
    assert caught.value.param == "previous_response_id"
    assert "previous_response_id" in caught.value.message and "404" in caught.value.message
