"""The layout of minicodegen.kernels: imports between its modules point one way, each module opens
with a docstring that says what its kernels are tested against, and none is much over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from minicodegen import kernels as K

PACKAGE = Path(K.__file__).resolve().parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
ORDER = ["threads", "cpu", "simd", "arrays", "prefill", "integer", "int4", "amx", "qgemm", "packed", "gemv", "attention", "elementwise", "decode",
         "cache"]  # as __init__


def sibling_imports(name: str) -> set[str]:
    """The modules of the package that module ``name`` imports (``from .x import ...``, ``from . import x``)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minicodegen.kernels."):
            found.add(node.module.split(".")[2])
    return found & set(MODULES)


def test_every_module_is_in_the_order():
    assert sorted(ORDER) == MODULES


@pytest.mark.parametrize("name", ORDER)
def test_a_module_imports_only_the_modules_before_it(name):
    assert sibling_imports(name) <= set(ORDER[: ORDER.index(name)])


def test_init_imports_the_modules_in_that_order():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    imported = [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1]
    assert imported == [m for m in ORDER if m in imported] and imported[0] == "threads"  # (it starts the pool)


@pytest.mark.parametrize("name", MODULES)
def test_a_module_says_what_it_holds_and_is_not_long(name):
    source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source))
    assert doc and (name in ("threads", "arrays") or "Tested " in doc)  # (threads, arrays: no kernel)
    assert len(source.splitlines()) <= 500
