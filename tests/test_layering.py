"""The house rules of issue 11, checked statically over every module under cosmicman/.

Pure ``ast`` analysis: nothing is imported, so a broken module still gets its layering judged. Every
import statement counts, wherever it sits (module level, inside functions, under ``if TYPE_CHECKING``),
and so does ``importlib.import_module("...")`` with a literal name.

- Dagster is the outside: only the shell (assets, resources, jobs, environments, definitions, cli) imports
  ``dagster*``; the trainer in ``cosmicman.model`` may also import ``dagster_pipes``.
- Stage order core < sourcing < filtering < parsing < annotation < datasets < evaluation: a stage imports
  only earlier stages, itself and core; ``cosmicman.model`` imports only core and model. The shell imports anything;
  nothing below the shell imports the shell.
- ``cosmicman.simulation`` is imported only by itself, ``cosmicman.environments.local`` and
  ``cosmicman.environments.simulated_*``.
- No import circle among cosmicman modules.
- No file longer than MAX_LINES.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "cosmicman"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 600

SHELL = frozenset({"assets", "resources", "jobs", "environments", "definitions", "cli"})
STAGE_ORDER = ("core", "sourcing", "filtering", "parsing", "annotation", "datasets", "evaluation")
# model is off the stage line: the trainer runs in its own process and needs only the core.
MODEL_ALLOWED = frozenset({"core", "model"})
SIMULATION = "simulation"
SIMULATION_IMPORTERS = ("cosmicman.environments.local", "cosmicman.environments.simulated_")
# evaluation, the last stage, also runs in its own process (python -m cosmicman.evaluation): it generates with
# the model package's pipelines and talks back through Pipes, as the trainer does
EVALUATION = "evaluation"
DAGSTER_PIPES_IMPORTERS = frozenset({"model", EVALUATION})


@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is the cosmicman module the import edge points at, or the raw name."""

    importer: str
    path: str
    line: int
    target: str


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def module_name(path: Path, root: Path) -> str:
    """``root/cosmicman/x/__init__.py`` -> ``cosmicman.x``; ``root/cosmicman/x/y.py`` -> ``cosmicman.x.y``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_package(package_dir: Path = PACKAGE_DIR) -> dict[str, tuple[str, str]]:
    """Module name -> (path relative to the repository, source) for every .py file in the package."""
    root = package_dir.parent
    return {
        module_name(path, root): (str(path.relative_to(root)), path.read_text(encoding="utf-8"))
        for path in sorted(package_dir.rglob("*.py"))
    }


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _cosmicman_target(name: str, modules: Iterable[str]) -> str:
    """The longest known module that prefixes ``name`` (``cosmicman.x.y.Thing`` -> ``cosmicman.x.y``)."""
    known = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return name


def _literal_dynamic_import(node: ast.Call) -> str | None:
    func = node.func
    is_import_module = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}
    )
    if is_import_module and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        if isinstance(value, str):
            return value
    return None


def find_imports(modules: Mapping[str, tuple[str, str]]) -> list[Import]:
    """Every import in every module, each name a separate edge; cosmicman names resolved to modules."""
    found: list[Import] = []
    for importer, (path, source) in modules.items():
        is_package = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(source, filename=path)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve_relative(importer, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                if base == PACKAGE or base.startswith(PACKAGE + "."):
                    # `from cosmicman.x import y` is an edge to cosmicman.x.y when that is a module.
                    names = [
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                    ]
                else:
                    names = [base]
            elif isinstance(node, ast.Call):
                dynamic = _literal_dynamic_import(node)
                names = [dynamic] if dynamic else []
            for name in names:
                target = _cosmicman_target(name, modules) if name.split(".")[0] == PACKAGE else name
                found.append(Import(importer, path, node.lineno, target))
    # `from m import a, b` names one edge per line, not one per imported name
    return list(dict.fromkeys(found))


def _area(module: str) -> str:
    """The top-level part of cosmicman a module belongs to (``cosmicman.core.keys`` -> ``core``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _may_import(importer_area: str, target_area: str) -> bool:
    if importer_area in SHELL:
        return True
    if target_area == "":  # the empty root package
        return True
    if importer_area == "model":
        return target_area in MODEL_ALLOWED
    if importer_area == EVALUATION:
        return target_area in STAGE_ORDER or target_area == "model"
    if importer_area == SIMULATION:
        return target_area not in SHELL
    if importer_area in STAGE_ORDER:
        if target_area not in STAGE_ORDER:
            return False
        return STAGE_ORDER.index(target_area) <= STAGE_ORDER.index(importer_area)
    return False


def check_imports(imports: Iterable[Import]) -> list[Violation]:
    """The Dagster, stage-order and simulation rules, one violation per offending import."""
    violations: list[Violation] = []
    for imp in imports:
        importer_area = _area(imp.importer)
        top = imp.target.split(".")[0]
        if top.startswith("dagster"):
            allowed = importer_area in SHELL or (top == "dagster_pipes" and importer_area in DAGSTER_PIPES_IMPORTERS)
            if not allowed:
                violations.append(
                    Violation(
                        imp.path,
                        imp.line,
                        "dagster-only-in-shell",
                        f"{imp.importer} imports {imp.target}; only the shell "
                        f"({', '.join(sorted(SHELL))}) may import dagster"
                        + (" (model may import dagster_pipes)" if top != "dagster_pipes" else ""),
                    )
                )
            continue
        if top != PACKAGE:
            continue
        target_area = _area(imp.target)
        if target_area == SIMULATION:
            if not (importer_area == SIMULATION or imp.importer.startswith(SIMULATION_IMPORTERS)):
                violations.append(
                    Violation(
                        imp.path,
                        imp.line,
                        "simulation-not-in-production",
                        f"{imp.importer} imports {imp.target}; only cosmicman.simulation, "
                        "cosmicman.environments.local and environments/simulated_*.py may",
                    )
                )
            continue
        if importer_area == "" and target_area != "":
            violations.append(
                Violation(
                    imp.path, imp.line, "stage-order", f"the root package imports {imp.target}; it must stay empty"
                )
            )
            continue
        if not _may_import(importer_area, target_area):
            if target_area in SHELL:
                why = "nothing below the shell imports the shell"
            elif importer_area == "model":
                why = "cosmicman.model imports only core and model"
            else:
                why = "a stage imports only earlier stages, itself and core (" + " < ".join(STAGE_ORDER) + ")"
            violations.append(
                Violation(imp.path, imp.line, "stage-order", f"{imp.importer} imports {imp.target}; {why}")
            )
    return violations


def check_areas(modules: Mapping[str, tuple[str, str]]) -> list[Violation]:
    """Every module lies in a stage, the model, the simulation or the shell: the layer rules must see it."""
    known = SHELL | set(STAGE_ORDER) | {"model", SIMULATION, ""}
    return [
        Violation(path, 1, "stage-order", f"{module} is in no known layer; place it in a stage or the shell")
        for module, (path, _) in modules.items()
        if _area(module) not in known
    ]


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so deep graphs cannot hit the recursion limit."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        index[start] = lowlink[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            if successors:
                succ = successors.pop(0)
                if succ not in index:
                    index[succ] = lowlink[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, sorted(graph.get(succ, ()))))
                elif succ in on_stack:
                    lowlink[node] = min(lowlink[node], index[succ])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_through(start: str, graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A shortest import circle from ``start`` back to itself, staying inside its component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        next_frontier: list[str] = []
        for node in frontier:
            for succ in sorted(graph.get(node, ())):
                if succ not in component:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if succ not in previous:
                    previous[succ] = node
                    next_frontier.append(succ)
        frontier = next_frontier
    return [start]


def check_cycles(imports: Iterable[Import], modules: Iterable[str]) -> list[Violation]:
    """One violation per strongly connected component of the cosmicman import graph, naming a circle."""
    known = set(modules)
    graph: dict[str, set[str]] = {module: set() for module in known}
    where: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if imp.target in known:
            graph[imp.importer].add(imp.target)
            where.setdefault((imp.importer, imp.target), imp)
    violations: list[Violation] = []
    for component in _strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        cycle = _cycle_through(component[0], graph, set(component))
        first = where[(cycle[0], cycle[1])]
        steps = ", ".join(f"{where[(a, b)].path}:{where[(a, b)].line} {a} -> {b}" for a, b in zip(cycle, cycle[1:]))
        violations.append(
            Violation(
                first.path,
                first.line,
                "no-import-cycle",
                f"import circle among {len(component)} module(s) {component}: {steps}",
            )
        )
    return violations


def check_lengths(modules: Mapping[str, tuple[str, str]], max_lines: int = MAX_LINES) -> list[Violation]:
    violations = []
    for path, source in modules.values():
        lines = len(source.splitlines())
        if lines > max_lines:
            violations.append(
                Violation(
                    path,
                    max_lines + 1,
                    "max-file-length",
                    f"{lines} lines; no Python file under {PACKAGE}/ over {max_lines}",
                )
            )
    return violations


def _fail_on(violations: list[Violation]) -> None:
    if violations:
        pytest.fail(f"{len(violations)} violation(s):\n" + "\n".join(str(v) for v in violations), pytrace=False)


# --- the rules, over the real package ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package() -> dict[str, tuple[str, str]]:
    return read_package()


@pytest.fixture(scope="module")
def imports(package: dict[str, tuple[str, str]]) -> list[Import]:
    return find_imports(package)


def test_dagster_only_in_the_shell(imports: list[Import]) -> None:
    _fail_on([v for v in check_imports(imports) if v.rule == "dagster-only-in-shell"])


def test_stage_order(package: dict[str, tuple[str, str]], imports: list[Import]) -> None:
    _fail_on(check_areas(package) + [v for v in check_imports(imports) if v.rule == "stage-order"])


def test_production_never_imports_simulation(imports: list[Import]) -> None:
    _fail_on([v for v in check_imports(imports) if v.rule == "simulation-not-in-production"])


def test_no_import_cycles(package: dict[str, tuple[str, str]], imports: list[Import]) -> None:
    _fail_on(check_cycles(imports, package))


def test_no_file_too_long(package: dict[str, tuple[str, str]]) -> None:
    _fail_on(check_lengths(package))


# --- the checker itself, on tiny synthetic packages --------------------------------------------------------------


def _package(files: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Synthetic modules from {"cosmicman/x/y.py": source}."""
    root = Path("/repo")
    return {module_name(root / path, root): (path, source) for path, source in files.items()}


def _rules(files: Mapping[str, str]) -> list[tuple[str, int, str]]:
    package = _package(files)
    imports = find_imports(package)
    return [(v.path, v.line, v.rule) for v in check_imports(imports) + check_cycles(imports, package)]


def test_checker_finds_a_cycle_through_a_function_local_import() -> None:
    files = {
        "cosmicman/__init__.py": "",
        "cosmicman/core/__init__.py": "",
        "cosmicman/core/a.py": "from cosmicman.core import b\n",
        "cosmicman/core/b.py": "import os\n\n\ndef late():\n    from cosmicman.core.c import thing\n",
        "cosmicman/core/c.py": "from cosmicman.core.a import x\nthing = 1\n",
        "cosmicman/core/d.py": "from cosmicman.core import a\n",
    }
    package = _package(files)
    (violation,) = check_cycles(find_imports(package), package)
    assert violation.rule == "no-import-cycle"
    assert (violation.path, violation.line) == ("cosmicman/core/a.py", 1)
    assert "cosmicman.core.a -> cosmicman.core.b" in violation.message
    assert "cosmicman/core/b.py:5 cosmicman.core.b -> cosmicman.core.c" in violation.message
    assert "cosmicman.core.c -> cosmicman.core.a" in violation.message
    assert "cosmicman.core.d" not in violation.message


def test_checker_finds_no_cycle_in_a_chain() -> None:
    files = {
        "cosmicman/core/a.py": "from cosmicman.core import b\n",
        "cosmicman/core/b.py": "from cosmicman.core.c import thing\n",
        "cosmicman/core/c.py": "thing = 1\n",
    }
    package = _package(files)
    assert check_cycles(find_imports(package), package) == []


def test_checker_finds_a_stage_importing_a_later_stage_under_type_checking() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cosmicman.datasets.version import V\n"
    assert _rules({"cosmicman/filtering/f.py": source}) == [("cosmicman/filtering/f.py", 3, "stage-order")]


def test_checker_allows_earlier_stages_and_core() -> None:
    source = "from cosmicman.core.keys import K\nfrom cosmicman.sourcing import pool\nfrom . import other\n"
    assert _rules({"cosmicman/filtering/f.py": source, "cosmicman/filtering/other.py": ""}) == []


def test_checker_finds_model_importing_a_stage_and_a_stage_importing_the_shell() -> None:
    assert _rules(
        {
            "cosmicman/model/m.py": "from cosmicman.annotation import vlm\n",
            "cosmicman/core/k.py": "import cosmicman.resources.storage\n",
        }
    ) == [("cosmicman/model/m.py", 1, "stage-order"), ("cosmicman/core/k.py", 1, "stage-order")]


def test_checker_lets_evaluation_use_the_model_and_pipes_but_not_the_shell_or_dagster() -> None:
    assert _rules(
        {
            "cosmicman/evaluation/run.py": "from cosmicman.model import pipelines\nfrom cosmicman.datasets import c\n",
            "cosmicman/evaluation/__main__.py": "from dagster_pipes import open_dagster_pipes\n",
            "cosmicman/evaluation/bad.py": "from cosmicman.assets import evaluation\nimport dagster\n",
            "cosmicman/datasets/d.py": "from cosmicman.model import pipelines\n",
        }
    ) == [
        ("cosmicman/evaluation/bad.py", 1, "stage-order"),
        ("cosmicman/evaluation/bad.py", 2, "dagster-only-in-shell"),
        ("cosmicman/datasets/d.py", 1, "stage-order"),
    ]


def test_checker_finds_dagster_below_the_shell_but_allows_pipes_in_model() -> None:
    assert _rules(
        {
            "cosmicman/annotation/a.py": "def f():\n    import dagster as dg\n",
            "cosmicman/model/train.py": "from dagster_pipes import open_dagster_pipes\n",
            "cosmicman/model/bad.py": "from dagster import asset\n",
            "cosmicman/core/c.py": "from dagster_pipes import PipesContext\n",
            "cosmicman/assets/x.py": "import dagster\nfrom dagster_k8s import PipesK8sClient\n",
        }
    ) == [
        ("cosmicman/annotation/a.py", 2, "dagster-only-in-shell"),
        ("cosmicman/model/bad.py", 1, "dagster-only-in-shell"),
        ("cosmicman/core/c.py", 1, "dagster-only-in-shell"),
    ]


def test_checker_finds_production_importing_the_simulation() -> None:
    assert _rules(
        {
            "cosmicman/simulation/world.py": "from cosmicman.core.imageio import encode_jpeg\n",
            "cosmicman/simulation/truth.py": "from cosmicman.simulation.world import W\n",
            "cosmicman/environments/local.py": "from cosmicman.simulation import world\n",
            "cosmicman/environments/simulated_vlm.py": "from cosmicman.simulation.truth import T\n",
            "cosmicman/environments/s3.py": "from cosmicman.simulation.world import W\n",
            "cosmicman/annotation/vlm.py": (
                "import importlib\nw = importlib.import_module('cosmicman.simulation.world')\n"
            ),
        }
    ) == [
        ("cosmicman/environments/s3.py", 1, "simulation-not-in-production"),
        ("cosmicman/annotation/vlm.py", 2, "simulation-not-in-production"),
    ]


def test_checker_finds_a_module_outside_every_layer() -> None:
    package = _package(
        {
            "cosmicman/__init__.py": "",
            "cosmicman/util/helpers.py": "",
            "cosmicman/cli.py": "",
            "cosmicman/core/keys.py": "",
        }
    )
    assert [(v.path, v.rule) for v in check_areas(package)] == [("cosmicman/util/helpers.py", "stage-order")]


def test_checker_flags_files_over_the_limit() -> None:
    package = _package({"cosmicman/core/big.py": "x = 1\n" * 601, "cosmicman/core/ok.py": "x = 1\n" * 600})
    assert [(v.path, v.rule) for v in check_lengths(package)] == [("cosmicman/core/big.py", "max-file-length")]
