"""Composition root: ``create_app(settings, **overrides)`` builds every long-lived resource.

Resources open in the lifespan (one ``AsyncExitStack``) and close in reverse order. Importing
this module does nothing; tests pass ``store=`` or ``backends=`` overrides instead of patching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from respond.backends import Backend
from respond.engine.background import Background
from respond.engine.files import FilesService
from respond.engine.media import MediaResolver
from respond.engine.service import ResponsesService
from respond.engine.worker import Worker
from respond.errors import APIError, InvalidRequest, NotFound, ServerError
from respond.http.auth import APIKeyAuth
from respond.http.render import error_response
from respond.http.routes import all_routes, api_error_handler
from respond.http.uploads import remove_stale_uploads
from respond.network import EgressPolicy
from respond.sealing import Sealer
from respond.settings import LlamaCppModel, OpenAIModel, Settings
from respond.store import Store
from respond.store.open import open_store
from respond.tools.mcp import McpSession
from respond.web.fetcher import HttpFetcher

log = logging.getLogger(__name__)


async def open_backend(name: str, config: LlamaCppModel | OpenAIModel) -> Backend:
    match config:
        case LlamaCppModel():
            from respond.backends.llamacpp import LlamaCppBackend

            return await LlamaCppBackend.load(config)
        case OpenAIModel():
            from respond.backends.openai_compat import OpenAICompatBackend

            return OpenAICompatBackend(config, name)
    raise AssertionError(f"unknown backend config {config!r}")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"Invalid URL ({request.method} {request.url.path})"))
    if exc.status_code == 405:
        return error_response(InvalidRequest(
            f"Method {request.method} is not allowed on {request.url.path}.", status=405))
    return error_response(APIError(str(exc.detail), status=exc.status_code))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ServerError("The server had an error while processing your request."))


PURGE_INTERVAL_SECONDS = 3600


def _secret_key(settings: Settings) -> bytes:
    """The configured secret key, or one kept in the data dir (readable by us alone)."""
    if settings.server.secret_key is not None:
        return settings.server.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    return path.read_bytes()


async def _purge_forever(store: Store) -> None:
    """Retention: delete expired responses and files now and then every hour."""
    while True:
        try:
            purged = await store.purge_expired(int(time.time()))
        except Exception:  # a failed purge must not stop the next one
            log.exception("purging expired responses failed")
        else:
            if purged:
                log.info("purged %d expired responses", purged)
        try:
            purged = await store.purge_files(int(time.time()))
        except Exception:
            log.exception("purging expired files failed")
        else:
            if purged:
                log.info("purged %d expired files", purged)
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    backends: Mapping[str, Backend] | None = None,
) -> Starlette:
    """The ASGI application. ``store`` and ``backends`` replace the configured ones."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            the_store = store
            if the_store is None:
                the_store = await open_store(settings.database_url())
                stack.push_async_callback(the_store.aclose)
            the_backends = dict(backends) if backends is not None else {}
            if backends is None:
                for name, config in settings.model_configs().items():
                    backend = await open_backend(name, config)
                    stack.push_async_callback(backend.aclose)
                    the_backends[name] = backend
            policy = EgressPolicy(settings.network.allow)
            retention_seconds = int(settings.server.retention_days * 86400)
            fetcher = HttpFetcher(policy)
            stack.push_async_callback(fetcher.aclose)
            media = MediaResolver(the_store, fetcher)
            service = ResponsesService(
                the_store, the_backends,
                retention_seconds=retention_seconds,
                connector=lambda server: McpSession.open(
                    server.url, server.headers, policy, server_label=server.label),
                media=media,
            )
            stack.push_async_callback(service.flush)
            sealer = Sealer(_secret_key(settings))
            app.state.background = Background(service, sealer)
            if settings.server.background_workers:
                worker = Worker(service, sealer, concurrency=settings.server.background_workers,
                                lease_seconds=settings.server.job_lease_seconds)
                worker_task = asyncio.create_task(worker.run_forever())
                stack.push_async_callback(worker.aclose)
                stack.callback(worker_task.cancel)
            purger = asyncio.create_task(_purge_forever(the_store))
            stack.callback(purger.cancel)
            app.state.service = service
            app.state.max_body_bytes = settings.server.max_body_bytes
            app.state.files = FilesService(the_store, retention_seconds=retention_seconds)
            app.state.max_file_bytes = settings.server.max_file_bytes
            app.state.upload_dir = settings.data_dir / "uploads"
            if removed := remove_stale_uploads(app.state.upload_dir):
                log.info("removed %d temporary uploads left by an earlier run", removed)
            app.state.started_at = int(time.time())
            log.info("serving models: %s", ", ".join(the_backends))
            yield

    keys = [k.get_secret_value() for k in settings.server.api_keys]
    return Starlette(
        routes=all_routes(),
        lifespan=lifespan,
        middleware=[Middleware(APIKeyAuth, keys=keys)] if keys else [],
        exception_handlers={
            APIError: api_error_handler,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
