"""The import graph of sslbench, from the AST, counting imports inside functions: no cycle, every edge points to
the same or a lower layer (ARCHITECTURE.md's L0-L7), and the couplings the architecture forbids are absent.

`pytest tests/test_layers.py -q` is the command that shows the graph is acyclic; a failure names the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sslbench"

# Layer of each module (the longest matching prefix wins); a module may import only from its layer or below.
LAYERS = {
    "sslbench": 0, "sslbench.errors": 0, "sslbench.runtime": 0, "sslbench.progress": 0, "sslbench.runlog": 0,
    "sslbench.results": 0, "sslbench.metrics": 0, "sslbench.svm": 0,
    "sslbench.registry": 1, "sslbench.transforms": 1, "sslbench.config": 1,
    "sslbench.backbones": 2, "sslbench.data": 2,
    "sslbench.tasks": 3, "sslbench.training": 3, "sslbench.runs": 3,
    "sslbench.checkpoint": 4, "sslbench.rescale": 4, "sslbench.engine": 4, "sslbench.figures": 4,
    "sslbench.protocols": 5,
    "sslbench.plugins": 6, "sslbench.recipes": 6, "sslbench.tables": 6,
    "sslbench.planned": 7, "sslbench.dryrun": 7, "sslbench.reproduce": 7, "sslbench.report": 7, "sslbench.show": 7, "sslbench.cli": 7,
    "sslbench.doctor": 7, "sslbench.page": 7, "sslbench.export": 7, "sslbench.released": 7, "sslbench.launch": 7,
}
FORBIDDEN = [  # (importer prefix, imported prefix, why)
    ("sslbench.protocols", "sslbench.tasks", "protocols must not depend on pretext tasks"),
    ("sslbench.protocols", "sslbench.engine", "protocols train on sslbench.training, not the pretraining engine"),
    ("sslbench.protocols", "sslbench.data.synthetic", "protocols must not depend on the procedural generator"),
    ("sslbench.tasks", "sslbench.recipes", "tasks must not load recipes"),
    ("sslbench.tasks", "sslbench.data.build", "tasks must not build data sets"),
    ("sslbench.checkpoint", "sslbench.tasks", "loading a trunk must not import task classes"),
    ("sslbench.registry", "sslbench.", "the registry is a leaf"),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def edges() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(edges()) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_points_to_the_same_or_a_lower_layer() -> None:
    upward = [f"{a} (L{layer(a)}) -> {b} (L{layer(b)})" for a, targets in edges().items() for b in targets
              if layer(b) > layer(a)]
    assert upward == []


@pytest.mark.parametrize("importer,imported,why", FORBIDDEN)
def test_forbidden_couplings_are_absent(importer: str, imported: str, why: str) -> None:
    bad = [f"{a} -> {b}" for a, targets in edges().items() if a.startswith(importer) for b in targets
           if b.startswith(imported) and b != "sslbench.errors"]
    assert bad == [], why
