"""Decode: matrix-vector products that stream each weight from memory once per token, and the
public ``linear*`` functions, which use them for up to ``STREAM_MAX_T`` rows of x.

Kernels: ``_gemv`` (float32, bf16 or int8 weights; four rows a step through ``simd._dot``),
``_gemv_f16`` (float16 weights); ``_gemv_step`` / ``_rows_out`` are their loop body (the fused
decode block uses them too), ``_prefetch_ahead`` the prefetch burst of the memory-rate probes
in tools/.  Wrappers: ``linear_f32``, ``linear_bf16`` / ``linear_int8`` (more rows:
``prefill._prefill_linear``), ``linear_f16`` (more rows: NumPy), ``linear`` (dispatch on
the weight dtype).

Tested against (tests/test_kernels_gemv.py): ``ops.linear`` and the float64 ``x @ W.T + b`` of
the widened (bf16, float16) or dequantized (int8: ``Wq * scale[:, None]``) weights, within the
error bound of a float32 sum; exactly ``x @ widen(W).T`` when x holds rows of the identity.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .arrays import _check_w, _prep_vec, _prep_x, _ro
from .int4 import linear_int4 as _linear_int4
from .packed import linear_int8_packed
from .qgemm import _round_bf16, bf16_rows_apply, linear_bf16_rows, linear_int8_rows
from .prefill import _prefill_linear
from .simd import _dot, _dot_f16, _dot_operand, _prefetch

# Up to this many rows of x, linear_* stream W once through the Numba
# matrix-vector kernels; above it, _prefill_linear.  Decode is T = 1 (or a few rows for batched / speculative decode).
STREAM_MAX_T = 8

# Prefetch distance of the decode kernels, in bytes of W ahead of the elements
# in work (0 disables), by weight type: _dot asks for the cache line that far
# ahead at every step of its main loop.  Measured on this machine, decode of the
# 350M shape (weights in memory), tok/s without / with: int8 45.7 / 64.2 (4 KiB;
# 2 and 8 KiB the same), bf16 33.2 / 40.9, float32 21.7 / 23.1 (2 KiB).  One
# burst of prefetches per row, as before, gave int8 56.  Re-measured with two
# rows per step (median of 4 runs each): int8 1/2/4/6 KiB 72.1/74.7/73.7/74.7,
# bf16 1/2/4/8 KiB 43.3/44.2/43.4/42.9, float32 1/2/4 KiB 24.4/24.7/24.2 tok/s.
# Since four rows per step (see _gemv): the prefetches go to L2 (prefetcht1),
# not L1, 4 KiB ahead for every type.  Paired runs of 64 tokens against L1 at
# 2 / 2 / 4 KiB, 20 pairs: float32 1.018x (quartiles 1.013-1.029), bf16 1.010x,
# int8 1.00x.  Non-temporal prefetches (prefetchnta) made decode 2.5x slower.
PREFETCH_F32 = 4096
PREFETCH_BF16 = 4096
PREFETCH_INT8 = 4096
# int4 (kernels/int4.py prefetches a block of 16 groups of each row at once): decode of the 350M
# shape, 5 interleaved runs each, median 77.9 / 77.0 / 83.8 tok/s at 0 / 2 / 4 KiB: within noise.
PREFETCH_INT4 = 4096


# ---------------------------------------------------------------------------
# Matrix-vector kernels (decode).  Shapes: x [T, n_in] float32, y [T, n_out].
# Parallel over output rows; each W row is read from memory once and used for
# all T rows of x while it sits in L1.  A step takes four rows a quarter of W
# apart (j, j + h, j + 2h, j + 3h), so each thread streams four contiguous bands
# of W at once: more streams for the hardware prefetchers to run ahead on.
# Against two bands (j, j + h), in paired runs of 64 decode tokens (350M shape,
# 16 pairs), four decoded bf16 1.07x and int8 1.04x as fast; float32 0.99x (the
# same within noise).
# `pf` > 0: _dot prefetches the cache lines `pf` bytes ahead of the ones it
# works on (into the next rows), so that memory stays busy while the core
# converts and multiplies (the hardware prefetcher alone left bf16/int8 rows
# waiting on memory).
# ---------------------------------------------------------------------------


@njit(inline="always")
def _prefetch_ahead(W, j, n, pf, step):  # pragma: no cover - compiled
    """Prefetch the lines of the n elements that start pf elements after row j
    (one burst per row; the memory-rate probes of tools/ use it)."""
    if pf > 0:
        start = j * n + pf
        stop = min(start + n, W.size)
        for p in range(start, stop, step):
            _prefetch(W, p)


@njit(inline="always")
def _rows_out(acc, j, t, scale, b, y):  # pragma: no cover - compiled
    """y[t, j] = acc [* scale[j]] [+ b[j]]."""
    if scale is not None:
        acc *= scale[j]
    if b is not None:
        acc += b[j]
    y[t, j] = acc


@njit(inline="always")
def _dot_rows(xd, W, j, h, pf, out):  # pragma: no cover - compiled
    """out[t, k] = the sum of row k of W with row t of xd, for k = j, j + h, j + 2h, j + 3h (those
    before the end of W) and every t: 4, then 2, then 1 rows of xd per _dot, which widens a row of
    W once for all of them; the four rows of W stay in L1 while the rows of xd go by, each read
    from L2 once per call.  Each sum in _dot's order, so equal, bit for bit, to _dot(xd[t], W[k])
    alone (a row of a batch gets what it would get alone)."""
    T = xd.shape[0]
    n = W.shape[0]
    t = 0
    while t < T:
        g = 4 if t + 4 <= T else (2 if t + 2 <= T else 1)
        for r in range(4):
            k = j + r * h
            if k < n:
                p = pf if t == 0 else 0
                if g == 4:
                    u = _dot((xd[t], xd[t + 1], xd[t + 2], xd[t + 3]), W[k], p)
                    out[t, k], out[t + 1, k], out[t + 2, k], out[t + 3, k] = u[0], u[1], u[2], u[3]
                elif g == 2:
                    u2 = _dot((xd[t], xd[t + 1]), W[k], p)
                    out[t, k], out[t + 1, k] = u2[0], u2[1]
                else:
                    out[t, k] = _dot(xd[t], W[k], p)
        t += g


@njit(inline="always")
def _gemv_step(xd, W, j, h, scale, b, y, pf):  # pragma: no cover - compiled
    """Rows j, j + h, j + 2h and j + 3h of y = (xd @ widen(W).T) [* scale] [+ b]
    (those before the end of W): the body of the matrix-vector loops.  One row of x: the four
    rows of W in one _dot (four streams of memory); more: each row of W once for all rows of x
    (_dot_rows: the widening is shared)."""
    n = W.shape[0]
    if xd.shape[0] == 1 and j + 3 * h < n:
        u = _dot(xd[0], (W[j], W[j + h], W[j + 2 * h], W[j + 3 * h]), pf)
        for r in range(4):
            _rows_out(u[r], j + r * h, 0, scale, b, y)
    else:
        _dot_rows(xd, W, j, h, pf, y)
        for r in range(4):
            if j + r * h < n:
                for t in range(xd.shape[0]):
                    _rows_out(y[t, j + r * h], j + r * h, t, scale, b, y)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemv(x, W, scale, b, y, pf):  # pragma: no cover - compiled
    """y = (x @ widen(W).T) [* scale] [+ b].

    x [T, n_in] f32; W [n_out, n_in] float32, uint16 (bf16 bits) or int8;
    scale [n_out] f32 or None (int8: the per-row scale); b [n_out] f32 or None.
    Step j computes rows j, j + h, j + 2h, j + 3h, h = n_out / 4 rounded up: each
    thread streams four bands of W at once (see the section comment).
    """
    xd = _dot_operand(x, W)
    h = (W.shape[0] + 3) // 4
    for j in prange(h):
        _gemv_step(xd, W, j, h, scale, b, y, pf)


@njit(parallel=True, error_model="numpy", cache=True)
def _gemv_f16(x, W, b, y, pf):  # pragma: no cover - compiled
    """y = x @ W.astype(float32).T (+ b).   W [n_out, n_in] u16 (float16 bits)."""
    T = x.shape[0]
    for j in prange(W.shape[0]):
        w = W[j]
        for t in range(T):
            acc = _dot_f16(x[t], w, pf if t == 0 else 0)
            if b is not None:
                acc += b[j]
            y[t, j] = acc


# ---------------------------------------------------------------------------
# Python wrappers: argument checks (arrays.py), decode/prefill dispatch.
# ---------------------------------------------------------------------------


def linear_f32(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + b`` for float32 ``W [n_out, n_in]``; x [..., n_in] -> [..., n_out].

    Up to STREAM_MAX_T rows: the parallel streaming kernel (reads W once).  More rows:
    ``prefill._prefill_linear``, as for bf16 weights.  Definition: ``ops.linear``.

    Not BLAS: where NumPy was imported before minicodegen (a notebook, a program that imports
    NumPy first), the OPENBLAS_THREAD_TIMEOUT=4 that ``import minicodegen`` sets comes too late,
    and OpenBLAS's threads spin after each call (for up to 2^28 cycles by default) on the cores
    the Numba kernels between the products need.  Measured at T = 512, 350M shape, 2 threads:
    attention and rotary took 233-263 and 88-95 ms a prompt after such BLAS products, 107-129
    and 49-53 ms with BLAS's threads asleep; ``_prefill_linear`` multiplies as fast as BLAS with
    its threads asleep (fc_in 22.8 against 24.1 ms), whatever the import order.
    """
    return _linear_narrow(x, _check_w(W, np.float32, "W"), None, b, PREFETCH_F32)


