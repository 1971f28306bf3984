"""The inbound ``POST /responses`` body: strict, so an unknown parameter is a 400 naming it.

Parameters that exist in the API but that respond does not run (yet) are listed in
``UNSUPPORTED`` and refused with ``unsupported_parameter`` when given a non-default value,
never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from respond.errors import InvalidRequest, UnknownParameter, UnsupportedParameter
from respond.protocol.validation import to_api_error

INCLUDABLE = {
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_obfuscation: bool = True


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    mode: Literal["standard", "pro"] | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None


class CreateResponse(_Strict):
    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    background: bool | None = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    max_tool_calls: int | None = Field(default=None, ge=1)
    include: list[str] | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = "disabled"
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_output_tokens: int | None = Field(default=None, ge=16)
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    # known to the API, not run by respond: refused when set (see check_supported)
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    context_management: Any = None
    prompt_cache_options: dict[str, Any] | None = None

    @field_validator("input")
    @classmethod
    def _input_size(cls, v: Any) -> Any:
        if isinstance(v, str) and len(v) > 10_485_760:
            raise ValueError("string too long; the maximum is 10485760 characters")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("at most 16 key-value pairs are allowed")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError(f"key '{key[:20]}…' is longer than 64 characters")
            if len(value) > 512:
                raise ValueError(f"the value of '{key}' is longer than 512 characters")
        return v

    @field_validator("include")
    @classmethod
    def _include_values(cls, v: list[str] | None) -> list[str] | None:
        for value in v or ():
            if value not in INCLUDABLE:
                raise ValueError(f"'{value}' is not one of {sorted(INCLUDABLE)}")
        return v


def parse_create(body: bytes) -> CreateResponse:
    """Decode and validate a create body; raises ``InvalidRequest`` in OpenAI's shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    try:
        req = CreateResponse.model_validate(data)
    except ValidationError as exc:
        raise to_api_error(exc) from None
    check_supported(req)
    return req


def _unsupported(param: str, what: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"Unsupported parameter: '{param}': {what}", param=param)


def check_supported(req: CreateResponse) -> None:
    """Refuse parameters respond knows but does not run, naming them."""
    if not req.model:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if req.input is None and req.previous_response_id is None:
        raise InvalidRequest(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if req.conversation is not None:
        raise _unsupported("conversation", "the Conversations API is not available; use "
                           "'previous_response_id' to continue a conversation.")
    if req.prompt is not None:
        raise _unsupported("prompt", "stored prompt templates are not available.")
    if req.context_management is not None:
        raise _unsupported("context_management", "server-side compaction is not available.")
    if req.prompt_cache_options is not None:
        raise _unsupported("prompt_cache_options", "not available.")
    if req.background and req.store is False:
        raise InvalidRequest("Background responses must be stored: 'store' cannot be false "
                             "when 'background' is true.", param="store", code="invalid_value")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "Invalid value for 'stream_options': only allowed when 'stream' is true.",
            param="stream_options", code="invalid_value",
        )
    if req.top_logprobs:
        raise _unsupported("top_logprobs", "log probabilities are not available.")
    if req.include and "message.output_text.logprobs" in req.include:
        raise _unsupported("include", "'message.output_text.logprobs' is not available.")
    if req.reasoning is not None and (req.reasoning.effort not in (None, "none") or req.reasoning.summary
                                      or req.reasoning.generate_summary):
        raise _unsupported("reasoning.effort" if req.reasoning.effort else "reasoning.summary",
                           "reasoning controls are not available for this model.")
    if req.frequency_penalty or req.presence_penalty:
        raise _unsupported("frequency_penalty" if req.frequency_penalty else "presence_penalty",
                           "penalties are not available.")
    fmt = req.text.format if req.text else None
    if fmt is not None:
        allowed = {"text": {"type"}, "json_object": {"type"},
                   "json_schema": {"type", "name", "schema", "strict", "description"}}[fmt.type]
        for key in fmt.model_dump(exclude_none=True):
            if key not in allowed:
                raise UnknownParameter(f"text.format.{key}")
