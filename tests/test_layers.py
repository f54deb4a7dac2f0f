"""The SDK's shape stays as docs/architecture.md draws it: no import cycles among the modules of
src/pgdurable (function-local imports count; TYPE_CHECKING-only ones do not), and small modules."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "pgdurable"


def _runtime_imports(path: Path) -> set[str]:
    """The pgdurable modules ``path`` imports when it runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        here = path.parent.relative_to(PACKAGE.parent).parts
        base = here[: len(here) - node.level + 1]
        if node.module:
            found.add(".".join((*base, *node.module.split("."))))
        else:
            found.update(".".join((*base, alias.name)) for alias in node.names)
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_no_module_imports_one_above_it() -> None:
    modules = _modules()
    graph = {name: _runtime_imports(path) & set(modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert graph["pgdurable._db"] <= {"pgdurable._errors", "pgdurable._queries"}, graph[
        "pgdurable._db"
    ]


def test_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) < 400, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
