"""Every teaching notebook runs top to bottom (offline, in under two minutes), so one that breaks
fails the build; and the committed .ipynb files are what notebooks/make_notebooks.py generates."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

import matplotlib  # noqa: F401  (the notebooks extra: CI installs it, so these never skip)
import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_tokenizer.ipynb", "02_one_block.ipynb", "03_generation.ipynb", "04_porting.ipynb"]
CELL_TIMEOUT = 120  # seconds, per cell
BUDGET = 120  # seconds, per notebook (issue 7: "runnable top to bottom in under 2 minutes")


def generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_generated():
    """The .ipynb files hold exactly the generator's cells (edit make_notebooks.py, then rerun it)."""
    gen = generator()
    assert sorted(gen.NOTEBOOKS) == NAMES == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name, cells in gen.NOTEBOOKS.items():
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(committed)
        assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in gen.build(cells).cells], (
            f"{name} is out of date: run python notebooks/make_notebooks.py"
        )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws without a display
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:  # run from the sources, whatever outputs were committed
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})  # fmt: skip
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell and the exception, if a cell fails
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET, f"{name} took {elapsed:.0f} s (budget {BUDGET} s)"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= (1 if name != "04_porting.ipynb" else 0), "the plots did not render"
