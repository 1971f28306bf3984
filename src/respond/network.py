"""network: the egress policy every server-side fetch goes through (MCP servers, image and
file URLs).

Rule: the server fetches only http(s) URLs whose host resolves to public addresses, unless
``[network] allow`` lists the address's network ("10.0.0.0/8") or the host name as written
in the URL ("mcp.internal", "*.corp.example"). Loopback, private, link-local (cloud metadata
at 169.254.169.254 included), carrier-grade NAT, multicast, reserved and unspecified
addresses, and their IPv4-mapped / IPv4-embedding IPv6 forms, are refused.

The check runs after DNS resolution, on every new connection, inside the HTTP client's
network backend: ``connect_tcp(host, port)`` resolves the host with the event loop's
``getaddrinfo``, requires every resolved address to be allowed, and then connects to one of
those checked addresses itself. The HTTP layer above is unchanged, so the ``Host`` header
and TLS SNI / certificate checks still use the host name from the URL. Because the address
that is connected is the address that was checked, a DNS answer that changes between check
and connect (DNS rebinding) cannot slip through; every redirect hop to a new origin opens a
new connection and is checked the same way. A keep-alive connection is reused for its own
origin only, and was checked when it was opened.

``EgressPolicy.client()`` gives an ``httpx.AsyncClient`` so guarded, ``httpx2_client()`` the
same for the ``mcp`` SDK (which speaks httpx2). Proxies are refused: with one, the guard
would check the proxy, not the destination.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import httpx

if TYPE_CHECKING:
    import httpx2

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOWED_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}

# (network, why it is refused) — first match wins, so specific ranges come before broad ones.
_V4_REFUSED: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network(net), why)
    for net, why in [
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("169.254.0.0/16", "a link-local address"),
        ("192.0.0.0/24", "a reserved (IETF protocol assignment) address"),
        ("192.0.2.0/24", "a reserved (documentation) address"),
        ("198.51.100.0/24", "a reserved (documentation) address"),
        ("203.0.113.0/24", "a reserved (documentation) address"),
        ("198.18.0.0/15", "a reserved (benchmarking) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "a broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    ]
]
_V6_REFUSED: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network(net), why)
    for net, why in [
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a private (site-local) address"),
        ("ff00::/8", "a multicast address"),
        ("100::/64", "a reserved (discard-only) address"),
        ("2001:db8::/32", "a reserved (documentation) address"),
        ("2001::/32", "a reserved (Teredo) address"),
        ("64:ff9b:1::/48", "a private (local-use NAT64) address"),
    ]
]
# IPv6 forms that carry an IPv4 address: judged by the IPv4 address inside.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")

_HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


class EgressError(Exception):
    """A fetch could not be made; ``str(exc)`` is safe to show to a client."""


class EgressDenied(EgressError):
    """The egress policy refused the URL (scheme, or an address its host resolves to)."""

    def __init__(
        self, message: str, *, host: str | None = None, address: str | None = None
    ) -> None:
        super().__init__(message)
        self.host = host
        self.address = address


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, compatible), and the form."""
    if address in _MAPPED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "an IPv4-mapped form of"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64 form of"
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF), "a 6to4 form of"
    if address in _COMPATIBLE:  # "::" and "::1" never reach here: they match _V6_REFUSED first
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "an IPv4-compatible form of"
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not public ("a loopback address"), or None for a public address."""
    if isinstance(address, ipaddress.IPv4Address):
        for net, why in _V4_REFUSED:
            if address in net:
                return why
        return None if address.is_global else "a reserved (non-public) address"
    address = address.__class__(int(address))  # drop a scope id ("fe80::1%eth0")
    for v6net, why in _V6_REFUSED:
        if address in v6net:
            return why
    inner = embedded_ipv4(address)
    if inner is not None:
        v4, form = inner
        v4_why = refusal_reason(v4)
        return f"{form} {v4_why}" if v4_why else None
    return None if address.is_global else "a reserved (non-public) address"


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the running loop's ``getaddrinfo``, in its order, deduplicated."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressPolicy:
    """Which hosts the server may fetch from; see the module docstring.

    ``allow`` entries are CIDR networks or single addresses ("10.0.0.0/8", "127.0.0.1",
    "::1/128") or host names, optionally with a leading wildcard label ("mcp.internal",
    "*.corp.example" — which matches sub-domains, not "corp.example" itself). A bad entry
    raises ``ValueError`` naming it. ``resolver`` replaces DNS (tests).
    """

    def __init__(self, allow: Iterable[str] = (), *, resolver: Resolver | None = None) -> None:
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        self.wildcards: set[str] = set()  # suffixes, with their leading dot
        for raw in allow:
            self._add(raw)
        self._resolve = resolver or system_resolver

    def _add(self, raw: str) -> None:
        entry = raw.strip().lower().rstrip(".")
        try:
            self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            return
        except ValueError:
            pass
        if not _HOST_PATTERN.match(entry) or entry.replace(".", "").isdigit():
            raise ValueError(f"[network] allow: {raw!r} is neither a network (CIDR) nor a host name")
        if entry.startswith("*."):
            self.wildcards.add(entry[1:])
        else:
            self.hosts.add(entry)

    def __repr__(self) -> str:
        allowed = [str(n) for n in self.networks] + sorted(self.hosts)
        allowed += sorted("*" + w for w in self.wildcards)
        return f"EgressPolicy(allow={allowed!r})"

    # -- the checks ------------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (as written in the URL) is listed by name in ``allow``."""
        name = host.lower().rstrip(".")
        return name in self.hosts or any(name.endswith(w) for w in self.wildcards)

    def address_refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` may not be contacted, or None when it may."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address):
            ip = ip.__class__(int(ip))  # no scope id
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
            candidates.append(inner[0])
        if any(c in net for c in candidates for net in self.networks):
            return None
        return refusal_reason(ip)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that may be contacted: all of them, or ``EgressDenied``.

        An address literal is checked as it is; a name is resolved first, unless it is
        allowed by name (then its addresses are not judged). A name that does not resolve
        raises ``EgressError``.
        """
        host = host.strip("[]")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [host]
        else:
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                raise EgressError(f"The URL's host {host} could not be resolved.") from exc
            if not addresses:
                raise EgressError(f"The URL's host {host} could not be resolved.")
            if self.host_allowed(host):
                return addresses
        for address in addresses:
            why = self.address_refusal(address)
            if why is not None:
                named = "" if literal is not None else f" {host}"
                raise EgressDenied(
                    f"The URL's host{named} resolves to {address}, {why}, which is not allowed. "
                    "Add it to [network] allow to permit it.",
                    host=host,
                    address=address,
                )
        return addresses

    async def check_url(self, url: str | httpx.URL) -> None:
        """Refuse (``EgressDenied``) a URL the server may not fetch; ``EgressError`` if its
        host does not resolve. Fetch it with ``client()``, which checks again on connect."""
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else url
        except httpx.InvalidURL as exc:
            raise EgressDenied(f"The URL is not valid: {exc}.") from None
        if parsed.scheme not in ALLOWED_SCHEMES:
            scheme = parsed.scheme or "(none)"
            raise EgressDenied(f"Only http and https URLs may be fetched, not {scheme}:.")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise EgressDenied("The URL has no host.")
        await self.resolve(host, parsed.port or _DEFAULT_PORTS[parsed.scheme])

    # -- guarded HTTP clients --------------------------------------------------------------

    def transport(self, **kwargs: Any) -> httpx.AsyncHTTPTransport:
        """An ``httpx.AsyncHTTPTransport`` (same keyword arguments, no ``proxy``/``uds``)
        whose every new connection is resolved, checked and made by this policy."""
        import httpcore

        return _guarded_transport(self, httpx, httpcore, kwargs)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on ``transport()``; transport options (``verify``,
        ``http2``, ``limits``, ...) go to the transport, the rest to the client. Environment
        proxies and ``.netrc`` are ignored (``trust_env=False``)."""
        client_kwargs, transport_kwargs = _split_kwargs(kwargs)
        return httpx.AsyncClient(
            transport=self.transport(**transport_kwargs), trust_env=False, **client_kwargs
        )

    def httpx2_transport(self, **kwargs: Any) -> httpx2.AsyncHTTPTransport:
        """``transport()`` for httpx2, the HTTP client of the ``mcp`` SDK."""
        import httpcore2
        import httpx2

        return _guarded_transport(self, httpx2, httpcore2, kwargs)

    def httpx2_client(self, **kwargs: Any) -> httpx2.AsyncClient:
        """``client()`` for httpx2, the HTTP client of the ``mcp`` SDK."""
        import httpx2

        client_kwargs, transport_kwargs = _split_kwargs(kwargs)
        return httpx2.AsyncClient(
            transport=self.httpx2_transport(**transport_kwargs), trust_env=False, **client_kwargs
        )


_TRANSPORT_KEYS = {"verify", "cert", "http1", "http2", "limits", "retries", "local_address",
                   "socket_options"}
_REFUSED_KEYS = {"proxy", "proxies", "mounts", "transport", "app", "uds", "trust_env"}


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    refused = _REFUSED_KEYS & kwargs.keys()
    if refused:
        raise ValueError(f"a guarded client cannot take {sorted(refused)}")
    client = {k: v for k, v in kwargs.items() if k not in _TRANSPORT_KEYS}
    transport = {k: v for k, v in kwargs.items() if k in _TRANSPORT_KEYS}
    return client, transport


def _guarded_transport(
    policy: EgressPolicy, http: ModuleType, core: ModuleType, kwargs: dict[str, Any]
) -> Any:
    """An ``AsyncHTTPTransport`` of ``http`` (httpx or httpx2) whose connection pool (of
    ``core``, httpcore or httpcore2) opens its TCP connections through ``_GuardedBackend``."""
    if kwargs.get("proxy") or kwargs.get("uds"):
        raise ValueError("a guarded transport cannot use a proxy or a Unix socket")
    transport = http.AsyncHTTPTransport(**kwargs)
    pool = getattr(transport, "_pool", None)
    # The backend is swapped before the pool has made any connection. Fail closed if a
    # future httpx moves it: an unguarded transport must never be handed out.
    if not isinstance(pool, core.AsyncConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError(f"cannot install the egress guard on {http.__name__} {http.__version__}")
    pool._network_backend = _GuardedBackend(policy, pool._network_backend, core)
    return transport


class _GuardedBackend:
    """An httpcore network backend that resolves, checks and connects to a checked address.

    httpcore hands it the URL's host; TLS is started later on the returned stream with
    ``server_hostname`` = that host, so SNI and certificate checks are unchanged.
    """

    def __init__(self, policy: EgressPolicy, inner: Any, core: ModuleType) -> None:
        self._policy = policy
        self._inner = inner
        self._core = core

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        try:
            with anyio.fail_after(timeout):
                addresses = await self._policy.resolve(host, port)
        except TimeoutError as exc:
            raise self._core.ConnectTimeout(f"resolving {host} timed out") from exc
        except EgressDenied:
            logger.info("egress refused: %s:%d", host, port)
            raise
        except EgressError as exc:
            raise self._core.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (self._core.ConnectError, self._core.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        raise EgressDenied("Unix sockets may not be used for server-side fetches.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
