"""The SQL of the stores is written once: in store/statements.py, rendered for each
database by store/dialect.py. These checks keep it so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import respond.store
from respond.store import statements
from respond.store.dialect import Sql, render

STORE = Path(respond.store.__file__).resolve().parent
SQL_WORDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK",
             "CREATE TABLE", "CREATE INDEX")
STATEMENT_STARTS = tuple(word + " " for word in SQL_WORDS)  # as SQL is written: upper case


def all_statements() -> dict[str, Sql]:
    found = {}
    for name, value in vars(statements).items():
        if isinstance(value, Sql):
            found[name] = value
        elif isinstance(value, dict):
            found.update({f"{name}[{key}]": sql for key, sql in value.items()
                          if isinstance(sql, Sql)})
    return found


@pytest.mark.parametrize("path", sorted(p for p in STORE.glob("*.py")
                                        if p.name not in ("statements.py", "dialect.py")),
                         ids=lambda p: p.name)
def test_no_sql_outside_the_statements_module(path: Path) -> None:
    """Connection settings (SQLite's PRAGMAs) are no statements of the store's."""
    strings = [node.value for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    sql = [text for text in strings
           if text.strip() in SQL_WORDS or text.lstrip().startswith(STATEMENT_STARTS)]
    assert sql == [], f"{path.name} writes SQL of its own: {sql}"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_each_statement_is_written_once(dialect: str) -> None:
    texts: dict[str, str] = {}
    for name, sql in all_statements().items():
        if sql.only in (None, dialect):
            text = " ".join(sql.on(dialect).text.split())  # type: ignore[arg-type]
            assert text not in texts, f"{name} repeats {texts[text]}"
            texts[text] = name
    assert len(texts) > 40


def test_parameters_are_numbered_by_first_use_in_both_dialects() -> None:
    template = "SELECT x FROM t WHERE a = :a AND b = :b::text AND c = :a"
    sqlite, postgresql = render(template, "sqlite"), render(template, "postgresql")
    assert sqlite.text == "SELECT x FROM t WHERE a = ?1 AND b = ?2 AND c = ?1"
    assert postgresql.text == "SELECT x FROM t WHERE a = $1 AND b = $2::text AND c = $1"
    assert sqlite.names == postgresql.names == ("a", "b")
    assert sqlite.args({"b": 2, "a": 1, "unused": 3}) == (1, 2)
    assert sqlite.args((1, 2)) == (1, 2)


def test_macros_render_per_dialect() -> None:
    template = ("SELECT {concat:i.data ORDER BY j.key}, {field:r.body|status}, {empty_ids} "
                "FROM {each::ids AS j} CROSS JOIN items AS i WHERE i.id = j.value")
    sqlite = render(template, "sqlite").text
    postgresql = render(template, "postgresql").text
    assert "json_each(?1) AS j" in sqlite and "group_concat(i.data, ',')" in sqlite
    assert "json_extract(r.body, '$.status')" in sqlite and "'[]'" in sqlite
    assert "unnest($1::text[]) WITH ORDINALITY AS j (value, key)" in postgresql
    assert "string_agg((i.data)::text, ',' ORDER BY j.key)" in postgresql
    assert "(r.body->>'status')" in postgresql and "'{}'" in postgresql
    with pytest.raises(ValueError, match="unknown SQL macro"):
        render("SELECT {nope}", "sqlite")


def test_a_statement_of_one_database_refuses_the_other() -> None:
    with pytest.raises(ValueError):
        statements.PG_SAVE.on("sqlite")
    with pytest.raises(ValueError):
        statements.INSERT_ITEM.on("postgresql")
    with pytest.raises(ValueError, match="declared"):
        Sql("SELECT :a, :b", params=("b", "a"))