def linear_bf16(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None,
                bf16_activations: bool = False) -> np.ndarray:
    """``x @ widen(W).T + b`` for bf16 ``W`` stored as uint16 ``[n_out, n_in]``.

    ``widen(W) = (W.astype(uint32) << 16).view(float32)`` (exact).  Decode
    streams W (2 bytes per weight) and widens in registers; prefill widens
    panels of 128 rows for a matrix-matrix kernel (_prefill_linear).
    ``bf16_activations=True``: x is rounded to bf16 first (definition ``ops.linear_bf16_rows``).
    Prompts (more than STREAM_MAX_T rows) then multiply on AMX tiles or with vdpbf16ps where the
    CPU has them and the shape fits (``qgemm.linear_bf16_rows``); elsewhere, and for fewer rows,
    the rounded x goes through the same kernels as float32 x.
    """
    W = _check_w(W, np.uint16, "W")
    if bf16_activations:
        if np.asarray(x).size > STREAM_MAX_T * W.shape[1] and bf16_rows_apply(W.shape):
            return linear_bf16_rows(x, W, b)
        x2, lead = _prep_x(x, W.shape[1])
        xb = np.empty(x2.shape, np.uint16)
        _round_bf16(_ro(x2), xb)
        x = (xb.astype(np.uint32) << 16).view(np.float32).reshape(*lead, W.shape[1])
    return _linear_narrow(x, W, None, b, PREFETCH_BF16)


