"""Rendering one SQL text for SQLite or PostgreSQL: the one place where their spellings differ
(statements that differ in substance are marked ``only`` in store/statements.py).

A statement is written once (store/statements.py) with named parameters (``:name``) and a
few macros in braces; ``Sql.on(dialect)`` renders it once per dialect and keeps the result,
so the text sent is constant (SQLite's statement cache and asyncpg's prepared statements
both key on it).

- Parameters become ``?1, ?2...`` (SQLite) or ``$1, $2...`` (PostgreSQL), numbered in
  order of first use, and ``Rendered.args`` turns a mapping of values into that tuple.
  Statements on a hot path declare their order (``params``, checked when rendered) and
  are given tuples directly: building and binding a mapping costs about as much as a
  small SQLite read.
- Casts (``:ids::text[]``) are for PostgreSQL's type inference; SQLite drops them.
- Booleans are written ``true``/``false``, which both understand (SQLite 3.23+).
- Macros, ``{name}`` or ``{name:argument}``:

  ``{each:ids AS j}``       the id-list parameter ``ids`` as rows ``j.value`` (the id) and
                             ``j.key`` (its place): ``json_each`` of a JSON array on SQLite,
                             ``unnest ... WITH ORDINALITY`` of a ``text[]`` on PostgreSQL.
  ``{lookup:t AS i|i.id|:ids}`` the FROM and WHERE of the rows of ``t`` whose ``i.id`` is
                             one of the ids (ends the statement): the id list drives the
                             join on SQLite, ``= ANY`` on PostgreSQL (each the fastest).
  ``{concat:x ORDER BY k}`` JSON documents ``x`` as the text of one JSON array (NULL for
                             none), built by the database: one string to parse, not a row each.
                             SQLite (before 3.44) cannot order an aggregate: the order is the
                             scan's, which callers check (``pages.in_order``).
  ``{field:doc|key}``       the text of ``doc``'s top-level ``key``, NULL when absent.
  ``{empty_ids}``           an empty id list literal (``'[]'`` / ``'{}'``).
  ``{clock}``               when a job was enqueued: PostgreSQL's clock (replicas on many
                             hosts share one order); on SQLite the ``:enqueued_at`` parameter
                             (one host, and finer than SQLite's millisecond clock).
  ``{skip_locked}``         ``FOR UPDATE SKIP LOCKED`` where rows can be locked (PostgreSQL).
  ``{alive:worker}``        whether the worker named by the expression ``worker`` is alive:
                             on PostgreSQL, some session holds its advisory lock (its key is
                             ``hashtextextended(name, 0)``, a bigint lock: ``objsubid`` 1,
                             the key split into ``classid``/``objid``); on SQLite the
                             connection's ``respond_worker_alive`` (store/sqlite_connection.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

DialectName = Literal["sqlite", "postgresql"]
_DIALECTS: tuple[DialectName, ...] = ("sqlite", "postgresql")
Values = Mapping[str, Any] | tuple[Any, ...]  # by name, or already in parameter order

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_CAST = re.compile(r"::\w+(\[\])?")
_MACRO = re.compile(r"\{(\w+)(?::([^{}]*))?\}")

_PG_ADVISORY_HOLDERS = (
    "ARRAY(SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks AS l"
    " WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


def _concat_sqlite(arg: str) -> str:
    expr = arg.split(" ORDER BY ")[0]
    return f"'[' || group_concat({expr}, ',') || ']'"


def _concat_postgresql(arg: str) -> str:
    expr, _, order = arg.partition(" ORDER BY ")
    return f"'[' || string_agg(({expr})::text, ','{' ORDER BY ' + order if order else ''}) || ']'"


def _each(arg: str, sqlite: bool) -> str:
    param, _, alias = arg.partition(" AS ")
    if sqlite:
        return f"json_each({param}) AS {alias}"
    return f"unnest({param}::text[]) WITH ORDINALITY AS {alias} (value, key)"


def _lookup(arg: str, sqlite: bool) -> str:
    table, key, param = arg.split("|")
    if sqlite:
        return f"json_each({param}) AS j CROSS JOIN {table} WHERE {key} = j.value"
    return f"{table} WHERE {key} = ANY({param}::text[])"


def _field(arg: str, sqlite: bool) -> str:
    doc, _, key = arg.partition("|")
    return f"json_extract({doc}, '$.{key}')" if sqlite else f"({doc}->>'{key}')"


_MACROS: dict[DialectName, dict[str, Callable[[str], str]]] = {
    "sqlite": {
        "each": lambda arg: _each(arg, True),
        "lookup": lambda arg: _lookup(arg, True),
        "concat": _concat_sqlite,
        "field": lambda arg: _field(arg, True),
        "empty_ids": lambda _: "'[]'",
        "clock": lambda _: ":enqueued_at",
        "skip_locked": lambda _: "",
        "alive": lambda arg: f"respond_worker_alive({arg})",
    },
    "postgresql": {
        "each": lambda arg: _each(arg, False),
        "lookup": lambda arg: _lookup(arg, False),
        "concat": _concat_postgresql,
        "field": lambda arg: _field(arg, False),
        "empty_ids": lambda _: "'{}'",
        "clock": lambda _: "extract(epoch FROM clock_timestamp())",
        "skip_locked": lambda _: "FOR UPDATE SKIP LOCKED",
        "alive": lambda arg: f"(hashtextextended({arg}, 0) = ANY ({_PG_ADVISORY_HOLDERS}))",
    },
}


@dataclass(frozen=True, slots=True)
class Rendered:
    """A statement's text in one dialect, and the order its parameters are bound in."""

    text: str
    names: tuple[str, ...]  # the names behind ?1 / $1, ?2 / $2...

    def args(self, values: Values) -> tuple[Any, ...]:
        """The values in parameter order (a tuple is taken to be in that order already)."""
        if isinstance(values, tuple):
            return values
        return tuple([values[name] for name in self.names])


