"""web: fetching URLs on a client's behalf (the image and file URLs of an input), behind
the ``Fetcher`` protocol.

Rule: the engine imports this module (the protocol and its errors) and never the
implementations; ``create_app`` builds the real one (``fetcher.HttpFetcher``, through the
egress policy of ``respond.network``) and tests use ``static.StaticFetcher``. A fetcher
knows URLs and bytes, not what the content is for: the caller words refusals for its
client ("the image URL ...").

Contract of ``Fetcher.fetch(url, max_bytes=n)``:

* returns the body of a ``200`` answer, whole, with the content type it declared (None when
  it declared none), after following redirects;
* raises ``FetchRefused`` before contacting a URL the server may not fetch (scheme, an
  address its host resolves to, a host that does not resolve) — on every redirect hop too;
* raises ``FetchTooLarge`` as soon as the body is known to exceed ``max_bytes`` (declared
  or read so far), without reading the rest;
* raises ``FetchTimeout`` when the whole fetch takes longer than the fetcher's time-out;
* raises ``FetchError`` for anything else (an answer other than 200, a broken connection,
  too many redirects); nothing else escapes;
* on cancellation stops at once and leaves no connection half-read.

Every error's ``str()`` is a sentence fragment safe to show a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Fetched:
    content: bytes
    content_type: str | None


class FetchError(Exception):
    """The URL could not be fetched; ``str(exc)`` says why ("it answered with HTTP 404")."""


class FetchRefused(FetchError):
    """The server may not fetch the URL; ``str(exc)`` is the egress policy's reason."""


class FetchTooLarge(FetchError):
    """The body is larger than ``limit``; ``size`` is the declared size, when one was."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        super().__init__(f"it is {size} bytes; the limit is {limit}" if size is not None
                         else f"it is larger than the limit of {limit} bytes")
        self.limit = limit
        self.size = size


class FetchTimeout(FetchError):
    """The fetch took longer than ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"it timed out after {seconds:g} s")
        self.seconds = seconds


class Fetcher(Protocol):
    async def fetch(self, url: str, *, max_bytes: int) -> Fetched:
        """The body and declared content type of ``url`` (see the module docstring)."""
        ...
