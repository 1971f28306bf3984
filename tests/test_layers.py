"""The layer direction of DESIGN.md, checked on the source: every ``import`` of every module
under ``src/respond`` (top level, inside functions, under ``TYPE_CHECKING`` alike).

    http/, cli, app  ->  engine/, jobs  ->  backends/, tools/, store/, web/  ->  protocol/,
                                                                  domain, errors, ids, settings

The engine sees an adapter only through its protocol: it may import an adapter package
(``respond.store``), never one of its modules (``respond.store.sqlite``); ``create_app``
picks the implementations.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import respond

PACKAGE = Path(respond.__file__).resolve().parent

# layer of a module: the first component of its name inside ``respond``
FOUNDATION = {"protocol", "domain", "errors", "ids", "settings", "network", "sealing"}
ADAPTERS = {"backends", "store", "tools", "web"}
ENGINE = {"engine", "jobs"}
TOP = {"http", "app", "cli", "__main__"}

FORBIDDEN: dict[frozenset[str], set[str]] = {
    frozenset(FOUNDATION): ENGINE | ADAPTERS | TOP,
    frozenset(ADAPTERS): ENGINE | TOP,
    # the engine does no network I/O: web/ fetches URLs, tools/ reaches MCP servers
    frozenset(ENGINE): TOP | {"network"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["respond", *parts])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the ``respond`` modules (or names in them) that ``path`` imports."""
    return imports_in(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def imports_in(source: str, own: str, *, is_package: bool = False) -> set[str]:
    tree = ast.parse(source)
    package = own if is_package else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "respond" or name.startswith("respond.")}


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def is_module(name: str) -> bool:
    """Whether ``name`` ("respond.store.sqlite") is a module or package of ours, rather than
    a name defined in one ("respond.store.Store")."""
    path = PACKAGE.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def behind_protocol(name: str) -> bool:
    """Whether ``name`` lies inside an adapter package, below its protocol (``__init__``)."""
    parts = name.split(".")
    return layer_of(name) in ADAPTERS and len(parts) > 2 and is_module(".".join(parts[:3]))


def violations(own: str, imported: set[str]) -> list[str]:
    own_layer = layer_of(own)
    forbidden = next((bad for layers, bad in FORBIDDEN.items() if own_layer in layers), set())
    return sorted(name for name in imported if layer_of(name) in forbidden
                  or (own_layer in ENGINE and behind_protocol(name)))


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts)


def test_the_walk_sees_the_package() -> None:
    names = {module_name(p) for p in sources()}
    assert {"respond.app", "respond.engine.service", "respond.http.routes",
            "respond.protocol.request", "respond.store.sqlite"} <= names
    # relative and function-level imports are resolved too
    assert "respond.engine.service" in imported_modules(PACKAGE / "http" / "routes.py")
    assert "respond.store.open" in imported_modules(PACKAGE / "app.py")


def test_the_checker_catches_a_wrong_import() -> None:
    source = """
from typing import TYPE_CHECKING
from . import request
def late():
    from ..engine.service import ResponsesService
if TYPE_CHECKING:
    import respond.http.routes
"""
    found = imports_in(source, "respond.protocol.fake")
    assert violations("respond.protocol.fake", found) == [
        "respond.engine.service", "respond.engine.service.ResponsesService",
        "respond.http.routes"]
    assert violations("respond.http.fake", found) == []
    assert violations("respond.store.fake", imports_in("from respond.app import create_app",
                                                       "respond.store.fake")) == [
        "respond.app", "respond.app.create_app"]


def test_the_engine_sees_adapters_only_through_their_protocols() -> None:
    source = """
from respond.store import Store
from respond.web import Fetcher
from respond.web.fetcher import HttpFetcher
import respond.store.sqlite
"""
    found = imports_in(source, "respond.engine.fake")
    assert violations("respond.engine.fake", found) == [
        "respond.store.sqlite", "respond.web.fetcher", "respond.web.fetcher.HttpFetcher"]
    assert violations("respond.app", found) == []
    assert violations("respond.engine.fake", imports_in(
        "from respond.network import EgressPolicy", "respond.engine.fake")) == [
        "respond.network", "respond.network.EgressPolicy"]


@pytest.mark.parametrize("path", sources(), ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    own = module_name(path)
    wrong = violations(own, imported_modules(path))
    assert not wrong, f"{own} ({layer_of(own)}) must not import {wrong}"
