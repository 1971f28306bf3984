"""Backend for any OpenAI-compatible Chat Completions server (vLLM, llama.cpp server, Ollama,
SGLang, TGI, OpenAI, ...).

Rules:
  * always stream (``stream: true`` with a final usage chunk), inside ``async with
    client.stream(...)``: when the consumer stops iterating, the HTTP response is closed and
    the upstream stops generating;
  * one pooled HTTP/1.1 keep-alive client per backend, or a shared one passed in (then it is
    not ours to close);
  * ``httpx`` exceptions never leave this module: they become ``BackendTimeout``,
    ``BackendError`` or (for an error body about the context) ``ContextOverflow``;
  * the environment is not read (``trust_env=False``): configuration arrives in ``OpenAIModel``.

The configured ``timeout`` bounds each wait on the upstream (connecting excepted, which is
capped at 10 s), not the whole generation: a long answer that keeps streaming never times out,
a silent upstream does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from respond.backends.chat import ChunkReader, error_from_payload
from respond.domain import ChatMessage, Delta, Generation
from respond.errors import BackendError, BackendTimeout
from respond.settings import OpenAIModel

logger = logging.getLogger(__name__)

_DONE = b"[DONE]"
_ERROR_BODY_LIMIT = 2000  # characters of a non-JSON error body worth quoting

# Streams are long-lived, so the pool does not cap connections (a cap would turn load into
# PoolTimeouts); it keeps enough idle ones for a busy server to avoid reconnecting.
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=256)


class OpenAICompatBackend:
    """A model served by an OpenAI-compatible Chat Completions endpoint."""

    def __init__(
        self, config: OpenAIModel, name: str, client: httpx.AsyncClient | None = None
    ) -> None:
        self.name = name
        self.model = config.model or name
        self.vision = config.vision
        self.context_window = config.context
        self.base_url = config.base_url
        self._url = f"{config.base_url}/chat/completions"
        self._timeout = httpx.Timeout(config.timeout, connect=min(10.0, config.timeout))
        self._headers = {"content-type": "application/json"}
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=self._timeout, limits=_LIMITS, http1=True, http2=False, trust_env=False
        )

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

    async def generate(self, request: Generation) -> AsyncGenerator[Delta, None]:
        content = orjson.dumps(self.payload(request))
        reader = ChunkReader()
        done = False
        try:
            async with self._client.stream(
                "POST", self._url, content=content, headers=self._headers, timeout=self._timeout
            ) as response:
                if not response.is_success:
                    raise error_from_payload(response.status_code, await _error_body(response))
                if response.headers.get("content-type", "").startswith("application/json"):
                    # the server ignored ``stream`` and sent one whole chat.completion
                    for delta in reader.feed(self._decode(await response.aread())):
                        yield delta
                    done = True
                else:
                    events = _EventParser()
                    async for block in response.aiter_bytes():
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
        except httpx.TimeoutException as exc:
            logger.warning("upstream %s of model %s timed out: %r", self.base_url, self.name, exc)
            raise BackendTimeout(self._timeout_message(exc)) from exc
        except httpx.ConnectError as exc:
            logger.warning("cannot reach upstream %s of model %s: %r", self.base_url, self.name, exc)
            raise BackendError(f"Cannot reach the upstream of model '{self.name}': {_reason(exc)}") from exc
        except httpx.HTTPError as exc:
            raise BackendError(
                f"The upstream of model '{self.name}' broke off the answer: {_reason(exc)}"
            ) from exc
        if not done and reader.finish_reason is None:
            raise BackendError(
                f"The upstream of model '{self.name}' ended the stream before the answer was finished"
            )
        # yielded after the response is closed, so its connection is back in the pool
        yield reader.finish()

    async def count_tokens(self, messages: list[ChatMessage]) -> int | None:
        # Chat Completions has no tokenizer endpoint; a guess here would mislead truncation.
        return None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

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

    def _timeout_message(self, exc: httpx.TimeoutException) -> str:
        if isinstance(exc, httpx.ConnectTimeout):
            what = f"did not accept a connection within {self._timeout.connect:g} s"
        elif isinstance(exc, httpx.PoolTimeout):
            what = "had no free connection in the pool in time"
        else:
            what = f"did not answer within {self._timeout.read:g} s"
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


async def _error_body(response: httpx.Response) -> Any:
    raw = await response.aread()
    logger.debug("upstream %s answered %s: %r", response.url, response.status_code, raw[:500])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:_ERROR_BODY_LIMIT] or f"HTTP {response.status_code}"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
