"""The package's layers, as `roger`'s docstring states them, and no import cycles.

Imports are read from the source (top-level and function-level alike,
`TYPE_CHECKING` blocks too): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# Lowest first; the first prefix that matches a module names its layer.
LAYERS = [
    ("base", ("roger.errors", "roger.urls", "roger.settings", "roger.config", "roger.record",
              "roger.registry", "roger.message", "roger.callbacks", "roger.control",
              "roger.cron", "roger.due", "roger.metrics")),
    ("amqp", ("roger.amqp",)),
    ("partition", ("roger.partition",)),
    ("node", ("roger.node",)),
    ("api", ("roger.job", "roger.producer", "roger.info", "roger.admin", "roger.testing",
             "roger.pytest_plugin", "roger")),
    ("web", ("roger.web",)),
    ("cli", ("roger.cli", "roger.supervisor", "roger.__main__")),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "roger"):
            return index
    assert module == "roger", f"{module} is in no layer: add it to LAYERS and the docstring"
    return 4


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `name` imports, wherever in the file."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def graph(package: str) -> dict[str, set[str]]:
    found = modules(package)
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_roger_modules_import_only_their_own_layer_or_lower_ones():
    wrong = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for name, deps in graph("roger").items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(name)
    ]
    assert wrong == []


def test_no_import_cycles_in_roger_or_supervision():
    assert cycles(graph("roger")) == []
    assert cycles(graph("supervision")) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
