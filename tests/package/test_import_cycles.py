"""The package's modules import one another without cycles, counting every import: module-level,
function-level and under ``if TYPE_CHECKING:`` (a type-only import that closes a loop is a cycle of knowledge
all the same). The config is the ground floor: ``config.py`` imports nothing of the package."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> set[str]:
    """Every module (and ``module.name``) that ``tree`` imports absolutely, wherever the import stands."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = {d for d in _imports(ast.parse(path.read_text())) if d in files and d != mod}
        # a module importing its own parent package (for a sibling) is not a cycle through that package
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_checker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_reads_type_checking_and_function_level_imports():
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from advcoreset.config import Config\n"
            "def f():\n    import advcoreset.models\n")
    assert {"advcoreset.config", "advcoreset.config.Config", "advcoreset.models"} <= _imports(ast.parse(code))


def test_no_import_cycles():
    graph = import_graph()
    assert "advcoreset.training.trainer" in graph
    assert find_cycle(graph) is None


def test_config_imports_nothing_of_the_package():
    tree = ast.parse((SRC / "advcoreset" / "config.py").read_text())
    inner = sorted(d for d in _imports(tree) if d == "advcoreset" or d.startswith("advcoreset."))
    relative = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not inner and not relative, f"config.py must stay the ground floor; it imports {inner + relative}"
