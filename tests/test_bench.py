"""tools/bench.py --smoke runs end to end and prints every figure (no time is asserted)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"
HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="the benchmark builds its checkpoint with transformers")
def test_bench_smoke(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(BENCH), "--smoke", "--workdir", str(tmp_path / "ckpt")],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    for figure in [
        "load average at start", "numpy BLAS", "kernels.warmup(): first run not measured (--smoke)", "on-disk cache",
        "memory read rate", "transformers fp32 (default OpenMP): decode",
        "transformers fp32 (OMP_WAIT_POLICY=PASSIVE): decode", "cross-check: generate",
        "minicodegen fp32: decode", "minicodegen bf16: decode", "minicodegen int8: decode", "minicodegen int4: decode",
        "minicodegen fp32 (mapped): decode", "minicodegen bf16 (mapped): decode", "minicodegen int8 (mapped): decode",
        "Ratios are against the better transformers configuration",
        "peak RSS while decoding", "bf16: identical prefix", "int8: identical prefix", "teacher-forced",
        "max |Δlogits|", "fp32 kernels vs NumPy definition", "fp32 vs transformers",
        "## Performance", "Bandwidth bound", "First run", "minicodegen int8, float32 activations: decode",
        "batch of 2 prompts", "batch of 8 prompts", "### Engines side by side", "### Decode steps of a batch",
        "decode steps of B rows at once", "int8, float32 activations: identical prefix", "int4: identical prefix",
        "Target int4 decode", "minicodegen bf16, bf16 activations: decode", "bf16, bf16 activations: identical prefix",
    ]:  # fmt: skip
        assert figure in out, f"missing {figure!r} in:\n{out}"
    rows = [ln for ln in out.splitlines() if re.match(r"\| (transformers|minicodegen) ", ln)]
    # transformers twice (OpenMP default / PASSIVE), minicodegen 4 dtypes x (in memory, mapped) + int8 with float
    # activations + bf16 with bf16 activations
    assert len(rows) == 12, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 11 and all(cells), row
    assert "nan" not in out.lower().replace("nanoseconds", ""), out
