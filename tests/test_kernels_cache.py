"""The compile cache of the kernels (minicodegen.kernels.cache): warmup and needs_compiling, the
signatures needs_compiling looks up, and the guard that deletes cached code compiled from other
sources.  The cross-process tests run Python in subprocesses with their own NUMBA_CACHE_DIR."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cold_cache import WARMUP_INT8, run_python

from minicodegen import kernels as K
from minicodegen.kernels import cache

PACKAGE = Path(cache.__file__).resolve().parent


def test_warmup_returns_each_step_and_its_seconds():
    steps = K.warmup()
    assert sum(s for _, s in steps) >= 0.0
    assert [name for name, _ in steps] == list(cache._STEPS)  # every step, once
    assert all(isinstance(name, str) and s >= 0.0 for name, s in steps)
    assert all(not K.needs_compiling(d) for d in (None, *K.DTYPES))  # (loaded in this process now)
    for step, calls in cache._step_signatures().items():  # what needs_compiling looks up was compiled
        for kernel, sig in calls:
            assert sig in kernel.overloads, (step, kernel.py_func.__qualname__, sig)


def test_warmup_steps_by_dtype():
    common = ["layer norm", "gelu_new", "rotary", "rotary into the cache", "attention (decode)", "attention (prompt)"]
    packed = ["linear int8 (packed)", "decode block int8 (packed)"] if K.packs(np.zeros((1, 4), np.int8)) else []
    assert cache._steps("int8") == cache._steps(["int8"]) == common + [
        "linear int8 (decode)", "linear int8 (prompt)", "decode block int8", *packed]
    assert cache._steps(["float16"]) == cache._steps(["float32", "float16"]) == cache._steps("float32")
    assert cache._steps(None) == list(cache._STEPS) and "linear float16" not in cache._steps(list(K.DTYPES))
    assert set(cache._step_signatures()) == set(cache._STEPS)
    with pytest.raises(ValueError, match="float64"):
        K.warmup(["float64"])
    with pytest.raises(ValueError, match="float64"):
        K.needs_compiling("float64")


def test_refresh_cache_deletes_the_files_of_other_sources(tmp_path):
    py = cache._PY
    ours = [f"gemv._gemv-101.{py}.nbi", f"gemv._gemv-101.{py}.1.nbc", f"decode._decode_block-131.{py}.12.nbc"]
    others = ["gemv._gemv-101.py27.nbi", "gemv._gemv-101.py27.1.nbc", "simd.cpython-311.pyc", "notes.txt"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    stamp = tmp_path / cache._STAMP
    stamp.write_text("the fingerprint of other sources")
    assert cache.refresh_cache(tmp_path) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [cache._STAMP])
    assert stamp.read_text() == cache._fingerprint()
    for name in ours:  # compiled from these sources now: kept
        (tmp_path / name).write_bytes(b"x")
    assert cache.refresh_cache(tmp_path) == []
    assert all((tmp_path / name).exists() for name in ours)
    stamp.unlink()  # no stamp: files of unknown sources
    assert cache.refresh_cache(tmp_path) == sorted(ours)


def test_the_package_stamps_its_cache_directory():
    directory = cache.cache_dir()
    assert directory is not None and Path(directory, cache._STAMP).read_text() == cache._fingerprint()
    assert cache.refresh_cache() == []


GELU = """
import json, numpy as np, kernels_copy as K
from kernels_copy import cache, elementwise
y = K.gelu_new(np.linspace(-3, 3, 64, dtype=np.float32))
stats = elementwise._gelu_new.stats
print(json.dumps({"y": y.tolist(), "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "dir": cache.cache_dir()}))
"""


def test_an_edit_of_simd_reaches_the_cached_kernels_of_other_modules(tmp_path):
    """elementwise._gelu_new compiles in simd._exp_f32.  After an edit of simd.py alone Numba keeps
    the cached _gelu_new (its own file did not change); the guard deletes it at the next import."""
    copy = tmp_path / "kernels_copy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    first = run_python(GELU, tmp_path / "cache", tmp_path)
    assert first["misses"] == 1 and first["hits"] == 0  # compiled
    stamp = Path(first["dir"], cache._STAMP)
    x = np.linspace(-3, 3, 64, dtype=np.float32)
    np.testing.assert_allclose(first["y"], K.gelu_new(x), rtol=0, atol=0)
    assert run_python(GELU, tmp_path / "cache", tmp_path)["hits"] == 1  # loaded

    simd = copy / "simd.py"
    edited = simd.read_text().replace("    return x if x != x else y\n",
                                      "    return x if x != x else y * np.float32(2.0)\n")
    assert edited != simd.read_text()
    simd.write_text(edited)  # exp(x) becomes 2 exp(x)
    old_stamp = stamp.read_text()

    stamp.write_text(cache._fingerprint(copy))  # as if the guard were not there
    stale = run_python(GELU, tmp_path / "cache", tmp_path)
    assert stale["hits"] == 1 and stale["misses"] == 0 and stale["y"] == first["y"]  # the old exp

    stamp.write_text(old_stamp)  # what the cache holds after the edit
    fresh = run_python(GELU, tmp_path / "cache", tmp_path)
    assert fresh["misses"] == 1 and fresh["hits"] == 0  # compiled from the edited sources
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    np.testing.assert_allclose(fresh["y"], x64 / (1 + 2 * np.exp(-2 * u)), rtol=1e-5, atol=1e-6)
    assert stamp.read_text() == cache._fingerprint(copy)


@pytest.mark.slow  # the first process compiles every kernel an int8 model runs (80 s of CPU here)
def test_a_second_process_loads_every_kernel_and_compiles_none(int8_compiled_cache):
    tmp_path, first = int8_compiled_cache  # (a session fixture: test_first_run uses the same cold compile)
    assert first["before"] is True and first["after"] is False
    assert all(first["others"].values())  # (their linear and decode-block kernels are not cached)
    assert [name for name, _ in first["steps"]] == cache._steps("int8")
    for name, sigs in first["looked_up"].items():  # needs_compiling looks up what the warm-up compiled
        # (and perhaps more: the fused block calls layer_norm's and the quantization's kernels with
        # writeable inputs, a specialization compiled into the block, which a later process loads
        # with the block rather than on its own)
        assert set(sigs) <= set(first["compiled"][name])

    second = run_python(WARMUP_INT8, tmp_path)
    assert second["before"] is False and second["after"] is False
    assert second["check_s"] < 1.0  # (a few milliseconds: it compiles and loads nothing)
    assert sum(second["misses"].values()) == 0  # compiled nothing
    used = {name for name, hits in second["hits"].items() if hits}
    assert used == set(first["looked_up"])  # loaded every kernel the steps call from Python
    for name in used:
        assert second["hits"][name] == len(first["looked_up"][name])
