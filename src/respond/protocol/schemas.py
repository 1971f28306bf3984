"""JSON schemas from a request (a function's ``parameters``, ``text.format.schema``): checked
before anything is offered to a model.

Rules for a schema: it must be valid for its dialect (``$schema``, else 2020-12), and every
``$ref`` in it must resolve inside the schema itself, to a schema: a JSON pointer
(``#/$defs/...``, ``#/definitions/...``, ``#`` for recursion), an anchor, or a resource it
embeds under an ``$id``. Nothing is ever fetched, so a reference to another document is
refused as well: neither the decoder nor the model could follow it. Each refusal names the
parameter and, where it helps, the place inside the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema

from respond.errors import InvalidRequest


def check_schema(schema: Any, param: str) -> None:
    """Refuse ``schema`` (the value of request parameter ``param``) unless it keeps the rules."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected a JSON schema object.",
                             param=param, code="invalid_type")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise _schema_error(param, where, exc.message) from None
    _check_refs(schema, param)


def _schema_error(param: str, where: str, message: str) -> InvalidRequest:
    at = f" at '{where}'" if where else ""
    return InvalidRequest(f"Invalid schema for '{param}'{at}: {message}", param=param,
                          code="invalid_value")


# keywords whose value is a schema or a list of schemas (``items`` is either, by draft)
_SCHEMA_KEYWORDS = frozenset({
    "additionalItems", "additionalProperties", "allOf", "anyOf", "contains", "contentSchema",
    "else", "if", "items", "not", "oneOf", "prefixItems", "propertyNames", "then",
    "unevaluatedItems", "unevaluatedProperties",
})
# keywords whose value maps names to schemas
_NAMED_SCHEMA_KEYWORDS = frozenset({
    "$defs", "definitions", "dependencies", "dependentSchemas", "patternProperties",
    "properties",
})


def _subschemas(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The object schemas directly inside ``schema``, each with its path from the root
    (``const``, ``enum``, ``default`` and ``examples`` hold data, never schemas)."""
    for key, value in schema.items():
        if key in _SCHEMA_KEYWORDS and isinstance(value, list):
            children = [(f"{key}/{i}", child) for i, child in enumerate(value)]
        elif key in _SCHEMA_KEYWORDS:
            children = [(key, value)]
        elif key in _NAMED_SCHEMA_KEYWORDS and isinstance(value, dict):
            children = [(f"{key}/{name}", child) for name, child in value.items()]
        else:
            continue
        for where, child in children:
            if isinstance(child, dict):
                yield f"{path}/{where}" if path else where, child


def _check_refs(schema: dict[str, Any], param: str) -> None:
    """Refuse the first ``$ref`` of ``schema`` (in document order) that does not resolve
    inside it. Relative references resolve against the ``$id``s around them."""
    dialect = schema.get("$schema")
    specification = referencing.jsonschema.specification_with(
        dialect if isinstance(dialect, str) else "", default=referencing.jsonschema.DRAFT202012)
    root = referencing.Registry().resolver_with_root(specification.create_resource(schema))
    pending = [("", schema, root)]
    while pending:
        where, node, resolver = pending.pop()
        resolver = resolver.in_subresource(specification.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            _check_ref(ref, resolver.lookup, param, where)
        pending.extend(reversed([(path, child, resolver)
                                 for path, child in _subschemas(node, where)]))


def _check_ref(ref: str, lookup: Callable[[str], Any], param: str, where: str) -> None:
    try:
        target = lookup(ref).contents
    except (referencing.exceptions.PointerToNowhere, referencing.exceptions.NoSuchAnchor,
            referencing.exceptions.InvalidAnchor, ValueError):
        raise _schema_error(param, where, f"the reference '{ref}' does not resolve inside "
                            "the schema.") from None
    except referencing.exceptions.Unresolvable:  # the document it names is not in the schema
        raise _schema_error(param, where, f"the reference '{ref}' does not resolve inside "
                            "the schema (other documents are never fetched).") from None
    if not isinstance(target, (dict, bool)):
        raise _schema_error(param, where, f"the reference '{ref}' points to a value that is "
                            "not a schema.")
