"""The package's layout: imports go one way (no circle, a lazy import inside a function counts),
each package says in its docstring what it is for and what it may import, no folder grows past 15
modules. Only imports under ``if TYPE_CHECKING:`` are left out."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "turbobatch"
MAX_MODULES = 15
# Who may import whom, bottom to top (a package imports only those before it; kernels stand alone).
LAYERS = [
    "turbobatch.errors",
    "turbobatch.faults",
    "turbobatch.metrics",
    "turbobatch.kernels",
    "turbobatch.spec",
    "turbobatch.output",
    "turbobatch.models",
    "turbobatch.workers",
    "turbobatch.jobs",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _owner(name: str) -> str | None:
    """The module of ours that ``name`` (a module, or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every module of ours that ``module`` imports, at the top or inside a function."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {_owner(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found |= {_owner(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int | None:
    return next((i for i, p in enumerate(LAYERS) if module == p or module.startswith(p + ".")), None)


def test_no_import_circle_between_our_modules() -> None:
    assert cycles() == []


def test_no_package_under_the_circle_check_imports_its_caller_across_layers() -> None:
    wrong = [
        (m, t)
        for m, targets in GRAPH.items()
        for t in targets
        if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)
    ]
    assert wrong == [], "\n".join(f"{m} imports {t}" for m, t in sorted(wrong))


def test_kernels_stand_alone() -> None:
    assert all(
        t.startswith("turbobatch.kernels") for m, ts in GRAPH.items() if m.startswith("turbobatch.kernels") for t in ts
    )


def test_every_package_says_its_job_and_what_it_may_import() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), f"{init.relative_to(REPO)}: docstring must say what it may import"


def test_no_folder_holds_more_than_15_modules() -> None:
    for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES, f"{folder.relative_to(REPO)}: {len(modules)} modules"


def test_the_circle_check_sees_a_lazy_import() -> None:
    """The check itself: a function-level import counts, one under TYPE_CHECKING does not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import turbobatch.a\n"
        "def f():\n    from turbobatch import b\n"
    )
    skipped = _type_checking_nodes(tree)
    names = [
        a.name
        for n in ast.walk(tree)
        if id(n) not in skipped and isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    ]
    assert names == ["TYPE_CHECKING", "b"]
