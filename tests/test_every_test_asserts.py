"""Every test asserts on what it names, and none on a wall-clock duration (issue 18).

Static, by ``ast``, over tests/**/test_*.py. A test asserts when its body holds an ``assert``, a
``pytest.raises`` / ``warns`` / ``fail``, an ``assert*`` call of a library (``np.testing.assert_allclose``,
a mock's ``assert_called_once``), a ``raise AssertionError``, or a reference to a helper that asserts: a
function of the same module (nested ones included) or of a module under tests/ (tests/support, a conftest,
another test module), followed through helpers transitively. Fixtures do not count: a test that only sets
things up asserts nothing about the behaviour it names.

A duration is a difference of two clock reads (``time.perf_counter`` / ``monotonic`` / ``time`` / ...,
read in the expression itself or through a name assigned from one) or a name containing ``elapsed``. An
``assert`` comparing one fails on a loaded machine and passes on a broken fast one: bound a count (calls,
sleeps asked for, bytes) instead, or put the figure in bench/. A deadline that ends a wait
(``assert time.monotonic() < deadline``) is a safety net, not a duration, and is allowed.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CLOCK_CALLS = frozenset(
    {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "time", "time_ns", "process_time", "default_timer"}
)
CLOCK_MODULES = frozenset({"time", "timeit"})
PYTEST_ASSERTIONS = frozenset({"raises", "warns", "fail", "deprecated_call"})
Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Defined:
    """A function of a module under tests/, with what resolves names inside it."""

    module: str  # dotted, e.g. tests.support.servers
    node: Function
    owner: ast.ClassDef | None  # for ``self.<method>``
    enclosing: tuple[Function, ...]  # outer functions, innermost last, for nested helpers


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def own_nodes(node: Function) -> list[ast.AST]:
    """The nodes of ``node``'s body, without the bodies of functions and classes defined in it."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(node.body)
    while stack:
        child = stack.pop()
        found.append(child)
        if not isinstance(child, Function | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(child))
    return found


