"""Backend for any OpenAI-compatible Chat Completions server (vLLM, llama.cpp server, Ollama,
SGLang, TGI, OpenAI, ...).

Rules:
  * always stream (``stream: true`` with a final usage chunk), inside ``async with
    session.post(...)``: when the consumer stops iterating, the HTTP response is released
    unfinished, its connection is closed and the upstream stops generating;
  * one pooled HTTP/1.1 keep-alive session per backend (aiohttp: its per-request cost is a
    small fraction of httpx's, and this client is on every request's path), created on first
    use inside the running loop; or a shared one passed in (then it is not ours to close);
  * idle connections are dropped after ``KEEPALIVE_SECONDS``, below the 5 s that common
    servers (uvicorn, hence vLLM and SGLang) keep them, so a request is not sent on a
    connection the upstream is closing; a request whose connection is found closed before
    any answer arrives is sent once more on a fresh one;
  * ``aiohttp`` exceptions never leave this module: they become ``BackendTimeout``,
    ``BackendError`` or (for an error body about the context) ``ContextOverflow``;
  * the environment is not read (``trust_env=False``): configuration arrives in ``OpenAIModel``.

The configured ``timeout`` bounds each wait on the upstream (connecting excepted, which is
capped at 10 s), not the whole generation: a long answer that keeps streaming never times out,
a silent upstream does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from respond.backends.chat import ChunkReader, error_from_payload
from respond.domain import ChatMessage, Delta, Generation
from respond.errors import BackendError, BackendTimeout
from respond.settings import OpenAIModel

logger = logging.getLogger(__name__)

_DONE = b"[DONE]"
_ERROR_BODY_LIMIT = 2000  # characters of a non-JSON error body worth quoting
KEEPALIVE_SECONDS = 4.0
CONNECT_TIMEOUT_CAP = 10.0


class OpenAICompatBackend:
    """A model served by an OpenAI-compatible Chat Completions endpoint."""

    def __init__(
        self, config: OpenAIModel, name: str, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.name = name
        self.model = config.model or name
        self.vision = config.vision
        self.context_window = config.context
        self.base_url = config.base_url
        self._url = f"{config.base_url}/chat/completions"
        # streams are long-lived, so there is no cap on connections (a cap would queue
        # requests behind generations); ``sock_read`` bounds each wait for the next bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(CONNECT_TIMEOUT_CAP, config.timeout),
            sock_read=config.timeout,
        )
        self._headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._owns_session = session is None
        self._session = session

    def payload(self, request: Generation) -> dict[str, Any]:
        """The Chat Completions request body for ``request``: only the parameters it sets."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        optional = (
            ("max_tokens", request.max_output_tokens),
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("tools", request.tools),
            ("tool_choice", request.tool_choice),
            ("parallel_tool_calls", request.parallel_tool_calls),
            ("response_format", request.response_format),
            *request.extra.items(),
        )
        for key, value in optional:
            if value is not None:
                body[key] = value
        return body

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=KEEPALIVE_SECONDS, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trust_env=False,
                skip_auto_headers=("user-agent",),
            )
        return self._session

    async def _post(self, content: bytes) -> aiohttp.ClientResponse:
        """Send the request; once more on a fresh connection if the pooled one was found
        closed before any answer (nothing was generated for it)."""
        # redirects are not followed: a model server that redirects is misconfigured, and a
        # followed POST would turn into a GET
        send = functools.partial(self._http().post, self._url, data=content,
                                 headers=self._headers, allow_redirects=False)
        try:
            return await send()
        except aiohttp.ServerDisconnectedError:
            logger.debug("upstream %s closed a pooled connection; sending again", self.base_url)
            return await send()

    async def generate(self, request: Generation) -> AsyncGenerator[Delta, None]:
        content = orjson.dumps(self.payload(request))
        reader = ChunkReader()
        done = False
        try:
            async with await self._post(content) as response:
                if response.status >= 300:
                    raise error_from_payload(response.status, await _error_body(response))
                if response.content_type == "application/json":
                    # the server ignored ``stream`` and sent one whole chat.completion
                    for delta in reader.feed(self._decode(await response.read())):
                        yield delta
                    done = True
                else:
                    events = _EventParser()
                    async for block in response.content.iter_any():
                        for data in events.feed(block):
                            if done:
                                continue  # read to the end so the connection can be reused
                            if data == _DONE:
                                done = True
                                continue
                            for delta in reader.feed(self._decode(data)):
                                yield delta
                    for data in events.close():
                        done = done or data == _DONE
                        if not done:
                            for delta in reader.feed(self._decode(data)):
                                yield delta
        except TimeoutError as exc:  # aiohttp's timeouts (connect and read) are TimeoutErrors
            logger.warning("upstream %s of model %s timed out: %r", self.base_url, self.name, exc)
            raise BackendTimeout(self._timeout_message(exc)) from exc
        except aiohttp.ClientConnectorError as exc:
            logger.warning("cannot reach upstream %s of model %s: %r", self.base_url, self.name, exc)
            raise BackendError(
                f"Cannot reach the upstream of model '{self.name}': {_reason(exc)}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise BackendError(
                f"The upstream of model '{self.name}' broke off the answer: {_reason(exc)}"
            ) from exc
        if not done and reader.finish_reason is None:
            raise BackendError(
                f"The upstream of model '{self.name}' ended the stream before the answer was finished"
            )
        # yielded after the response is released, so its connection is back in the pool
        yield reader.finish()

    async def count_tokens(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> int | None:
        # Chat Completions has no tokenizer endpoint; a guess here would mislead truncation.
        return None

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _decode(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BackendError(
                f"The upstream of model '{self.name}' sent malformed JSON: {data[:200]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise BackendError(
                f"The upstream of model '{self.name}' sent a chunk that is not an object: "
                f"{data[:200]!r}"
            )
        return chunk

    def _timeout_message(self, exc: BaseException) -> str:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            what = f"did not accept a connection within {self._timeout.sock_connect:g} s"
        else:
            what = f"did not answer within {self._timeout.sock_read:g} s"
        return f"The upstream of model '{self.name}' {what}"


class _EventParser:
    """Splits a server-sent event stream into the ``data`` of its events, as bytes.

    Events end at a blank line; several ``data:`` lines of one event are joined with a line
    feed, as the SSE specification says. Comments (``: ping``) and the other fields
    (``event``, ``id``, ``retry``) carry nothing a Chat Completions client uses.
    """

    __slots__ = ("_data", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, block: bytes) -> list[bytes]:
        lines = (self._pending + block if self._pending else block).split(b"\n")
        self._pending = lines.pop()
        events: list[bytes] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[bytes]:
        """The events left when the stream ends without a final blank line."""
        events: list[bytes] = []
        if self._pending:
            self._line(self._pending, events)
            self._pending = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])


async def _error_body(response: aiohttp.ClientResponse) -> Any:
    raw = await response.read()
    logger.debug("upstream %s answered %s: %r", response.url, response.status, raw[:500])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:_ERROR_BODY_LIMIT] or f"HTTP {response.status}"


def _reason(exc: Exception) -> str:
    """What went wrong, without the upstream's address (aiohttp puts it in some messages)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message or f"HTTP {exc.status}"
    return str(exc) or type(exc).__name__
