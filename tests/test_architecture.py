"""The one-way import rule of ``docs/architecture.md``, read from the source with ``ast`` (lazy imports
inside functions count too), no import circle between modules (of the package, and of ``benchmarks/``), and
no module of the package over :data:`MAX_LINES` lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layer of each module prefix (the longest matching prefix wins)
LAYERS = {
    "sau_compress": "base",
    "sau_compress._registration": "base",
    "sau_compress.errors": "base",
    "sau_compress.io": "base",
    "sau_compress.logs": "base",
    "sau_compress.saliency": "core",
    "sau_compress.masking": "core",
    "sau_compress.selection": "core",
    "sau_compress.optim": "core",
    "sau_compress.losses": "core",
    "sau_compress.memory": "core",
    "sau_compress.schedule": "core",
    "sau_compress.shards": "core",
    "sau_compress.data": "data",
    "sau_compress.unlearn": "loop",
    "sau_compress.evaluation": "evaluation",
    "sau_compress.export": "export",
    "sau_compress.audit": "audit",
    "sau_compress.offload": "modifier",
    "sau_compress.magnitude": "modifier",
    "sau_compress.modifier": "modifier",
    "sau_compress.worlds": "worlds",
    "sau_compress.models": "models",
    "sau_compress.pipeline": "pipeline",
    "sau_compress.cli": "cli",
}
#: what each layer may import (besides itself)
ALLOWED = {
    "base": set(),
    "core": {"base"},
    "data": {"base", "core"},
    "loop": {"base", "core", "data"},
    "evaluation": {"base", "core", "data"},
    "export": {"base", "core", "data"},
    "audit": {"base", "core", "data", "evaluation"},
    "modifier": {"base", "core", "data", "loop", "export"},
    "worlds": {"base", "core", "data", "evaluation"},
    "models": {"base", "worlds"},
    "pipeline": {"base", "core", "data", "loop", "evaluation", "export", "audit", "modifier", "worlds", "models"},
    "cli": {"pipeline"},
}
#: the only modules of lower layers the CLI may name: the version, the error types and the log levels
CLI_EXTRA = {"sau_compress", "sau_compress.errors", "sau_compress.logs"}
#: the most lines a file of the package may have (``wc -l``)
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "sau_compress").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "cli").glob("*.py")):
        stem = path.stem
        out["sau_compress.cli" if stem == "__init__" else f"sau_compress.cli.{stem}"] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _imports(path: Path) -> set[str]:
    """Every ``sau_compress`` module a file imports, resolved to modules where the name is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "sau_compress" or n.startswith("sau_compress."))
    return found


def test_every_module_has_a_layer():
    assert "sau_compress.unlearn.driver" in MODULES and "sau_compress.data.prompts" in MODULES
    assert "sau_compress.cli.run_cmd" in MODULES
    for module in MODULES:
        assert _layer(module) in ALLOWED, module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layer_rule(module):
    layer = _layer(module)
    bad = []
    for target in sorted(_imports(MODULES[module])):
        other = _layer(target)
        if other == layer or other in ALLOWED[layer] or (layer == "cli" and target in CLI_EXTRA):
            continue
        bad.append(f"{target} ({other})")
    assert not bad, f"{module} ({layer}) imports against docs/architecture.md: {bad}"


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import circle of ``graph`` (``[a, b, ..., a]``), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_circle_finder():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": set(), "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_circle():
    graph = {m: {t for t in _imports(p) if t in MODULES and t != "sau_compress" and t != m} for m, p in MODULES.items()}
    cycle = _circle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _benchmark_graph() -> dict[str, set[str]]:
    """Which ``benchmarks/*.py`` scripts each one imports (they import each other by file name, as top-level
    modules; imports inside functions count too)."""
    paths = {p.stem: p for p in sorted((ROOT / "benchmarks").glob("*.py"))}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
        graph[name] = (found & set(paths)) - {name}
    return graph


def test_no_import_circle_in_benchmarks():
    graph = _benchmark_graph()
    assert {"headline", "headline_core", "headline_report", "budget_sweep"} <= set(graph)
    assert "headline_report" in graph["budget_sweep"]  # the graph sees the scripts' imports, lazy ones included
    assert "budget_sweep" in graph["headline"]
    cycle = _circle(graph)
    assert cycle is None, "import circle in benchmarks/: " + " -> ".join(cycle or [])


def test_no_module_over_the_line_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in sorted((ROOT / "sau_compress").rglob("*.py"))}
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert len(sizes) > 50 and not over, f"files over {MAX_LINES} lines (split them by job): {over}"


def test_llmcompressor_only_in_the_modifier_and_pipeline_layers():
    # _registration names llmcompressor only as a string (an import hook), never imports it
    below = [m for m in MODULES if _layer(m) not in ("modifier", "pipeline", "cli")]
    offenders = []
    for module in below:
        for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] == "llmcompressor"]
    assert len(below) > 20 and not offenders, offenders
