"""Imports run one way, like the floors of a house (STYLE.md item 13), read from the package's own source (AST).

A module imports only modules on its floor or below, never one above, not even inside a function; no two modules
import each other, directly or round a longer circle; no ``_private`` name crosses a module. A new module must be
given a floor in ``LAYERS`` before these tests pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import clinical_r1

PACKAGE = Path(clinical_r1.__file__).parent

# The floors, bottom first. A module may import any module on its own floor or a lower one.
LAYERS: list[tuple[str, set[str]]] = [
    ("floor: errors, files and text", {"__init__", "errors", "files", "locks", "parsing", "formats", "redact"}),
    ("data, rewards and models", {"data", "prompts", "rewards", "advantage", "models", "records", "api", "gpu_stack"}),
    ("stages", {"config", "monitors", "runs", "sft", "crpo", "generate", "evaluate", "judge", "distill",
                "textmetrics", "verl_reward", "traces", "rleffect"}),
    ("orchestration", {"results", "study", "summary", "pipeline", "grid", "plots", "verl_launch"}),
    ("command line", {"cli", "__main__"}),
]


def package_imports(package: Path) -> list[tuple[str, str, int, list[str]]]:
    """``(module, imported module, line, imported names)`` for every import of a package module by a module of
    ``package``, at any depth (module level, inside functions and ``if`` blocks)."""
    name = package.name
    modules = {p.stem for p in package.glob("*.py")}
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == name and len(parts) > 1:
                        found.append((path.stem, parts[1], node.lineno, []))
            elif isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                if node.level == 0 and parts[0] != name:
                    continue
                rest = parts[1:] if node.level == 0 else [p for p in parts if p]
                names = [a.name for a in node.names]
                if rest:
                    found.append((path.stem, rest[0], node.lineno, names))
                else:  # from clinical_r1 import cli / from . import cli
                    found += [(path.stem, n, node.lineno, []) for n in names if n in modules]
    return [f for f in found if f[1] != f[0]]


def floor_of(layers: list[tuple[str, set[str]]]) -> dict[str, int]:
    return {m: i for i, (_, mods) in enumerate(layers) for m in mods}


def upward_imports(package: Path, layers: list[tuple[str, set[str]]]) -> list[str]:
    floor = floor_of(layers)
    return [f"{m}.py:{line} imports {t} ({layers[floor[t]][0]}) from below it ({layers[floor[m]][0]})"
            for m, t, line, _ in package_imports(package) if floor[t] > floor[m]]


def circles(package: Path) -> list[list[str]]:
    """Every strongly connected group of two or more modules in the import graph (Tarjan), as sorted names."""
    graph: dict[str, set[str]] = {p.stem: set() for p in package.glob("*.py")}
    for m, t, _, _ in package_imports(package):
        graph[m].add(t)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

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
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports(package: Path) -> list[str]:
    return [f"{m}.py:{line} imports {', '.join(bad)} from {t}" for m, t, line, names in package_imports(package)
            if (bad := [n for n in names if n.startswith("_") and not n.startswith("__")])]


# ---------------------------------------------------------------------------------------------------
# The package
# ---------------------------------------------------------------------------------------------------


def test_every_module_has_one_floor() -> None:
    placed = [m for _, mods in LAYERS for m in mods]
    assert len(placed) == len(set(placed)), "a module is listed on two floors"
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(placed), "give each new module a floor in LAYERS"


def test_no_module_imports_one_above_it() -> None:
    assert upward_imports(PACKAGE, LAYERS) == []


def test_no_import_circles() -> None:
    assert circles(PACKAGE) == []


def test_no_private_name_crosses_a_module() -> None:
    assert private_imports(PACKAGE) == []


# ---------------------------------------------------------------------------------------------------
# The checks themselves can fail
# ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def house(tmp_path: Path) -> Path:
    """A package ``pkg``: ``low`` (floor 0), ``mid`` (1), ``top`` (2), every import pointing down."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def _helper():\n    return 1\n")
    (pkg / "mid.py").write_text("from pkg.low import _helper as helper  # noqa\n")
    (pkg / "top.py").write_text("import pkg.mid\nfrom . import low\n")
    return pkg


HOUSE = [("0", {"__init__", "low"}), ("1", {"mid"}), ("2", {"top"})]


def test_the_checks_find_an_upward_import_a_circle_and_a_private_name(house: Path) -> None:
    assert upward_imports(house, HOUSE) == [] and circles(house) == []
    assert private_imports(house) == ["mid.py:1 imports _helper from low"]
    (house / "low.py").write_text("def f():\n    from pkg import top  # lazy, still upward\n    return top\n")
    assert upward_imports(house, HOUSE) == ["low.py:2 imports top (2) from below it (0)"]
    assert circles(house) == [["low", "mid", "top"]]  # top imports mid, which imports low
    (house / "low.py").write_text("")
    (house / "mid.py").write_text("if True:\n    from .top import x\n")
    assert upward_imports(house, HOUSE) == ["mid.py:2 imports top (2) from below it (1)"]
    assert circles(house) == [["mid", "top"]]
