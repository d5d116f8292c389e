"""The package's floors: every import points down or sideways, never up, and no modules import each
other in a circle. The predictor stays light.

An import is any of: ``import a.b``, ``from a.b import c``, a relative ``from ..b import c`` (resolved
to its absolute name), ``from genre_lightning import Name`` (the package root, which is above every
floor), and ``importlib.import_module("genre_lightning.b")`` with a literal name; at the top of a
module or inside a function, ``TYPE_CHECKING`` blocks included. ``import_module`` (or ``__import__``)
with a computed name is a failure wherever ``COMPUTED_IMPORTS`` does not state why it may be there:
the check cannot tell where it points. The self-tests at the end run the same walk on a throw-away
package with every kind of upward import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import genre_lightning

PACKAGE = Path(genre_lightning.__file__).parent
# Lowest first. A module may import modules of its own floor or of the floors below it.
FLOORS = ["utils", "data", "models", "training", "inference", "results", "launch", "cli"]
# Above every floor (so free to import from any floor, and importable by none), and why.
TOP = {
    "": "the package root: its public names (Predictor, ...) re-export from the floors, loaded on first use",
    "_compat": "0.2's module paths, answered with the modules of every floor that now hold their code",
    "_legacy_model": "0.2's genre_lightning.model: training's GenreClassifier with inference's predict()",
}
# Modules that may import a computed module name, and why (both are in TOP: whatever they load is below).
COMPUTED_IMPORTS = {
    "": "__getattr__ imports the module of a public name (_EXPORTS) on first use",
    "_compat": "the finder imports the new path of an old one (MOVED)",
}


def module_name(path: Path, package: Path) -> str:
    parts = (package.name, *path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def local_name(module: str) -> str:
    """``genre_lightning.utils.errors`` -> ``utils.errors``; the root -> ``""``."""
    return module.partition(".")[2]


def floor(module: str) -> int:
    """The floor's index (``len(FLOORS)`` for TOP); a subpackage missing from the table is an error."""
    name = local_name(module)
    if name in TOP:
        return len(FLOORS)
    return FLOORS.index(name.split(".")[0])


def floor_name(module: str) -> str:
    return "top" if floor(module) == len(FLOORS) else FLOORS[floor(module)]


@dataclass
class ImportWalk:
    """A package's imports: importer -> {imported module: first line}, and computed-name imports."""

    modules: dict[str, Path]
    graph: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    computed: list[str] = field(default_factory=list)  # "module:line"

    def add(self, importer: str, dotted: str, line: int) -> None:
        """``dotted`` names a module of ours, or a name in one: the longest prefix that is a module."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.modules:
                if candidate != importer:
                    self.graph[importer].setdefault(candidate, line)
                return


def absolute(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of a relative import ``from <level dots><module> import ...`` in ``importer``."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > len(base):
        raise AssertionError(f"{importer}: a relative import goes above the package")
    base = base[: len(base) - level + 1]
    return ".".join([*base, module] if module else base)


def loader_names(tree: ast.AST) -> set[str]:
    """The names a module calls ``importlib.import_module`` by (``from importlib import import_module as
    load``), and ``__import__``."""
    names = {"__import__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "importlib":
            names |= {alias.asname or alias.name for alias in node.names if alias.name == "import_module"}
    return names


def is_import_call(node: ast.AST, loaders: set[str]) -> bool:
    """``<anything>.import_module(...)`` (``importlib``, under any name) or a call of one of ``loaders``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in loaders
    )


