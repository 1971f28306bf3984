"""The HTTP fetcher against a real local server, and the static fake it ships with: both keep
the ``Fetcher`` contract (bodies whole, typed refusals, limits, time-outs)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from respond.network import EgressPolicy
from respond.web import Fetched, FetchError, FetchRefused, FetchTimeout, FetchTooLarge
from respond.web.fetcher import HttpFetcher
from respond.web.static import StaticFetcher

LOOPBACK = EgressPolicy(["127.0.0.1/32"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path == "/text":
            self._send(200, b"hello", "text/plain; charset=utf-8")
        elif self.path == "/bare":
            self._send(200, b"\x00\x01", None)
        elif self.path == "/declared-big":
            self._send(200, b"x" * 100, "application/pdf")
        elif self.path == "/chunked-big":  # no content-length: only reading tells the size
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"14\r\n" + b"y" * 20 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, b"late", None)
        elif self.path == "/to-text":
            self._redirect(f"http://127.0.0.1:{self.server.server_address[1]}/text")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/loop":
            self._redirect("/loop")
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, kind: str | None) -> None:
        self.send_response(status)
        if kind:
            self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("location", location)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class Site:
    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"seen": []})
        self.seen: list[str] = handler.seen
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    server = Site()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
async def fetcher() -> AsyncIterator[HttpFetcher]:
    fetcher = HttpFetcher(LOOPBACK, timeout=5)
    yield fetcher
    await fetcher.aclose()


async def test_a_body_arrives_whole_with_its_content_type(site: Site,
                                                          fetcher: HttpFetcher) -> None:
    assert await fetcher.fetch(site.url("/text"), max_bytes=100) == Fetched(
        b"hello", "text/plain; charset=utf-8")
    assert await fetcher.fetch(site.url("/bare"), max_bytes=100) == Fetched(b"\x00\x01", None)


async def test_redirects_are_followed(site: Site, fetcher: HttpFetcher) -> None:
    fetched = await fetcher.fetch(site.url("/to-text"), max_bytes=100)
    assert fetched.content == b"hello"


async def test_a_refused_address_is_never_contacted(site: Site) -> None:
    fetcher = HttpFetcher(EgressPolicy())
    seen = len(site.seen)
    with pytest.raises(FetchRefused, match="127.0.0.1, a loopback address") as caught:
        await fetcher.fetch(site.url("/text"), max_bytes=100)
    assert "[network] allow" in str(caught.value)
    assert len(site.seen) == seen
    with pytest.raises(FetchRefused, match="Only http and https"):
        await fetcher.fetch("ftp://example.com/a.png", max_bytes=100)
    await fetcher.aclose()


async def test_a_redirect_to_a_refused_address_is_refused(site: Site,
                                                          fetcher: HttpFetcher) -> None:
    with pytest.raises(FetchRefused, match="169.254.169.254, a link-local address"):
        await fetcher.fetch(site.url("/to-metadata"), max_bytes=100)


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    async def nowhere(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    fetcher = HttpFetcher(EgressPolicy(resolver=nowhere))
    with pytest.raises(FetchRefused, match="could not be resolved"):
        await fetcher.fetch("https://nowhere.test/a.pdf", max_bytes=100)


async def test_an_answer_other_than_200_is_an_error(site: Site, fetcher: HttpFetcher) -> None:
    with pytest.raises(FetchError, match="it answered with HTTP 404") as caught:
        await fetcher.fetch(site.url("/missing"), max_bytes=100)
    assert type(caught.value) is FetchError


async def test_too_many_redirects_is_an_error(site: Site, fetcher: HttpFetcher) -> None:
    with pytest.raises(FetchError, match="TooManyRedirects"):
        await fetcher.fetch(site.url("/loop"), max_bytes=100)


async def test_a_body_over_the_limit_is_refused(site: Site, fetcher: HttpFetcher) -> None:
    with pytest.raises(FetchTooLarge) as declared:
        await fetcher.fetch(site.url("/declared-big"), max_bytes=50)
    assert (declared.value.size, declared.value.limit) == (100, 50)
    with pytest.raises(FetchTooLarge) as read:
        await fetcher.fetch(site.url("/chunked-big"), max_bytes=50)
    assert (read.value.size, read.value.limit) == (None, 50)
    assert (await fetcher.fetch(site.url("/chunked-big"), max_bytes=200)).content == b"y" * 200


async def test_a_slow_server_times_out(site: Site) -> None:
    fetcher = HttpFetcher(LOOPBACK, timeout=0.2)
    with pytest.raises(FetchTimeout, match=r"timed out after 0\.2 s"):
        await fetcher.fetch(site.url("/slow"), max_bytes=100)
    await fetcher.aclose()


async def test_the_static_fetcher_keeps_the_contract() -> None:
    refused = FetchRefused("The URL's host resolves to 10.0.0.1, a private address")
    fake = StaticFetcher({"https://a.test/x.png": b"png",
                          "https://a.test/doc": Fetched(b"text", "text/plain"),
                          "https://b.test/": refused})
    assert await fake.fetch("https://a.test/x.png", max_bytes=10) == Fetched(b"png", None)
    assert (await fake.fetch("https://a.test/doc", max_bytes=10)).content_type == "text/plain"
    with pytest.raises(FetchTooLarge):
        await fake.fetch("https://a.test/doc", max_bytes=3)
    with pytest.raises(FetchRefused):
        await fake.fetch("https://b.test/", max_bytes=10)
    with pytest.raises(FetchError, match="404"):
        await fake.fetch("https://c.test/", max_bytes=10)
    assert fake.requests == ["https://a.test/x.png", "https://a.test/doc", "https://a.test/doc",
                             "https://b.test/", "https://c.test/"]
