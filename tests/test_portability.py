"""The kernels compiled for another CPU than this one, in a subprocess with its own Numba cache:
NUMBA_CPU_NAME / NUMBA_CPU_FEATURES make Numba compile for a laptop without AVX-512 (haswell:
AVX2, the ``widen`` integer kernels) on any machine that runs AVX2.  The tiny model must give the same greedy tokens as here,
and its logits within float32 noise (the integer sums are exact everywhere; the float kernels add
in a fixed order, but the attention and layer norm loops are vectorized to the target's width).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minicodegen
from minicodegen.kernels import cpu

RUN = """
import json, numpy as np, minicodegen
from minicodegen.kernels import cpu, integer, qgemm
m = minicodegen.load("tiny")
ids = m.tokenizer.encode(PROMPT)
logits = minicodegen.forward(m, [ids])[0]
print(json.dumps({"int8": integer.INT8_ISA.name, "bf16": qgemm.BF16_ISA.name,
                  "tokens": minicodegen.generate(m, ids, max_new_tokens=24),
                  "logits": logits[-4:].tolist()}))
"""
PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fib"

# name -> (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES, the features the host needs, the int8 kernel).  (The
# avx_vnni kernels run in tests/test_kernels_integer.py on hosts that have AVX-VNNI; a subprocess
# compiling for alderlake took another 2 minutes of the suite for nothing more.)
# (int4 weights are not run here: their kernels compile for another minute and a half, and
# tests/test_kernels_int4.py already runs the ``widen`` kind on this host and checks that every
# kind gives the same numbers, bit for bit: the lanes are summed in one fixed order in the IR.)
TARGETS = {
    "haswell": ("haswell", "+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt", {"avx2", "fma", "f16c"}, "widen"),
}


def host_result() -> dict:
    m = minicodegen.load("tiny")
    ids = m.tokenizer.encode(PROMPT)
    logits = minicodegen.forward(m, [ids])[0]
    return {"tokens": minicodegen.generate(m, ids, max_new_tokens=24), "logits": logits[-4:]}


@pytest.mark.slow  # each target compiles the kernels of an int8 model from scratch (about 70 s here)
@pytest.mark.parametrize("target", list(TARGETS))
def test_the_fallback_kernels_give_the_same_tokens(target, tmp_path):
    name, features, needs, int8 = TARGETS[target]
    host = cpu.target_features()
    if not needs <= host:
        pytest.skip(f"this CPU cannot run code compiled for {target} (lacks {', '.join(sorted(needs - host))})")
    env = dict(os.environ, NUMBA_CPU_NAME=name, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", f"PROMPT = {PROMPT!r}\n" + RUN], env=env, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["int8"] == int8 and got["bf16"] == "widen"
    want = host_result()
    assert got["tokens"] == want["tokens"]
    np.testing.assert_allclose(np.array(got["logits"], np.float32), want["logits"], rtol=0, atol=1e-4)
