"""The real fetcher: HTTP(S) GETs through the egress policy of ``respond.network``.

The URL is checked up front, so a refusal gets the policy's clear message and nothing is
contacted; the guarded client checks again on every connection it opens, after DNS, so a
redirect hop to a refused address (or a name that rebinds between check and connect) is
refused as well. One client, opened on first use, is shared by every fetch and closed with
``aclose()`` (``create_app`` registers it on the lifespan's exit stack).
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from respond.network import EgressError, EgressPolicy
from respond.web import Fetched, FetchError, FetchRefused, FetchTimeout, FetchTooLarge

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 5


class HttpFetcher:
    """A ``Fetcher`` for http and https URLs; ``timeout`` bounds each fetch as a whole."""

    def __init__(self, policy: EgressPolicy, *, timeout: float = TIMEOUT_SECONDS,
                 max_redirects: int = MAX_REDIRECTS) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, url: str, *, max_bytes: int) -> Fetched:
        try:
            async with asyncio.timeout(self.timeout):
                await self.policy.check_url(url)
                return await self._get(url, max_bytes)
        except EgressError as exc:  # a denial, or a host that does not resolve
            raise FetchRefused(str(exc)) from None
        except (TimeoutError, httpx.TimeoutException):
            raise FetchTimeout(self.timeout) from None
        except httpx.HTTPError as exc:
            log.info("fetching %s failed: %r", url, exc)
            raise FetchError(f"the connection failed ({type(exc).__name__})") from None

    async def _get(self, url: str, max_bytes: int) -> Fetched:
        async with self._http().stream("GET", url) as reply:
            if reply.status_code != 200:
                raise FetchError(f"it answered with HTTP {reply.status_code}")
            declared = reply.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchTooLarge(max_bytes, int(declared))
            body = bytearray()
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchTooLarge(max_bytes)
            return Fetched(bytes(body), reply.headers.get("content-type"))

    def _http(self) -> httpx.AsyncClient:
        # opened on first use: most servers never fetch a URL, and a client costs an SSL context
        if self._client is None:
            self._client = self.policy.client(
                timeout=self.timeout, follow_redirects=True, max_redirects=self.max_redirects,
                headers={"user-agent": "respond"})
        return self._client
