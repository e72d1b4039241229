"""The layering the architecture promises: the core imports no engine and no web framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "conveyor"
FORBIDDEN_IN_CORE = ("fastapi", "starlette", "uvicorn", "httpx", "redis", "psycopg", "psycopg_pool", "aio_pika",
                     "prometheus_client", "rich", "conveyor.api", "conveyor.cli", "conveyor.worker",
                     "conveyor.backends.sqlite", "conveyor.backends.redis", "conveyor.backends.postgres",
                     "conveyor.backends.amqp")
ENGINE_CLIENTS = ("redis", "psycopg", "psycopg_pool", "aio_pika", "sqlite3")


#: Parsed as the tests are collected, before any test starts a thread: Python 3.11.7's ast.parse
#: fails ("AST constructor recursion depth mismatch") while another thread parses too, as
#: formatting a traceback does.
TREES = {path: ast.parse(path.read_text()) for path in SRC.rglob("*.py")}


def module_imports(path: Path, top_level_only: bool = True) -> set[str]:
    tree = TREES[path]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks are not imports at run time
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _hits(names: set[str], forbidden: tuple[str, ...]) -> set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


@pytest.mark.parametrize("path", sorted((SRC / "core").glob("*.py")), ids=lambda p: p.name)
def test_core__imports_no_engine_and_no_web_framework(path: Path) -> None:
    assert not _hits(module_imports(path, top_level_only=False), FORBIDDEN_IN_CORE)


def test_outside_the_engines__no_engine_client_is_imported() -> None:
    for path in SRC.rglob("*.py"):
        if (SRC / "backends") not in path.parents:
            assert not _hits(module_imports(path, top_level_only=False), ENGINE_CLIENTS), path


#: what each layer may not import: the ones above it (docs/architecture.md)
ABOVE = {
    "backends": ("conveyor.worker", "conveyor.scheduler", "conveyor.api", "conveyor.cli", "conveyor.client"),
    "worker": ("conveyor.api", "conveyor.cli", "conveyor.client"),
}


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_lower_layers__never_import_the_layers_above(package: str) -> None:
    for path in (SRC / package).rglob("*.py"):
        assert not _hits(module_imports(path, top_level_only=False), ABOVE[package]), path


def test_every_public_name__imports_from_the_package_as_the_type_checker_sees_it() -> None:
    """``import conveyor`` loads its names on first use; each is the object its module defines."""
    import importlib

    import conveyor

    tree = TREES[SRC / "__init__.py"]
    [checking] = [node for node in tree.body if isinstance(node, ast.If)]  # the TYPE_CHECKING imports
    declared = {alias.name: node.module for node in checking.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert sorted(declared) == sorted(conveyor.__all__)
    for name, module in declared.items():
        assert getattr(conveyor, name) is getattr(importlib.import_module(str(module)), name)
