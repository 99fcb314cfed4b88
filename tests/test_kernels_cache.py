"""The compile cache of the kernels (minicodegen.kernels.cache): warmup and needs_compiling, the
signatures needs_compiling looks up, and the guard that deletes cached code compiled from other
sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from minicodegen import kernels as K
from minicodegen.kernels import cache


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
    common = ["layer norm", "gelu_new", "rotary", "attention (decode)", "attention (prompt)"]
    assert cache._steps("int8") == cache._steps(["int8"]) == common + [
        "linear int8 (decode)", "linear int8 (prompt)", "decode block int8"]
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
    directory = cache._cache_dir()
    assert directory is not None and Path(directory, cache._STAMP).read_text() == cache._fingerprint()
    assert cache.refresh_cache() == []
