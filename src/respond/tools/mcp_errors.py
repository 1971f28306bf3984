"""What went wrong with an MCP server, in words safe to show: the error kinds, the mapping of
exceptions to them, and the scrubbing of secrets from every message.

``McpSession`` (``mcp.py``) raises the ``ToolError`` subclasses below; its connection
describes a failure as a ``Failure`` (without the server's label, which the session adds).

Rules:

* A message is built from our own words plus the server's first line, never from a header
  value: ``redact`` scrubs every value (and its long words) from messages, returned text and
  log lines, and ``safe_url`` drops the parts of a URL that may carry secrets.
* ``describe`` looks through exception groups and causes, and picks the most telling
  failure first: egress refused, unreachable, an HTTP status, a time-out, a transport error,
  a JSON-RPC error, invalid MCP.
"""

from __future__ import annotations

import http
from collections.abc import Iterator, Mapping

import httpx2
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from ..network import EgressDenied, EgressError
from . import ToolError

_MAX_MESSAGE = 600


class McpToolExecutionError(ToolError):
    """The tool ran and reported an error (``isError``); the message is its text."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="execution")


class McpProtocolError(ToolError):
    """The server answered with a JSON-RPC error or broke the protocol; ``code`` is JSON-RPC's."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, kind="protocol", code=code)


class McpHttpError(ToolError):
    """The server answered an HTTP error status (``code``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, kind="http", code=code)


class Failure(Exception):
    """A connection-level failure, described without the server's label (added by the session).

    ``kind`` picks the ``ToolError`` subclass: ``"protocol"``, ``"http"`` or ``None``.
    """

    def __init__(self, text: str, kind: str | None = None, code: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.kind = kind
        self.code = code

    def copy(self) -> Failure:
        """A fresh exception to raise again (a stored one would pile up tracebacks)."""
        return Failure(self.text, self.kind, self.code)

    def tool_error(self, message: str) -> ToolError:
        """The ``ToolError`` of this kind, with ``message`` (already labelled and redacted)."""
        if self.kind == "protocol":
            return McpProtocolError(message, self.code)
        if self.kind == "http":
            return McpHttpError(message, self.code)
        return ToolError(message)


def describe(exc: BaseException, statuses: list[int], *, url: str, timeout: float) -> Failure:
    """What went wrong, in the client's words (the label is added by the session);
    ``statuses`` are the HTTP error statuses seen during the failed operation."""
    found = list(leaves(exc))
    for leaf in found:
        if isinstance(leaf, EgressDenied):
            return Failure(f"was not contacted: {leaf}")
    for leaf in found:
        if isinstance(leaf, EgressError):
            return Failure(f"could not be reached: {leaf}")
    status = next(
        (leaf.response.status_code for leaf in found if isinstance(leaf, httpx2.HTTPStatusError)),
        statuses[-1] if statuses else None,
    )
    if status is not None and any(isinstance(leaf, MCPError | httpx2.HTTPStatusError) for leaf in found):
        return http_failure(status)
    for leaf in found:
        if isinstance(leaf, httpx2.TimeoutException):
            return timed_out(timeout)
    for leaf in found:
        if isinstance(leaf, httpx2.ConnectError | ConnectionRefusedError):
            return Failure(f"could not be reached at {safe_url(url)} ({_reason(leaf)})")
    for leaf in found:
        if isinstance(leaf, httpx2.TransportError | OSError):
            return Failure(f"closed the connection ({_reason(leaf)})")
    for leaf in found:
        if isinstance(leaf, MCPError):
            return _protocol_failure(leaf)
    for leaf in found:
        if isinstance(leaf, ValidationError | ValueError):
            return Failure("sent a response that is not valid MCP", "protocol", -32600)
    kinds = ", ".join(sorted({type(leaf).__name__ for leaf in found}))
    return Failure(f"failed ({kinds})")


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, each followed by its causes."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
        return
    yield exc
    if exc.__cause__ is not None:
        yield from leaves(exc.__cause__)


def http_failure(status: int) -> Failure:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    if status in (401, 403):
        return Failure(
            f"refused the request: HTTP {status} {phrase}. Check the headers of the mcp tool.",
            "http", status,
        )
    return Failure(f"answered HTTP {status} {phrase}", "http", status)


def timed_out(timeout: float) -> Failure:
    return Failure(f"did not answer within {timeout:g} s")


def _protocol_failure(error: MCPError) -> Failure:
    message = ((error.message or "").strip().splitlines() or ["no message"])[0]
    if error.code == types.CONNECTION_CLOSED:
        return Failure(f"closed the connection ({message})", "protocol", error.code)
    if error.code in (types.PARSE_ERROR, types.INVALID_REQUEST):
        return Failure(f"sent an invalid response: {message}", "protocol", error.code)
    return Failure(f"returned an error: {message} (code {error.code})", "protocol", error.code)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connection refused"
    return str(exc) or type(exc).__name__


# -- secrets ---------------------------------------------------------------------------------


def secrets_of(headers: Mapping[str, str]) -> list[str]:
    """Header values, and their long words (a server may echo just the token of
    ``Bearer <token>``), longest first so a whole value is scrubbed before its parts."""
    found: set[str] = set()
    for value in headers.values():
        value = value.strip()
        if len(value) >= 4:
            found.add(value)
        found.update(word for word in value.split() if len(word) >= 8)
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` (from ``secrets_of``, longest first) replaced."""
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment (those may carry secrets)."""
    try:
        return str(httpx2.URL(url).copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx2.InvalidURL, TypeError, ValueError):
        return "(invalid URL)"


def host(url: str) -> str:
    """The host of ``url``, the default label of a server; ``"mcp"`` when there is none."""
    try:
        return httpx2.URL(url).host or "mcp"
    except (httpx2.InvalidURL, TypeError, ValueError):
        return "mcp"


def clip(text: str) -> str:
    """``text`` cut to the length a client is shown."""
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
