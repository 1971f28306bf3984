"""The egress policy: which addresses a server-side fetch may reach, checked after DNS, on
every connection and every redirect hop (a real local HTTP server plays the target)."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import httpx2
import pytest

from respond.network import EgressDenied, EgressError, EgressPolicy, refusal_reason


def fake_dns(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


# -- which addresses are refused, and why ------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "a loopback address"),
    ("127.255.0.9", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("172.16.5.4", "a private address"),
    ("192.168.1.1", "a private address"),
    ("100.64.0.1", "a carrier-grade NAT address"),
    ("169.254.169.254", "a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a broadcast address"),
    ("0.0.0.0", "an unspecified ('this network') address"),
    ("0.1.2.3", "an unspecified ('this network') address"),
    ("192.0.2.7", "a reserved (documentation) address"),
    ("::1", "a loopback address"),
    ("::", "an unspecified address"),
    ("fd12:3456::1", "a private (unique local) address"),
    ("fe80::1", "a link-local address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:127.0.0.1", "an IPv4-mapped form of a loopback address"),
    ("::ffff:169.254.169.254", "an IPv4-mapped form of a link-local address"),
    ("::ffff:10.0.0.1", "an IPv4-mapped form of a private address"),
    ("64:ff9b::a00:1", "a NAT64 form of a private address"),
    ("2002:7f00:1::", "a 6to4 form of a loopback address"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_special_addresses_are_refused_with_the_reason(address: str, why: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == why
    assert EgressPolicy().address_refusal(address) == why


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None
    assert EgressPolicy().address_refusal(address) is None


async def test_public_url_passes() -> None:
    await EgressPolicy().check_url("https://8.8.8.8/path?q=1")
    await EgressPolicy().check_url("http://[2606:4700:4700::1111]:8080/")


async def test_cloud_metadata_is_refused_with_a_clear_message() -> None:
    with pytest.raises(EgressDenied) as caught:
        await EgressPolicy().check_url("http://169.254.169.254/latest/meta-data/")
    assert str(caught.value) == (
        "The URL's host resolves to 169.254.169.254, a link-local address, which is not "
        "allowed. Add it to [network] allow to permit it."
    )
    assert caught.value.address == "169.254.169.254"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/", "a loopback address"),
        ("http://10.0.0.8/", "a private address"),
        ("http://100.100.100.100/", "a carrier-grade NAT address"),
        ("http://[::1]/", "a loopback address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://[::ffff:127.0.0.1]/", "an IPv4-mapped form of a loopback address"),
        ("http://0.0.0.0:9000/", "an unspecified ('this network') address"),
    ],
)
async def test_special_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(EgressDenied, match=re.escape(why) + ".*not allowed.*\\[network\\] allow"):
        await EgressPolicy().check_url(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://8.8.8.8/x", "gopher://8.8.8.8/"])
async def test_only_http_and_https(url: str) -> None:
    with pytest.raises(EgressDenied, match="Only http and https"):
        await EgressPolicy().check_url(url)


async def test_allow_by_cidr() -> None:
    policy = EgressPolicy(["10.0.0.0/8", "127.0.0.1/32", "::1/128"])
    await policy.check_url("http://10.20.30.40/")
    await policy.check_url("http://127.0.0.1:5000/")
    await policy.check_url("http://[::1]:5000/")
    await policy.check_url("http://[::ffff:127.0.0.1]/")  # the mapped form of an allowed address
    with pytest.raises(EgressDenied, match="127.0.0.2, a loopback"):
        await policy.check_url("http://127.0.0.2/")
    with pytest.raises(EgressDenied, match="192.168.0.1, a private"):
        await policy.check_url("http://192.168.0.1/")
    with pytest.raises(EgressDenied, match="169.254.169.254, a link-local"):
        await policy.check_url("http://169.254.169.254/")


async def test_allow_by_host_name_as_written() -> None:
    dns = fake_dns({
        "mcp.internal": ["10.0.0.5"],
        "a.corp.example": ["192.168.0.9"],
        "deep.b.corp.example": ["192.168.0.10"],
        "corp.example": ["192.168.0.11"],
        "other.internal": ["10.0.0.6"],
    })
    policy = EgressPolicy(["mcp.internal", "*.corp.example"], resolver=dns)
    await policy.check_url("http://mcp.internal:8000/mcp")
    await policy.check_url("https://MCP.Internal/mcp")
    await policy.check_url("https://a.corp.example/")
    await policy.check_url("https://deep.b.corp.example/")
    with pytest.raises(EgressDenied, match=r"host corp\.example resolves to 192\.168\.0\.11, a priv"):
        await policy.check_url("https://corp.example/")  # the wildcard covers sub-domains only
    with pytest.raises(EgressDenied, match=r"host other\.internal resolves to 10\.0\.0\.6"):
        await policy.check_url("http://other.internal/")


async def test_every_resolved_address_must_be_allowed() -> None:
    policy = EgressPolicy(resolver=fake_dns({"mixed.test": ["8.8.8.8", "10.9.8.7"]}))
    with pytest.raises(EgressDenied, match=r"10\.9\.8\.7, a private address"):
        await policy.check_url("https://mixed.test/")


async def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    with pytest.raises(EgressDenied, match=r"host localhost resolves to (127\.0\.0\.1|::1), a loop"):
        await EgressPolicy().check_url("http://localhost:8080/")


async def test_a_host_that_does_not_resolve_is_an_error_but_not_a_denial() -> None:
    policy = EgressPolicy(resolver=fake_dns({}))
    with pytest.raises(EgressError, match="could not be resolved") as caught:
        await policy.check_url("https://nowhere.test/")
    assert not isinstance(caught.value, EgressDenied)


@pytest.mark.parametrize("entry", ["not a host", "*", "10.0.0.0/33", "300.1.1.1", "a..b"])
def test_a_bad_allow_entry_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        EgressPolicy([entry])


def test_a_guarded_client_refuses_proxies() -> None:
    with pytest.raises(ValueError, match="proxy"):
        EgressPolicy().client(proxy="http://proxy.example:3128")
    with pytest.raises(ValueError, match="proxy"):
        EgressPolicy().transport(proxy="http://proxy.example:3128")


# -- the guarded HTTP clients, against a real local server -------------------------------------


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]  # (path, Host header), set per server

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        port = self.server.server_address[1]
        targets = {
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-loopback": f"http://127.0.0.1:{port}/ok",
            "/to-mapped": "http://[::ffff:10.0.0.1]/",
        }
        if self.path in targets:
            self.send_response(302)
            self.send_header("Location", targets[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class Target:
    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"seen": []})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.seen: list[tuple[str, str]] = handler.seen
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    server = Target()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "target" in request.fixturenames:
        request.getfixturevalue("target").seen.clear()


CLIENTS = {
    "httpx": lambda policy, **kw: policy.client(**kw),
    "httpx2": lambda policy, **kw: policy.httpx2_client(**kw),
}


@pytest.mark.parametrize("flavour", CLIENTS)
async def test_the_client_refuses_loopback_before_connecting(target: Target, flavour: str) -> None:
    async with CLIENTS[flavour](EgressPolicy()) as client:
        with pytest.raises(EgressDenied, match="127.0.0.1, a loopback address"):
            await client.get(target.url("/ok"))
    assert target.seen == []


@pytest.mark.parametrize("flavour", CLIENTS)
async def test_the_client_reaches_an_allowed_address(target: Target, flavour: str) -> None:
    async with CLIENTS[flavour](EgressPolicy(["127.0.0.1/32"])) as client:
        response = await client.get(target.url("/ok"))
    assert response.status_code == 200 and response.text == "ok"


@pytest.mark.parametrize("flavour", CLIENTS)
@pytest.mark.parametrize("path", ["/to-metadata", "/to-mapped"])
async def test_a_redirect_to_a_refused_address_is_refused(
    target: Target, flavour: str, path: str
) -> None:
    async with CLIENTS[flavour](EgressPolicy(["127.0.0.1/32"]), follow_redirects=True) as client:
        with pytest.raises(EgressDenied):
            await client.get(target.url(path))
    assert [p for p, _ in target.seen] == [path]  # the first hop was made, the second refused


async def test_a_redirect_to_loopback_is_refused_when_only_the_first_host_is_allowed(
    target: Target,
) -> None:
    # svc.test is allowed by name (and "resolves" to the local server); 127.0.0.1 is not
    policy = EgressPolicy(["svc.test"], resolver=fake_dns({"svc.test": ["127.0.0.1"]}))
    async with policy.client(follow_redirects=True) as client:
        with pytest.raises(EgressDenied, match="127.0.0.1, a loopback address"):
            await client.get(target.url("/to-loopback", host="svc.test"))
    assert target.seen == [("/to-loopback", f"svc.test:{target.port}")]


@pytest.mark.parametrize("flavour", CLIENTS)
async def test_the_connection_goes_to_the_checked_address_with_the_original_host(
    target: Target, flavour: str
) -> None:
    # svc.test exists only in the policy's resolver: the request can only arrive if the
    # guard connected to the address it checked, and Host still names the URL's host
    policy = EgressPolicy(["svc.test"], resolver=fake_dns({"svc.test": ["127.0.0.1"]}))
    async with CLIENTS[flavour](policy) as client:
        response = await client.get(target.url("/ok", host="svc.test"))
    assert response.status_code == 200
    assert target.seen == [("/ok", f"svc.test:{target.port}")]


async def test_a_rebound_name_is_checked_again_when_connecting(target: Target) -> None:
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    policy = EgressPolicy(["127.0.0.1/32"], resolver=rebinding)
    url = target.url("/ok", host="rebind.test")
    await policy.check_url(url)  # the first answer passes
    async with policy.client() as client:
        with pytest.raises(EgressDenied, match="169.254.169.254, a link-local"):
            await client.get(url)  # the connection resolves again and is refused
    assert target.seen == []


async def test_dns_failure_in_the_client_is_a_connect_error(target: Target) -> None:
    policy = EgressPolicy(resolver=fake_dns({}))
    async with policy.client() as client:
        with pytest.raises(httpx.ConnectError, match="could not be resolved"):
            await client.get("http://nowhere.test/")
    async with policy.httpx2_client() as client2:
        with pytest.raises(httpx2.ConnectError, match="could not be resolved"):
            await client2.get("http://nowhere.test/")
