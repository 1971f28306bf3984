"""Errors: one hierarchy in OpenAI's error shape, raised anywhere, rendered once by ``http``.

Every error knows its HTTP status, ``type``, ``param`` and ``code``. Adapters translate
library exceptions at their edge (``raise BackendError(...) from exc``).
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class UnknownParameter(InvalidRequest):
    code = "unknown_parameter"

    def __init__(self, param: str) -> None:
        super().__init__(f"Unknown parameter: '{param}'.", param=param)


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class InvalidValue(InvalidRequest):
    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
        )


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BackendError(APIError):
    """The model backend failed (unreachable, bad answer, upstream 5xx)."""

    status = 502
    type = "server_error"
    code = "server_error"


class BackendTimeout(BackendError):
    status = 504


class ContextOverflow(Exception):
    """Raised by a backend before any output when the prompt does not fit its context.

    ``prompt_tokens`` and ``context_window`` are filled when the backend knows them.
    """

    def __init__(
        self, message: str, prompt_tokens: int | None = None, context_window: int | None = None
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class ServerError(APIError):
    status = 500
    type = "server_error"
