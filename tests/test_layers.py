"""The package's layers only point down and no modules import each other in a circle.

Layers, lowest first (the README's Layout section): plain data (config, request, workloads) <- policy <- engine <-
migration / wire (the messages between processes) <- workers / scheduler <- client / sim <- cluster / serve / widgets <- cli / preload. A module may
import its own layer and the ones below it, never one above. Every import counts, inside functions and
under ``TYPE_CHECKING`` too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llumnix_dask"
LAYERS = {
    "config": 0, "sim_config": 0, "request": 0, "workloads": 0,
    "policy": 1,
    "engine": 2,
    "migration": 3, "wire": 3,
    "workers": 4, "scheduler": 4,
    "client": 5, "sim": 5,
    "cluster": 6, "cluster_start": 6, "cluster_views": 6, "serve": 6, "widgets": 6,
    "cli": 7, "preload": 7,
}


def module_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module name -> the llumnix_dask modules it imports (``a.b`` for ``from a import b`` when b is a module)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package.name):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in names)
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 99  # the package itself: its __init__ may import anything, nothing may import it
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: a new top-level module needs a layer in tests/test_layers.py")
    return LAYERS[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                  for a, bs in graph.items() for b in bs if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (a package importing its own modules is no cycle)."""
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(module_imports()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(module_imports()) == []


def test_the_checks_catch_what_they_are_for():
    graph = {"llumnix_dask.policy.x": {"llumnix_dask.serve.app"}, "llumnix_dask.serve.app": set(),
             "llumnix_dask.engine.a": {"llumnix_dask.engine.b"}, "llumnix_dask.engine.b": {"llumnix_dask.engine.a"}}
    assert upward_imports(graph) == ["llumnix_dask.policy.x (layer 1) imports llumnix_dask.serve.app (layer 6)"]
    assert cycles(graph) == [["llumnix_dask.engine.a", "llumnix_dask.engine.b"]]
