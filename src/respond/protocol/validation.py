"""Turning pydantic validation errors into OpenAI-shaped 400s that name the parameter."""

from __future__ import annotations

from pydantic import ValidationError

from respond.errors import InvalidRequest, UnknownParameter


def param_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "literal[", "str", "list[", "dict[")):
            continue
        else:
            out += f".{part}" if out else part
    return out


def to_api_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first error of ``exc`` as an ``InvalidRequest`` (OpenAI reports one at a time)."""
    errors = exc.errors(include_url=False)
    # prefer the most specific error: unknown keys first, then the deepest path
    errors.sort(key=lambda e: (e["type"] != "extra_forbidden", -len(e["loc"])))
    err = errors[0]
    param = param_path(tuple(err["loc"]), prefix)
    kind = err["type"]
    if kind == "extra_forbidden":
        return UnknownParameter(param)
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if kind in {"string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type",
                "model_type", "int_from_float", "bool_parsing", "int_parsing", "float_parsing"}:
        expected = err["msg"].removeprefix("Input should be ").rstrip(".")
        return InvalidRequest(
            f"Invalid type for '{param}': expected {expected}.", param=param, code="invalid_type"
        )
    message = err["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {message}.".replace("..", "."),
                          param=param, code="invalid_value")