def linear_f16(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.astype(float32).T + b`` for float16 ``W [n_out, n_in]``: decode widens in
    registers (exact, like linear_bf16); more rows widen W with NumPy for BLAS."""
    if W.dtype != np.float16 or W.ndim != 2:
        raise TypeError(f"W must be a 2-D float16 array, got {W.dtype} {W.shape}")
    W = _check_w(np.ascontiguousarray(W).view(np.uint16), np.uint16, "W")
    n_out, n_in = W.shape
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    if T <= STREAM_MAX_T:
        y = np.empty((T, n_out), np.float32)
        _gemv_f16(_ro(x2), W, b, y, PREFETCH_BF16)
    else:
        y = x2 @ W.view(np.float16).astype(np.float32).T  # (not used by the model: load() widens float16)
        if b is not None:
            y += b
    return y.reshape(*lead, n_out)


def linear_int8(x: np.ndarray, Wq: np.ndarray, scale: np.ndarray,
                b: np.ndarray | None = None, int8_activations: bool = True) -> np.ndarray:
    """``(x @ Wq.T) * scale + b`` for int8 ``Wq [n_out, n_in]``, float32 ``scale [n_out]``.

    ``int8_activations=True`` (the default): the rows of x are quantized to 8 bits and multiplied
    with integer dot products (``qgemm.linear_int8_rows``; definition
    ``ops.linear_int8_rows``).  False: x stays float32, and the result equals
    ``x @ (Wq * scale[:, None]).T + b`` up to float32 rounding: decode streams Wq (1 byte per
    weight) and converts in registers; prefill dequantizes panels of 128 rows for a
    matrix-matrix kernel (_prefill_linear).
    """
    if int8_activations:
        return linear_int8_rows(x, Wq, scale, b, pf=PREFETCH_INT8, stream_max_t=STREAM_MAX_T)
    Wq = _check_w(Wq, np.int8, "Wq")
    scale = _prep_vec(scale, Wq.shape[0], "scale")
    if scale is None:
        raise ValueError("linear_int8 needs a per-row scale")
    return _linear_narrow(x, Wq, scale, b, PREFETCH_INT8)


def _linear_narrow(x: np.ndarray, W: np.ndarray, scale: np.ndarray | None, b: np.ndarray | None,
                   pf: int) -> np.ndarray:
    """linear_f32 / linear_bf16 / linear_int8 once W (and scale) are checked: up to STREAM_MAX_T rows of x
    stream W through _gemv (prefetching pf bytes ahead), more go to _prefill_linear."""
    n_out, n_in = W.shape
    x2, lead = _prep_x(x, n_in)
    b = _prep_vec(b, n_out, "b")
    T = x2.shape[0]
    if T <= STREAM_MAX_T:
        y = np.empty((T, n_out), np.float32)
        _gemv(_ro(x2), W, scale, b, y, pf)
    else:
        y = _prefill_linear(x2, W, scale, b)
    return y.reshape(*lead, n_out)


def linear_int4(x: np.ndarray, W: np.ndarray, scale: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``ops.linear_int4_rows`` for int4 weights (``W uint8 [n_out, n_in / 2]`` of packed codes,
    ``scale float16 [n_out, n_groups]``): x quantized per row, integer dot products per group.
    Up to STREAM_MAX_T rows W is streamed once; more go to the prompt kernel (``int4.py``)."""
    return _linear_int4(x, W, scale, b, pf=PREFETCH_INT4, stream_max_t=STREAM_MAX_T)


def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None,
           scale: np.ndarray | None = None, int8_activations: bool = True,
           bf16_activations: bool = False) -> np.ndarray:
    """Dispatch on the weight dtype: float32 -> linear_f32, uint16 (bf16 bits)
    -> linear_bf16 (with ``bf16_activations``), int8 (needs ``scale``) -> linear_int8 (with
    ``int8_activations``), int32 [P, n_in / 4, 64] (int8 packed by packed.pack_int8, needs
    ``scale``) -> packed.linear_int8_packed, uint8 (int4 codes, needs ``scale``) -> linear_int4,
    float16 -> linear_f16."""
    if W.dtype == np.float32:
        return linear_f32(x, W, b)
    if W.dtype == np.uint16:
        return linear_bf16(x, W, b, bf16_activations)
    if W.dtype == np.int8:
        return linear_int8(x, W, scale, b, int8_activations)
    if W.dtype == np.uint8:
        return linear_int4(x, W, scale, b)
    if W.dtype == np.int32 and W.ndim == 3:
        if not int8_activations:
            raise ValueError("packed int8 weights multiply int8 activations only (int8_activations=True)")
        return linear_int8_packed(x, W, scale, b)
    if W.dtype == np.float16:
        return linear_f16(x, W, b)
    raise TypeError(f"unsupported weight dtype {W.dtype}")