def walk_package(package: Path) -> ImportWalk:
    """Every import of every module of ``package`` (a folder; its name is the package's)."""
    paths = {module_name(p, package): p for p in package.rglob("*.py") if "conf" not in p.relative_to(package).parts}
    walk = ImportWalk(paths)
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        walk.graph.setdefault(name, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        loaders = loader_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    walk.add(name, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = absolute(name, is_package, node.level, node.module) if node.level else node.module
                for alias in node.names:  # "from p import m" imports module p.m; "from m import x" module m
                    walk.add(name, f"{base}.{alias.name}", node.lineno)
            elif is_import_call(node, loaders):
                target = node.args[0] if node.args else None
                if isinstance(target, ast.Constant) and isinstance(target.value, str):
                    dots = len(target.value) - len(target.value.lstrip("."))
                    rest = target.value[dots:] or None
                    walk.add(name, absolute(name, is_package, dots, rest) if dots else target.value, node.lineno)
                else:
                    walk.computed.append(f"{name}:{node.lineno}")
    return walk


def upward_imports(walk: ImportWalk) -> list[str]:
    return sorted(
        f"{importer}:{line} (floor {floor_name(importer)}) imports {imported} (floor {floor_name(imported)})"
        for importer, imported_modules in walk.graph.items()
        for imported, line in imported_modules.items()
        if floor(imported) > floor(importer)
    )


def unexplained_computed_imports(walk: ImportWalk) -> list[str]:
    return [where for where in walk.computed if local_name(where.split(":")[0]) not in COMPUTED_IMPORTS]


def cycles_of(walk: ImportWalk) -> list[list[str]]:
    # Parent packages are imported with their modules: an __init__ that imports a child is not a cycle.
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in walk.graph.items()}
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
    return cycles


def test_every_import_points_down_or_sideways():
    walk = walk_package(PACKAGE)
    assert len(walk.graph) > 40  # the walk found the package
    assert upward_imports(walk) == []


def test_no_module_imports_a_computed_name_without_a_stated_reason():
    walk = walk_package(PACKAGE)
    assert unexplained_computed_imports(walk) == []
    # the stated exemptions are real: those modules do import computed names
    assert {local_name(where.split(":")[0]) for where in walk.computed} == set(COMPUTED_IMPORTS)


def test_no_modules_import_each_other_in_a_circle():
    assert cycles_of(walk_package(PACKAGE)) == []


def test_inference_needs_nothing_of_training():
    """The predictor's floor reads checkpoints and decides with models/ alone (checkpoint_io,
    prediction_task); training's half of the task objects builds on those."""
    walk = walk_package(PACKAGE)
    uses = sorted(
        f"{importer} imports {imported}"
        for importer, imported_modules in walk.graph.items()
        for imported in imported_modules
        if local_name(importer).startswith("inference") and local_name(imported).startswith("training")
    )
    assert uses == []


def test_the_predictor_imports_no_cli_and_no_training_library():
    code = "import json, sys, genre_lightning.inference; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    # torchmetrics and scipy: the metrics and the temperature fit of training
    for heavy in ("hydra", "rich", "lightning", "omegaconf", "torchmetrics", "scipy"):
        assert heavy not in {name.split(".")[0] for name in loaded}, heavy
    assert [name for name in loaded if name.startswith(("genre_lightning.training", "genre_lightning.cli"))] == []


# The self-tests: a throw-away package with the same floors, parsed (never imported).
UPWARD = {
    "utils/lazy_absolute.py": "def train():\n    from genre_lightning.cli.train import main\n",
    "utils/relative.py": "from ..inference import predictor\n",
    "utils/relative_root.py": "from .. import Predictor\n",
    "utils/via_root.py": "from genre_lightning import Predictor\n",
    "utils/via_importlib.py": "import importlib\n\nimportlib.import_module('genre_lightning.training.module')\n",
    "data/via_relative_importlib.py": (
        "from importlib import import_module as load\n\nload('..training.module', __package__)\n"
    ),
    "models/typing_only.py": "if TYPE_CHECKING:\n    import genre_lightning.cli.train\n",
}
DOWNWARD = (  # inference/predictor.py: one legal import of each kind
    "import importlib\n"
    "from genre_lightning.models.network import build\n"
    "from ..utils import errors\n"
    "from . import batch\n"
    "from .batch import predict_files\n"
    "import genre_lightning.data.scan\n"
    "def load():\n"
    "    return importlib.import_module('genre_lightning.training.module')\n"
)
THROWAWAY = {
    "__init__.py": "from genre_lightning.inference.predictor import Predictor\n",  # the root may re-export
    **{f"{floor}/__init__.py": "" for floor in FLOORS},
    "utils/errors.py": "",
    "data/scan.py": "",
    "data/computed.py": "import importlib\n\n\ndef load(name):\n    return importlib.import_module(name)\n",
    "models/network.py": "",
    "training/module.py": "",
    "inference/predictor.py": DOWNWARD,
    "inference/batch.py": "",
    "cli/train.py": "",
    **UPWARD,
}


def throwaway_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "genre_lightning"
    for relative, text in files.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    return package


def test_the_check_catches_every_kind_of_upward_import(tmp_path: Path):
    walk = walk_package(throwaway_package(tmp_path, THROWAWAY))
    found = {line.split(":")[0]: line.split(" imports ")[1].split(" ")[0] for line in upward_imports(walk)}
    assert found == {
        "genre_lightning.utils.lazy_absolute": "genre_lightning.cli.train",
        "genre_lightning.utils.relative": "genre_lightning.inference.predictor",
        "genre_lightning.utils.relative_root": "genre_lightning",
        "genre_lightning.utils.via_root": "genre_lightning",
        "genre_lightning.utils.via_importlib": "genre_lightning.training.module",
        "genre_lightning.data.via_relative_importlib": "genre_lightning.training.module",
        "genre_lightning.models.typing_only": "genre_lightning.cli.train",
    }
    assert len(found) == len(UPWARD)
    assert unexplained_computed_imports(walk) == ["genre_lightning.data.computed:5"]


def test_the_check_passes_a_legal_downward_import_of_each_kind(tmp_path: Path):
    walk = walk_package(throwaway_package(tmp_path, THROWAWAY))
    # it saw every one of them (a pass is not blindness) ...
    assert walk.graph["genre_lightning.inference.predictor"] == {
        "genre_lightning.models.network": 2,
        "genre_lightning.utils.errors": 3,
        "genre_lightning.inference.batch": 4,
        "genre_lightning.data.scan": 6,
        "genre_lightning.training.module": 8,
    }
    # ... and none is upward; nor is the root's re-export of a lower floor
    legal = ("genre_lightning:", "genre_lightning.inference.predictor:")
    assert [line for line in upward_imports(walk) if line.startswith(legal)] == []
    assert "genre_lightning.inference.predictor" in walk.graph["genre_lightning"]


def test_the_check_finds_a_circle(tmp_path: Path):
    files = {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from . import b\n",
        "data/b.py": "def f():\n    from genre_lightning.data import a\n",
    }
    cycles = cycles_of(walk_package(throwaway_package(tmp_path, files)))
    assert cycles == [["genre_lightning.data.a", "genre_lightning.data.b", "genre_lightning.data.a"]]
