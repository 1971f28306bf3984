"""The static fetcher: a fake web that ships with the package, for tests and demos.

It answers from a table of URL -> content (bytes, or bytes with a content type) or an
exception to raise, honours the ``Fetcher`` contract (``FetchTooLarge`` over ``max_bytes``,
``FetchError`` for a URL it does not know) and keeps every URL it was asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from respond.web import Fetched, FetchError, FetchTooLarge

Page = bytes | Fetched | FetchError


class StaticFetcher:
    """Serves ``pages``; a URL missing from them answers like a 404. Asked URLs go to
    ``requests``, in order."""

    def __init__(self, pages: Mapping[str, Page] | None = None) -> None:
        self.pages: dict[str, Page] = dict(pages or {})
        self.requests: list[str] = []

    async def fetch(self, url: str, *, max_bytes: int) -> Fetched:
        self.requests.append(url)
        page = self.pages.get(url)
        if page is None:
            raise FetchError("it answered with HTTP 404")
        if isinstance(page, FetchError):
            raise page
        fetched = page if isinstance(page, Fetched) else Fetched(page, None)
        if len(fetched.content) > max_bytes:
            raise FetchTooLarge(max_bytes, len(fetched.content))
        return fetched
