"""What the Python wrappers do around a kernel call: check and prepare arguments (``_prep_x``,
``_prep_vec``, ``_check_w``), mark them read-only (``_ro``: one compiled specialization serves
ordinary and memory-mapped arrays), and lend scratch memory (``_tile_buffer`` and ``_scratch``,
freed by ``release_scratch``).

No kernel here; the wrappers that use these are tested with their kernels (argument errors in
tests/test_kernels_gemv.py, reused scratch in tests/test_kernels_prefill.py).
"""

from __future__ import annotations

import threading

import numpy as np


def _ro(a: np.ndarray | None) -> np.ndarray | None:
    """A read-only view of ``a`` (free), so kernels see one array type."""
    if a is None or not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def _prep_x(x: np.ndarray, n_in: int) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(x)
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features, W expects {n_in}")
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, n_in), dtype=np.float32)
    return x2, lead


def _prep_vec(v: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if v is None:
        return None
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    return _ro(v)


def _check_w(W: np.ndarray, dtype: type, name: str) -> np.ndarray:
    if W.dtype != dtype or W.ndim != 2:
        raise TypeError(f"{name} must be a 2-D {np.dtype(dtype).name} array, got {W.dtype} {W.shape}")
    if not W.flags.c_contiguous:
        W = np.ascontiguousarray(W)
    return _ro(W)


_tiles = threading.local()  # one reusable scratch buffer per thread


def _tile_buffer(n: int) -> np.ndarray:
    """n float32 of scratch (_prefill_linear's packed tokens and weight panels, _attend_prompt's
    transposed keys, qgemm's quantized rows and AMX tiles and panels), reused from call to call:
    fresh arrays of some MB at every call paid their page faults every time (about 1 ms per 350M
    matrix)."""
    buf = getattr(_tiles, "buf", None)
    if buf is None or buf.size < n:
        buf = _tiles.buf = np.empty(n, np.float32)
    return buf[:n]


def _scratch(shapes: list[tuple[int, ...]], dtypes: list[type]) -> list[np.ndarray]:
    """Arrays of these shapes and dtypes in this thread's reused scratch (``_tile_buffer``), one
    after the other, each at a multiple of 64 bytes from the start."""
    sizes = [int(np.prod(s)) * np.dtype(d).itemsize for s, d in zip(shapes, dtypes)]
    starts = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes])
    buf = _tile_buffer(-(-int(starts[-1]) // 4)).view(np.int8)
    return [buf[a:a + n].view(d).reshape(s) for a, n, s, d in zip(starts, sizes, shapes, dtypes)]


def release_scratch() -> None:
    """Free this thread's scratch buffer (the packed tokens and weight panels of _prefill_linear,
    the transposed keys and copied values of a prompt's attention); model.forward calls it after
    a prompt, so that it does not stay in memory while decoding."""
    _tiles.buf = None