@dataclass
class Suite:
    """The syntax trees of the modules under tests/: read from the repository, or given as sources by module
    name (the checker's own tests below)."""

    sources: dict[str, str] | None = None
    trees: dict[str, ast.Module | None] = field(default_factory=dict)
    imported: dict[str, dict[str, str]] = field(default_factory=dict)

    def tree(self, module: str) -> ast.Module | None:
        if module not in self.trees:
            path = REPO.joinpath(*module.split(".")).with_suffix(".py")
            if self.sources is not None:
                source = self.sources.get(module)
            else:
                source = path.read_text() if path.is_file() else None
            self.trees[module] = None if source is None else ast.parse(source, str(path))
        return self.trees[module]

    def imports(self, module: str) -> dict[str, str]:
        """Local name -> dotted target of every import in ``module``, function-level ones included (names
        are resolved by name, not by scope)."""
        if module not in self.imported:
            tree, found = self.tree(module), {}
            for node in ast.walk(tree) if tree else ():
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
                elif isinstance(node, ast.Import):
                    found.update({a.asname: a.name for a in node.names if a.asname})
            self.imported[module] = found
        return self.imported[module]

    def top_level(self, module: str, name: str) -> Defined | None:
        tree = self.tree(module)
        node = next((n for n in tree.body if isinstance(n, Function) and n.name == name), None) if tree else None
        return Defined(module, node, None, ()) if node else None

    def qualified(self, fn: Defined, reference: str) -> str:
        """``reference`` with its first name replaced by what ``fn``'s module imported under it."""
        head, _, rest = reference.partition(".")
        target = self.imports(fn.module).get(head, head)
        return f"{target}.{rest}" if rest else target

    def resolve(self, fn: Defined, reference: str) -> Defined | None:
        """The tests/ function ``reference`` (a name or dotted path as written in ``fn``) names, if any."""
        head, _, rest = reference.partition(".")
        if head == "self" and fn.owner is not None and rest and "." not in rest:
            method = next((n for n in fn.owner.body if isinstance(n, Function) and n.name == rest), None)
            return Defined(fn.module, method, fn.owner, ()) if method else None
        if not rest:
            chain = (*fn.enclosing, fn.node)
            for depth in range(len(chain), 0, -1):  # the innermost scope first
                nested = next((n for n in chain[depth - 1].body if isinstance(n, Function) and n.name == head), None)
                if nested is not None:
                    return Defined(fn.module, nested, fn.owner, chain[:depth])
            if (local := self.top_level(fn.module, head)) is not None:
                return local
        module, _, name = self.qualified(fn, reference).rpartition(".")
        return self.top_level(module, name) if module.split(".")[0] == "tests" else None

    def asserts(self, fn: Defined, seen: frozenset[int] = frozenset()) -> bool:
        if id(fn.node) in seen:  # a cycle of helpers asserts only if one of them does
            return False
        seen |= {id(fn.node)}
        for node in own_nodes(fn.node):
            if isinstance(node, ast.Assert):
                return True
            if isinstance(node, ast.Raise) and node.exc is not None and "AssertionError" in ast.unparse(node.exc):
                return True
            reference = dotted(node) if isinstance(node, ast.Name | ast.Attribute) else None
            if reference is None:
                continue
            helper = self.resolve(fn, reference)
            if helper is not None:
                if self.asserts(helper, seen):
                    return True
                continue
            module, _, last = self.qualified(fn, reference).rpartition(".")
            if (module == "pytest" and last in PYTEST_ASSERTIONS) or (module and last.startswith("assert")):
                return True
        return False

    def is_clock_read(self, fn: Defined, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call) or (reference := dotted(node.func)) is None:
            return False
        module, _, last = self.qualified(fn, reference).rpartition(".")
        return module in CLOCK_MODULES and last in CLOCK_CALLS

    def durations(self, fn: Defined) -> list[str]:
        """The asserts in ``fn`` that compare a wall-clock duration, as source."""
        nodes = own_nodes(fn.node)
        assigned = [
            (t.id, n.value) for n in nodes if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
        ]
        clock_names = {name for name, value in assigned if self.is_clock_read(fn, value)}

        def clock(node: ast.AST) -> bool:
            return self.is_clock_read(fn, node) or (isinstance(node, ast.Name) and node.id in clock_names)

        def holds_duration(expr: ast.AST, names: set[str]) -> bool:
            return any(
                (isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and clock(n.left) and clock(n.right))
                or (isinstance(n, ast.Name) and (n.id in names or "elapsed" in n.id))
                or (isinstance(n, ast.Attribute) and "elapsed" in n.attr)
                for n in ast.walk(expr)
            )

        duration_names: set[str] = set()
        for name, value in sorted(assigned, key=lambda a: a[1].lineno):  # a name built from another counts
            if holds_duration(value, duration_names):
                duration_names.add(name)
        return [
            ast.unparse(n)
            for n in nodes
            if isinstance(n, ast.Assert)
            and any(isinstance(c, ast.Compare) and holds_duration(c, duration_names) for c in ast.walk(n.test))
        ]

    def collected(self, module: str) -> list[tuple[str, Defined]]:
        """``(file::[Class::]test, function)`` for what pytest collects as tests (its default names):
        functions named ``test*`` at module level or in a ``Test*`` class."""
        tree = self.tree(module)
        assert tree is not None, module
        file = module.replace(".", "/") + ".py"
        found = [(f"{file}::{n.name}", Defined(module, n, None, ())) for n in tree.body if isinstance(n, Function)]
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.startswith("Test")):
            found += [
                (f"{file}::{cls.name}::{n.name}", Defined(module, n, cls, ()))
                for n in cls.body
                if isinstance(n, Function)
            ]
        return [(label, fn) for label, fn in found if fn.node.name.startswith("test")]

    def missing_asserts(self, modules: list[str]) -> list[str]:
        return [label for module in modules for label, fn in self.collected(module) if not self.asserts(fn)]

    def asserted_durations(self, modules: list[str]) -> dict[str, list[str]]:
        return {label: found for m in modules for label, fn in self.collected(m) if (found := self.durations(fn))}


