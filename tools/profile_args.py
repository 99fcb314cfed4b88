"""The arguments tools/prompt_profile.py and tools/step_profile.py share: which checkpoint of
tools/bench.py's 350M shape to load (``--dtype``, ``--workdir``), how (``--mapped``), and how
often to run (``--runs``)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_checkpoint_args(ap: argparse.ArgumentParser, runs: int, runs_help: str) -> None:
    """--dtype, --runs (default ``runs``), --mapped and --workdir."""
    ap.add_argument("--dtype", default="int8", help="weights: float32, bfloat16, int8, int4 (default int8)")
    ap.add_argument("--runs", type=int, default=runs, help=f"{runs_help} (default {runs})")
    ap.add_argument("--mapped", action="store_true", help="memory-map the .npz instead of reading it")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "minicodegen-bench-350M")


def check_checkpoint(ap: argparse.ArgumentParser, a: argparse.Namespace) -> Path:
    """The checkpoint ``<dtype>.npz`` in ``--workdir``; exits through ``ap.error`` (status 2) naming
    it when it is not there."""
    path = a.workdir / f"{a.dtype}.npz"
    if not path.exists():
        ap.error(f"no checkpoint {path} (tools/bench.py writes it; or pass --workdir)")
    return path
