"""API-key authentication as a plain ASGI middleware.

Accepts ``Authorization: Bearer <key>`` (OpenAI SDKs) and ``api-key: <key>`` (Azure). Keys
are compared in constant time. With no keys configured every request passes.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from respond.errors import AuthenticationFailed

OPEN_PATHS = frozenset({"/health", "/healthz"})


class APIKeyAuth:
    def __init__(self, app: Any, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _allowed(self, presented: bytes) -> bool:
        ok = False
        for key in self.keys:  # no early exit: the time taken does not depend on which key
            ok |= hmac.compare_digest(presented, key)
        return ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"api-key":
                presented = value.strip()
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
                break
        if presented is not None and self._allowed(presented):
            await self.app(scope, receive, send)
            return
        if presented is None:
            err = AuthenticationFailed(
                "You didn't provide an API key. Provide it in an 'Authorization: Bearer' "
                "header or an 'api-key' header."
            )
        else:
            err = AuthenticationFailed("Incorrect API key provided.")
        body = orjson.dumps(err.body())
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
