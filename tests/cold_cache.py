"""Kernels compiled in a fresh interpreter with a cache directory of its own, as on a new machine:
``run_python`` and ``WARMUP_INT8``, the process that compiles every kernel an int8 model runs
(``kernels.warmup(["int8"])``) and reports what it compiled and looked up. The conftest fixture
``int8_compiled_cache`` runs it once per session (about 2 minutes on 2 cores), for the tests of
the cache and of the first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_python(code: str, cache_dir: Path, pythonpath: Path | None = None) -> dict:
    """Run ``code`` in a fresh interpreter with NUMBA_CACHE_DIR=cache_dir; it prints one JSON
    object as its last line of output, returned here."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


WARMUP_INT8 = """
import json, time
t0 = time.perf_counter()
from minicodegen import kernels as K
from minicodegen.kernels import cache
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
before = K.needs_compiling("int8")
t_check = time.perf_counter() - t0
steps = K.warmup(["int8"])
looked_up = {}
for step in cache._steps("int8"):
    for kernel, sig in cache._step_signatures()[step]:
        looked_up.setdefault(kernel.py_func.__module__ + "." + kernel.py_func.__qualname__, set()).add(str(sig))
kernels = {}
for module in ("simd", "prefill", "integer", "amx", "qgemm", "packed", "gemv", "attention", "elementwise", "decode"):
    for obj in vars(getattr(K, module)).values():
        if type(getattr(obj, "_cache", None)).__name__ == "FunctionCache" and obj.py_func.__module__.endswith(module):
            kernels[obj.py_func.__module__ + "." + obj.py_func.__qualname__] = obj
print(json.dumps({
    "import_s": t_import, "check_s": t_check, "before": before, "after": K.needs_compiling("int8"),
    "others": {d: K.needs_compiling(d) for d in ("float32", "bfloat16", "float16")},
    "steps": steps,
    "hits": {n: sum(k.stats.cache_hits.values()) for n, k in kernels.items()},
    "misses": {n: sum(k.stats.cache_misses.values()) for n, k in kernels.items()},
    "compiled": {n: sorted(map(str, k.overloads)) for n, k in kernels.items() if k.overloads},
    "looked_up": {n: sorted(s) for n, s in looked_up.items()},
}))
"""

