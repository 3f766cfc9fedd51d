"""The package's shape, read with ``ast`` from the source (nothing imported): no import cycles, no library
module importing a CLI module, no function longer than the house limit. Each test lists every offender."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "ascan"
MAX_FUNCTION_LINES = 80
TOP_LEVEL_CLI = f"{PACKAGE}.cli"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    local: bool  # inside a function body (a deferred import: still a dependency)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse_package() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), filename=str(p)))
            for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_package(name: str, modules: dict) -> bool:
    path = modules[name][0]
    return path.name == "__init__.py"


def _resolve(node: ast.ImportFrom, current: str, modules: dict) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    if not _is_package(current, modules):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.stmt, current: str, modules: dict) -> list[str]:
    """The ascan modules an import statement loads (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _resolve(node, current, modules)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [n for n in names if n in modules and n != current]


def import_edges(modules: dict) -> list[Edge]:
    edges = []
    for name, (_, tree) in modules.items():
        function_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                          for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, name, modules):
                    edges.append(Edge(name, target, node.lineno, node.lineno in function_lines))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in components if len(c) > 1]


def is_cli_module(name: str, tree: ast.Module) -> bool:
    """``ascan.cli``, a ``__main__``, or any module defining a top-level ``main`` function."""
    if name == TOP_LEVEL_CLI or name.endswith("__main__"):
        return True
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def long_functions(modules: dict) -> list[str]:
    offenders = []
    for _, (path, tree) in modules.items():
        for node, qualname in _functions(tree.body, ""):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                offenders.append(f"{path.relative_to(SRC.parent)}:{node.lineno}:{qualname} ({length} lines)")
    return offenders


def _functions(body: list[ast.stmt], prefix: str):
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, f"{prefix}{node.name}"
            yield from _functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


# ---- The checks ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules():
    return parse_package()


def test_the_checker_sees_the_package(modules):
    """Guards against a checker that passes because it found nothing."""
    assert {"ascan", "ascan.cli", "ascan.engine", "ascan.engine.loop", "ascan.classify.train"} <= set(modules)
    assert any(e.source == "ascan.classify.train" and e.target == "ascan.engine" for e in import_edges(modules))
    assert is_cli_module("ascan.classify.cli", modules["ascan.classify.cli"][1])
    assert not is_cli_module("ascan.engine.loop", modules["ascan.engine.loop"][1])


def test_the_checker_finds_deferred_cycles_and_long_functions():
    """A function-local import closing a cycle (relative on one side) and an 81-line function are caught."""
    long_body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    b_source = f"from . import a\n\nclass K:\n    def g(self):\n{long_body}\n"
    fake = {"ascan": (SRC / "ascan" / "__init__.py", ast.parse("")),
            "ascan.a": (SRC / "ascan" / "a.py", ast.parse("def f():\n    from ascan import b\n")),
            "ascan.b": (SRC / "ascan" / "b.py", ast.parse(b_source))}
    edges = import_edges(fake)
    assert Edge("ascan.a", "ascan.b", 2, True) in edges and Edge("ascan.b", "ascan.a", 1, False) in edges
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert long_functions(fake) == ["src/ascan/b.py:4:K.g (81 lines)"]


def test_no_import_cycles(modules):
    edges = import_edges(modules)
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    report = []
    for component in strongly_connected(graph):
        inside = [e for e in edges if e.source in component and e.target in component]
        report.append(" <-> ".join(component) + ": " + "; ".join(
            f"{modules[e.source][0].relative_to(SRC.parent)}:{e.line} imports {e.target}"
            + (" (function-local)" if e.local else "") for e in inside))
    assert not report, "import cycles:\n" + "\n".join(report)


def test_library_modules_do_not_import_cli_modules(modules):
    cli = {name for name, (_, tree) in modules.items() if is_cli_module(name, tree)}
    offenders = [f"{modules[e.source][0].relative_to(SRC.parent)}:{e.line} ({e.source}) imports CLI module {e.target}"
                 for e in import_edges(modules) if e.source not in cli and e.target in cli]
    assert not offenders, "library modules importing CLI modules:\n" + "\n".join(offenders)


def test_no_function_is_longer_than_the_limit(modules):
    offenders = long_functions(modules)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)
