"""The layers, checked on the source: an import that breaks one fails here at once.

Every ``import`` and ``from ... import`` of ``stream/`` and ``models/`` is read with ast
(module level, inside functions and under ``TYPE_CHECKING`` alike), resolved to the
project module it names, and held to the rules of the README's code map:

* ``stream.core`` imports nothing of the project outside itself, and no I/O framework;
* ``models.serving`` imports only ``stream.core`` (and itself);
* ``stream.worker`` never imports ``models.training`` or ``models.evaluation``;
* no import cycle among the project's modules;
* a project import inside a function only where it keeps TensorFlow lazy, commented so.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import REPO

PACKAGES = ("stream", "models")
FRAMEWORKS = ("faust", "aiokafka", "confluent_kafka", "tensorflow", "keras", "mode", "rocksdict")
LAZY_MARK = "lazy:"  # the comment a function-level project import must carry
MAX_LAZY_IMPORTS = 5


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported project module (or a third-party top-level name)
    line: int
    nested: bool  # inside a function
    comment: str  # the source line, for the lazy mark


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest project module that ``name`` starts with (``a.b.c`` -> ``a.b`` if c is a
    name defined in module a.b)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nested_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    nested_lines.add(inner.lineno)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            target = _resolve(name, modules) if top in PACKAGES else top
            if target and target != module:
                yield Import(
                    module, target, node.lineno, node.lineno in nested_lines, lines[node.lineno - 1]
                )


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = project_modules()
    return [imp for m, p in modules.items() for imp in imports_of(m, p, modules)]


def _project(graph: list[Import]) -> list[Import]:
    return [i for i in graph if i.target.split(".")[0] in PACKAGES]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_core_imports_only_itself_and_no_framework(graph: list[Import]) -> None:
    bad = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in graph
        if _in(i.source, "stream.core")
        and (
            (i.target.split(".")[0] in PACKAGES and not _in(i.target, "stream.core"))
            or i.target in FRAMEWORKS
        )
    ]
    assert not bad, "stream.core must stay pure:\n" + "\n".join(bad)


def test_serving_imports_only_the_core(graph: list[Import]) -> None:
    bad = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in _project(graph)
        if _in(i.source, "models.serving")
        and not (_in(i.target, "stream.core") or _in(i.target, "models.serving"))
    ]
    assert not bad, "models.serving may import only stream.core:\n" + "\n".join(bad)


def test_the_worker_never_imports_training_or_evaluation(graph: list[Import]) -> None:
    bad = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in _project(graph)
        if _in(i.source, "stream.worker")
        and (_in(i.target, "models.training") or _in(i.target, "models.evaluation"))
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles(graph: list[Import]) -> None:
    edges: dict[str, set[str]] = {}
    for i in _project(graph):
        edges.setdefault(i.source, set()).add(i.target)
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_function_level_project_imports_only_keep_tensorflow_lazy(graph: list[Import]) -> None:
    nested = [i for i in _project(graph) if i.nested]
    unmarked = [f"{i.source}:{i.line}" for i in nested if LAZY_MARK not in i.comment]
    assert not unmarked, (
        f"function-level project imports without a '# {LAZY_MARK}' comment: {unmarked}"
    )
    assert len(nested) <= MAX_LAZY_IMPORTS, [f"{i.source}:{i.line}" for i in nested]


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    """The rules above can fail: the parser finds nested, relative and aliased imports,
    and the cycle finder finds a cycle."""
    pkg = tmp_path / "stream" / "core"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from stream.worker import b  # no mark\n")
    (pkg / "c.py").write_text("from . import a\nimport faust as f\n")
    modules = {"stream.core.a": pkg / "a.py", "stream.core.c": pkg / "c.py", "stream.worker.b": pkg}
    found = {
        (i.source, i.target, i.nested)
        for name in ("stream.core.a", "stream.core.c")
        for i in imports_of(name, modules[name], modules)
    }
    assert ("stream.core.a", "stream.worker.b", True) in found
    assert ("stream.core.c", "stream.core.a", False) in found
    assert ("stream.core.c", "faust", False) in found
    cycles = strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    assert [c for c in cycles if len(c) > 1] == [{"a", "b"}]


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph has a few hundred nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out
