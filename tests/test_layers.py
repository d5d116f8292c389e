"""The package's floors: every import (lazy ones inside functions included) points down or sideways,
never up, and no modules import each other in a circle. The predictor stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import genre_lightning

PACKAGE = Path(genre_lightning.__file__).parent
# Lowest first. A module may import modules of its own floor or of the floors below it.
FLOORS = ["utils", "data", "models", "training", "inference", "results", "launch", "cli"]
# Above every floor: the package's own __init__ (lazy names), and the old import paths of 0.2.
TOP = {"genre_lightning", "genre_lightning._compat", "genre_lightning._legacy_model"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    if module in TOP:
        return len(FLOORS)
    return FLOORS.index(module.split(".")[1])


def package_imports() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports, anywhere in its code."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from package import module" imports that module; "from module import name" the module
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                # the longest prefix that is a module of ours
                parts = target.split(".")
                for end in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:end])
                    if candidate in modules and candidate != name:
                        graph[name].add(candidate)
                        break
        graph.setdefault(name, set())
    return graph


def test_every_import_points_down_or_sideways():
    graph = package_imports()
    assert len(graph) > 40  # the walk found the package
    upward = sorted(
        f"{importer} (floor {floor(importer)}) imports {imported} (floor {floor(imported)})"
        for importer, imported_modules in graph.items()
        for imported in imported_modules
        if imported != "genre_lightning" and floor(imported) > floor(importer)
    )
    assert upward == []


def test_no_modules_import_each_other_in_a_circle():
    graph = package_imports()
    # Parent packages are imported with their modules: an __init__ that imports a child is not a cycle.
    edges = {
        m: {t for t in targets if not m.startswith(t + ".") and t != "genre_lightning"} for m, targets in graph.items()
    }
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_walk_sees_lazy_imports_and_flags_an_upward_one(tmp_path: Path):
    """The check itself: an import inside a function, pointing up, is found."""
    source = "def f():\n    from genre_lightning.cli.train import train\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert node.module == "genre_lightning.cli.train" and floor(node.module) > floor("genre_lightning.data.scan")


def test_the_predictor_imports_no_cli_and_no_training_library():
    code = "import sys, genre_lightning.inference; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # torchmetrics and scipy: the metrics and the temperature fit of training, built only when it validates
    for heavy in ("hydra", "rich", "lightning", "omegaconf", "torchmetrics", "scipy"):
        assert f"'{heavy}'" not in loaded, heavy