def render(template: str, dialect: DialectName) -> Rendered:
    macros = _MACROS[dialect]

    def expand(match: re.Match[str]) -> str:
        name, arg = match[1], match[2] or ""
        if name not in macros:
            raise ValueError(f"unknown SQL macro {{{name}}}")
        return macros[name](arg)

    text = _MACRO.sub(expand, template).strip()
    if dialect == "sqlite":
        text = _CAST.sub("", text)
    mark = "?" if dialect == "sqlite" else "$"
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"{mark}{names.index(match[1]) + 1}"

    return Rendered(_PARAMETER.sub(number, text), tuple(names))


@dataclass(eq=False, slots=True)
class Sql:
    """One statement, written once, rendered for each database it serves when defined.

    ``only`` marks a statement that exists for one database alone (a fast path the other
    cannot express); rendering it for the other is a bug. ``params``: the parameter order,
    for callers that pass tuples. ``rendered`` holds the renderings by dialect (``on``
    says which statement was misused when one is missing)."""

    template: str
    only: DialectName | None = None
    params: tuple[str, ...] | None = None
    rendered: dict[str, Rendered] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for dialect in _DIALECTS:
            if self.only in (None, dialect):
                rendered = self.rendered[dialect] = render(self.template, dialect)
                if self.params is not None and rendered.names != self.params:
                    raise ValueError(f"parameters {rendered.names}, declared {self.params}: "
                                     f"{self.first_line}")

    def on(self, dialect: DialectName) -> Rendered:
        try:
            return self.rendered[dialect]
        except KeyError:
            raise ValueError(f"a {self.only}-only statement used on {dialect}") from None

    @property
    def first_line(self) -> str:
        """For logs: enough to tell which statement failed."""
        return self.template.strip().splitlines()[0]


def id_list(dialect: DialectName, ids: list[str]) -> Any:
    """An id-list parameter (see ``{each}``): JSON text on SQLite, a list on PostgreSQL."""
    return orjson.dumps(ids).decode() if dialect == "sqlite" else ids
