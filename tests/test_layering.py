"""The package layering: app -> benchmarks -> erase -> pipelines, imports at the top of modules only.

Parsed from source (``ast``), so the rule holds for code paths no test executes. Lazy imports of
heavy third-party packages inside functions are fine; a project import inside a function body is
not, because it hides a dependency (and any cycle) from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "benchmarks", "erase", "pipelines")
MAY_IMPORT = {  # package -> project packages it may import from
    "app": {"app", "benchmarks", "erase", "pipelines"},
    "benchmarks": {"benchmarks", "erase", "pipelines"},
    "erase": {"erase", "pipelines"},
    "pipelines": {"pipelines"},
    "pipelines.recipes": {"pipelines", "erase"},  # recipes rebuild shipped weights from erase.data
}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node, node.module))
    return out


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return "pipelines.recipes" if rel[:2] == ("pipelines", "recipes") else rel[0]


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of import nodes that are module-level (directly, or under a module-level if/try)."""
    ids: set[int] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            ids.add(id(node))
        elif isinstance(node, (ast.If, ast.Try)):
            stack += node.body + node.orelse + getattr(node, "finalbody", [])
            for handler in getattr(node, "handlers", []):
                stack += handler.body
    return ids


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_downward_and_sit_at_the_top(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    layer, top = _layer(path), _top_level_nodes(tree)
    for node, name in _imports(tree):
        package = name.split(".")[0]
        if package not in PACKAGES:
            continue
        assert package in MAY_IMPORT[layer], \
            f"{path.relative_to(ROOT)}:{node.lineno} ({layer}) imports {name}: packages import downward only"
        assert id(node) in top, \
            f"{path.relative_to(ROOT)}:{node.lineno} imports {name} inside a function: put it at the top"


def test_the_rule_catches_an_upward_and_a_hidden_import(tmp_path):
    """The checker itself: an upward import and an import inside a function are both found."""
    tree = ast.parse("import os\nfrom benchmarks.x import y\ndef f():\n    from erase import z\n")
    names = [name for _, name in _imports(tree)]
    top = _top_level_nodes(tree)
    assert names == ["os", "benchmarks.x", "erase"]
    assert [id(n) in top for n, _ in _imports(tree)] == [True, True, False]
    assert "benchmarks" not in MAY_IMPORT["erase"] and MAY_IMPORT["pipelines"] == {"pipelines"}