def suite_modules() -> list[str]:
    return [".".join(p.relative_to(REPO).with_suffix("").parts) for p in sorted(TESTS.rglob("test_*.py"))]


@pytest.fixture(scope="module")
def repository() -> Suite:
    return Suite()  # parsed once for both checks


def test_every_test_asserts_on_what_it_names(repository):
    modules = suite_modules()
    assert len(modules) > 100  # the walk found the suite
    assert repository.missing_asserts(modules) == []


def test_no_test_asserts_a_duration(repository):
    assert repository.asserted_durations(suite_modules()) == {}


def suite_of(**sources: str) -> Suite:
    """A suite of the given modules (``tests__support__x`` stands for ``tests.support.x``)."""
    return Suite({name.replace("__", "."): textwrap.dedent(source) for name, source in sources.items()})


def test_the_checker_follows_helpers_and_knows_assertions_from_setup():
    suite = suite_of(
        tests__support__checks="""
            from tests.support.deeper import check_deeper
            def check(x):
                check_deeper(x)
            def build(x):
                return [x]
        """,
        tests__support__deeper="""
            def check_deeper(x):
                assert x
        """,
        tests__test_m="""
            import numpy as np
            import pytest
            from tests.support import checks
            from tests.support.checks import build, check
            def local_check(x):
                assert x == 1
            def ping(x):
                pong(x)
            def pong(x):
                ping(x)
            def test_plain(): assert 1
            def test_raises():
                with pytest.raises(ValueError): int("x")
            def test_library(): np.testing.assert_allclose(1, 1)
            def test_mock(m): m.assert_called_once_with(1)
            def test_local_helper(): local_check(1)
            def test_support_helper_two_levels_down(): check(1)
            def test_module_attribute(): checks.check(1)
            def test_nested_helper_used():
                def inner(x):
                    assert x
                list(map(inner, [1]))
            def test_nothing(): build(1)
            def test_setup_only(tmp_path): (tmp_path / "x").write_text("x")
            def test_cycle_of_helpers(): ping(1)
            def test_nested_helper_never_used():
                def inner(x):
                    assert x
            class TestGrouped:
                def helper(self): assert 1
                def test_self_helper(self): self.helper()
                def test_empty(self): pass
            class Helpers:
                def test_not_collected(self): pass
        """,
    )
    assert suite.missing_asserts(["tests.test_m"]) == [
        "tests/test_m.py::test_nothing",
        "tests/test_m.py::test_setup_only",
        "tests/test_m.py::test_cycle_of_helpers",
        "tests/test_m.py::test_nested_helper_never_used",
        "tests/test_m.py::TestGrouped::test_empty",
    ]


def test_the_checker_flags_clock_differences_and_not_deadlines_or_fake_clocks():
    suite = suite_of(
        tests__test_t="""
            import time
            from time import perf_counter
            def test_inline():
                started = time.monotonic()
                assert time.monotonic() - started < 1.0
            def test_through_names():
                t = perf_counter()
                ms = (perf_counter() - t) / 20 * 1000
                per_image = ms / 2
                assert per_image < 150
            def test_elapsed(result):
                assert result.elapsed_s < 1
            def test_deadline():
                deadline = time.monotonic() + 60
                assert time.monotonic() < deadline
            def test_fake_clock(clock):
                started = clock.now
                assert clock.now - started == 60.0
            def test_printed_only():
                t = time.perf_counter()
                print(time.perf_counter() - t)
                assert True
        """,
    )
    assert suite.asserted_durations(["tests.test_t"]) == {
        "tests/test_t.py::test_inline": ["assert time.monotonic() - started < 1.0"],
        "tests/test_t.py::test_through_names": ["assert per_image < 150"],
        "tests/test_t.py::test_elapsed": ["assert result.elapsed_s < 1"],
    }
