"""The package's layout: imports between minicodegen's modules point one way, and only the
command line (``minicodegen/__main__.py``) parses arguments.

Imports are read from the source with ``ast``, wherever they sit (module level, inside a
function, under ``if TYPE_CHECKING``), along with ``importlib.import_module("minicodegen...")``.
A subpackage (``minicodegen/kernels/``, say) is one node of the graph: imports among its own
modules are its own business, imports between it and the rest of the package count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import minicodegen

PKG = Path(minicodegen.__file__).resolve().parent
CLI = "minicodegen.__main__"


def module_names(root: Path = PKG) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under the package (``__init__`` names its package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the module ``name`` (with source ``source``) imports.

    >>> mods = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    >>> sorted(imported_modules("def f():\\n    from .a import x\\n", "pkg.b", False, mods))
    ['pkg.a']
    >>> sorted(imported_modules("from .. import a, b\\nimport pkg.sub.c", "pkg.sub.c", False, mods))
    ['pkg.a', 'pkg.b', 'pkg.sub.c']
    >>> sorted(imported_modules("from . import c, helper", "pkg.sub", True, mods))
    ['pkg.sub', 'pkg.sub.c']
    """
    package = name if is_package else name.rpartition(".")[0]

    def known(target: str) -> str | None:  # the longest prefix of target that is a module here
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found: set[str | None] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {known(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            for a in node.names:  # `from . import x` imports the module pkg.x when there is one
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else known(target))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):  # fmt: skip
            found.add(known(node.args[0].value))
    return {m for m in found if m is not None}


def imports_argparse(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def graph_node(name: str) -> str:
    """A module's node: itself, or for a module of a subpackage the subpackage (minicodegen.kernels.x -> minicodegen.kernels)."""
    return ".".join(name.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """{node: the nodes it imports}, without self-edges."""
    files = module_names()
    # a folder of modules is importable (as a namespace package) even before it has an __init__.py
    folders = {".".join(p.relative_to(PKG.parent).parts) for p in PKG.rglob("*") if p.is_dir() and any(p.glob("*.py"))}
    modules = set(files) | folders
    graph: dict[str, set[str]] = {graph_node(n): set() for n in modules}
    for name, path in files.items():
        deps = imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)
        graph[graph_node(name)] |= {graph_node(d) for d in deps} - {graph_node(name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    True
    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    """
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (cycle := visit(m, path + [m])):
                return cycle
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n, [n])):
            return cycle
    return None


def test_the_graph_sees_the_package():
    graph = package_graph()
    assert {"minicodegen", CLI, "minicodegen.model", "minicodegen.checkpoint", "minicodegen.kernels"} <= set(graph)
    assert "minicodegen.model" in graph["minicodegen.checkpoint"] and "minicodegen.kernels" in graph["minicodegen.model"]


def test_no_import_cycle():
    cycle = find_cycle(package_graph())
    assert cycle is None, "modules import each other: " + " -> ".join(cycle or [])


def test_model_knows_nothing_of_checkpoints():
    graph = package_graph()
    assert "minicodegen.checkpoint" not in graph["minicodegen.model"]
    assert "minicodegen.checkpoint" in graph["minicodegen"]  # minicodegen.load


@pytest.mark.parametrize("name", sorted(module_names()))
def test_only_the_command_line_parses_arguments(name):
    assert imports_argparse(module_names()[name].read_text(encoding="utf-8")) == (name == CLI)
