"""The package's shape: no import cycles, private modules behind one public surface."""

from __future__ import annotations

import ast
from pathlib import Path

import tokenstore

PACKAGE = Path(tokenstore.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every tokenstore module a file imports, TYPE_CHECKING and function-level imports included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    return {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_no_module_imports_itself_back() -> None:
    """No cycles, the package itself included: the public surface imports the core, so a
    core module importing ``tokenstore`` closes a cycle; ``tokenstore.admin``, which
    nothing imports, may use the public surface like any application."""
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                hint = " (import a module, not the package)" if nxt == "tokenstore" else ""
                raise AssertionError("import cycle: " + " -> ".join(cycle) + hint)
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_every_module_but_the_public_ones_is_private() -> None:
    public = {"tokenstore", "tokenstore.signals", "tokenstore.admin"}
    for name in MODULES:
        leaf = name.rpartition(".")[2]
        assert name in public or leaf.startswith("_") or name.startswith("tokenstore.admin"), name


def test_the_public_surface_is_explicit() -> None:
    assert sorted(tokenstore.__all__) == sorted(set(tokenstore.__all__))
    for name in tokenstore.__all__:
        assert hasattr(tokenstore, name), name


def test_no_module_is_much_over_500_lines() -> None:
    lengths = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: c for n, c in lengths.items() if c > 600} == {}
