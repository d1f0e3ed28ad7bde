"""Imports point down: the module graph of `recipe/`, read from the source, has no cycle and no import from a lower
floor to a higher one (docs/architecture.md explains the floors).

The graph holds every `import` of a `recipe` module, those inside functions included: an import hidden in a function
still runs, and hiding one is how a cycle used to be dodged. Left out: imports under `if TYPE_CHECKING:` (they name a
type for annotations and never run) and imports of other packages (a lazy `import optuna` defers a heavy dependency).
"""

from __future__ import annotations

import ast
import fnmatch
import inspect
from pathlib import Path

import pytest

from recipe.rundir import STAGE_ORDER
from recipe.stage import StageSettings
from recipe.stages import STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "recipe"

FLOORS: list[tuple[str, list[str]]] = [  # bottom to top; a module may import from its own floor and those below
    ("foundation", ["recipe", "recipe.errors", "recipe.stopping", "recipe.reproducibility",
                    "recipe.optim", "recipe.distributed", "recipe.plot_style", "recipe.plots", "recipe.error_plots",
                    "recipe.console"]),
    ("records", ["recipe.check", "recipe.config", "recipe.arrays", "recipe.data", "recipe.joined", "recipe.rundir"]),
    ("task", ["recipe.task", "recipe.task_arguments", "recipe.validation", "recipe.evaluation", "recipe.models",
              "recipe.output_bias", "recipe.threads", "recipe.fast_paths", "recipe.loading"]),
    ("fit", ["recipe.step", "recipe.loss_log", "recipe.checkpoint", "recipe.checkpointer", "recipe.loop",
             "recipe.batch_size", "recipe.resume", "recipe.transfer", "recipe.distillation"]),
    ("diagnostics", ["recipe.diagnostics", "recipe.diagnostics.*"]),
    ("stage", ["recipe.context", "recipe.stage", "recipe.model_io", "recipe.search_space", "recipe.study_storage",
               "recipe.tuning", "recipe.tune_workers", "recipe.playbook"]),
    ("stages", ["recipe.stages", "recipe.stages.*"]),
    ("run", ["recipe.loggers", "recipe.report", "recipe.runner", "recipe.reference"]),
    ("command", ["recipe.cli"]),
]  # fmt: skip

Edge = tuple[str, str, int]  # importer, imported, line


def package_sources(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package by dotted name (a package by its own name), with its source."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text()
    return sources


def import_edges(sources: dict[str, str]) -> list[Edge]:
    """(importer, imported module, line) for every import of one of `sources`' modules that runs (see the top)."""
    edges: list[Edge] = []
    for name, source in sources.items():
        tree = ast.parse(source)
        is_package = any(other.startswith(name + ".") for other in sources)
        package = name if is_package else name.rpartition(".")[0]
        for node in _running_imports(tree):
            for target in _targets(node, package, sources):
                if target != name and not name.startswith(target + "."):  # its own packages ran before it
                    edges.append((name, target, node.lineno))
    return edges


def _running_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those inside an `if TYPE_CHECKING:` block."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(node: ast.Import | ast.ImportFrom, package: str, sources: dict[str, str]) -> set[str]:
    """The package modules an import statement runs: the module named, each submodule imported by name from it,
    and the packages above them (their `__init__` runs first), except the top-level package itself."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        if name in sources:
            found.add(name)
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return found


def floor_of(module: str) -> int | None:
    """The index of the floor whose patterns match `module`, or None."""
    for index, (_, patterns) in enumerate(FLOORS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    return None


def upward(edges: list[Edge]) -> list[str]:
    """Each import from a lower floor to a higher one, as 'importer:line -> imported (floor -> floor)'."""
    out = []
    for importer, imported, line in edges:
        low, high = floor_of(importer), floor_of(imported)
        if low is not None and high is not None and high > low:
            out.append(f"{importer}:{line} -> {imported} ({FLOORS[low][0]} -> {FLOORS[high][0]})")
    return out


def cycle(edges: list[Edge]) -> list[str]:
    """One import cycle as [a, b, ..., a] (depth-first search), or [] when the graph has none."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in edges:
        graph.setdefault(importer, set()).add(imported)
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_every_module_has_a_floor():
    missing = [name for name in package_sources() if floor_of(name) is None]
    assert not missing, f"modules on no floor: {missing}; add each to FLOORS here and to docs/architecture.md"


def test_no_import_runs_up_a_floor():
    found = upward(import_edges(package_sources()))
    assert not found, "imports that run up a floor (move what they need down a floor):\n" + "\n".join(found)


def test_no_import_cycle():
    found = cycle(import_edges(package_sources()))
    assert not found, f"import cycle: {' -> '.join(found)}"


@pytest.mark.parametrize(
    "added",
    [
        "from recipe.report import checks_table_html",
        "def _repr_html_(self):\n    from recipe.report import checks_table_html",  # hidden in a function
        "from recipe import report",
        "import recipe.report",
    ],
)
def test_an_upward_import_in_check_py_is_caught(added):
    """The rules catch the import that closed the old 39-module circle: check.py importing the report."""
    sources = package_sources()
    sources["recipe.check"] += "\n" + added + "\n"
    edges = import_edges(sources)
    assert any(line.startswith("recipe.check:") and "-> recipe.report " in line for line in upward(edges))
    found = cycle(edges)
    assert found and "recipe.check" in found and "recipe.report" in found


def test_what_the_graph_leaves_out():
    """Type-only imports and other packages' lazy imports are not edges; a relative import is resolved."""
    sources = {
        "recipe": "",
        "recipe.low": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recipe.high import Thing\n"
            "def f():\n    import optuna\n"
        ),
        "recipe.high": "from .low import f\n",
        "recipe.sub": "",
        "recipe.sub.deep": "from ..high import g\nfrom . import other\n",
        "recipe.sub.other": "",
    }
    edges = {(a, b) for a, b, _ in import_edges(sources)}
    assert edges == {
        ("recipe.high", "recipe.low"),
        ("recipe.sub.deep", "recipe.high"),
        ("recipe.sub.deep", "recipe.sub.other"),
    }
    assert cycle([("a", "b", 1), ("b", "c", 1), ("c", "a", 1)]) == ["a", "b", "c", "a"]
    assert cycle([("a", "b", 1), ("a", "c", 1), ("b", "c", 1)]) == []


def test_stage_settings_share_one_base_and_the_stage_order():
    """Settings in one layer: `skip` is declared once, on `StageSettings`; STAGES' names and order are the run
    directory's STAGE_ORDER, and each class's `name` is its key."""
    assert tuple(STAGES) == STAGE_ORDER
    for name, cls in STAGES.items():
        assert cls.name == name and issubclass(cls.settings_cls, StageSettings), name
        assert "skip" not in inspect.get_annotations(cls.settings_cls), f"{name} redeclares skip"
        assert cls(skip=["x"]).settings.skip == ("x",)  # built from a config section, as YAML gives it
