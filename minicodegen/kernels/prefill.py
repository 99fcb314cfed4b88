"""Prompts: ``y = x @ widen(W).T [* scale] + b`` for more than ``gemv.STREAM_MAX_T`` rows of x
and float32, bf16 or int8 weights, as a matrix-matrix product of its own (not BLAS: see
``gemv.linear_f32``).

Kernels: ``_pack_tokens`` (the tokens transposed in blocks of 64), ``_gemm_panels`` (panels of
128 rows of W, widened a chunk at a time with ``_widen_into`` and multiplied with
``simd._matmul_rows``); ``_prefill_linear`` runs both on scratch from ``arrays._tile_buffer``.

Tested against (tests/test_kernels_prefill.py, through ``linear_bf16`` / ``linear_int8`` with
more than STREAM_MAX_T rows): the float64 ``x @ widen(W).T + b``, for int8
``x @ (Wq * scale[:, None]).T + b``, within the error bound of a float32 sum, at every edge of
the blocks, chunks and panels, and after an earlier call left NaN in the scratch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .arrays import _ro, _tile_buffer
from .simd import _FM, _U, _bf16_to_f32, _matmul_rows, _transpose_add16
from .threads import get_threads

# The prefill kernel (_prefill_linear) works on blocks of
# _NB tokens x panels of _NR rows of W, and splits n_in into chunks of _KC: one
# chunk of the packed tokens (_KC x _NB float32 = 32 KB) stays in L1 while it is
# used.  Measured on fc_in of the 350M shape (T = 512, int8), ms per call over
# four runs, _KC = 64 / 96 / 128 / 160 / whole rows (1024): 14.0-14.7 /
# 13.8-14.1 / 13.6-14.1 / 14.2-14.8 / 17.4-17.5 (BLAS on a float32 tile, as
# before, 14.2-16.5; float32 BLAS 13.4-13.7).  Taller panels re-read the packed
# tokens fewer times: _NR = 64 / 128 / 256 gave 14.3-14.5 / 13.6-13.9 /
# 13.3-13.7 ms for fc_in, 14.2-14.5 / 13.5-13.8 /
# 13.4-14.2 for fc_out (float32 BLAS 13.7-14.1).  Widening a panel one chunk of
# _KC inputs at a time, rather than whole, kept that speed (fc_out 13.2-14.5 ms)
# and needs 64 KB of scratch per thread instead of 2 MB for fc_out.
_NB = 64
_NR = 128
_KC = 128


# ---------------------------------------------------------------------------
# Prefill: y = x @ widen(W).T for T > STREAM_MAX_T rows.
#
# A matrix-matrix product is compute-bound; what matters is that the operands
# of the inner loop sit in L1.  The tokens are packed once per call, transposed
# in blocks of 64: xp[blk, i, c] = x[64 blk + c, i] (zero past T).  Each thread
# then takes panels of 128 rows of W.  For each chunk k of 128 inputs it widens
# (bf16), dequantizes (int8) or copies (float32) the panel's chunk into float32, pan[r, :] =
# widen(W[j0 + r, 128 k : 128 k + 128]) (64 KB), and for each block of 64 tokens
# runs _matmul_rows (4 rows of the panel x 64 tokens in 16 vector accumulators):
#
#     cb[blk, r, c] += sum_{i in chunk k} pan[r, i] * xp[blk, 128 k + i, c]
#
# so the chunk of packed tokens (128 x 64 floats, 32 KB) is reused by all 128
# rows of the panel from L1.  Then y[64 blk + c, j0 + r] = cb[blk, r, c] +
# b[j0 + r], in blocks of 16 x 16 transposed in registers (_transpose_add16).
# Every weight is widened once per call (as BLAS packs its operands once), and
# no float32 copy of W is made: the scratch is the packed tokens plus, per
# thread, one widened chunk and the sums (64 KB + 32 KB per block of tokens).
# Sums run over i in a fixed order.
# ---------------------------------------------------------------------------


@njit(parallel=True, error_model="numpy", cache=True)
def _pack_tokens(x, xp, zeros):  # pragma: no cover - compiled
    """xp[blk, i, c] = x[64 blk + c, i], 0 past the last row.   x [T, n_in], xp [NT, n_in, 64],
    zeros [16] (zeros, the bias of _transpose_add16).  Parallel over the blocks of 64 tokens;
    16 x 16 blocks transposed in registers, the edges copied one by one.  Packing the input of
    the 350M fc_in / fc_out at T = 512 (2 / 8 MB) took 0.18 / 0.78 ms with scalar copies, 0.10 /
    0.57 ms so (the latter at memory speed)."""
    T, n_in = x.shape
    for blk in prange(xp.shape[0]):
        t0 = blk * _NB
        nt = min(_NB, T - t0)
        dst = xp[blk]
        for c0 in range(0, _NB, 16):
            for i0 in range(0, n_in, 16):
                if c0 + 16 <= nt and i0 + 16 <= n_in:
                    _transpose_add16(x, t0 + c0, i0, zeros, 0, dst, i0, c0)
                else:
                    for c in range(c0, c0 + 16):
                        for i in range(i0, min(i0 + 16, n_in)):
                            dst[i, c] = x[t0 + c, i] if c < nt else np.float32(0.0)


def _widen_into(w, s, out):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@overload(_widen_into, inline="always")
def _widen_into_impl(w, s, out):
    """out[i] = widen(w[i]): bf16 bits (uint16) exactly; int8 times the row scale s, rounded
    as model.dequantize rounds it; float32 copied."""
    if w.dtype == types.uint16:
        def bf16(w, s, out):
            for i in range(w.shape[0]):
                out[i] = _bf16_to_f32(w[i])
        return bf16
    if w.dtype == types.int8:
        def int8(w, s, out):
            for i in range(w.shape[0]):
                out[i] = np.float32(w[i]) * s
        return int8
    if w.dtype == types.float32:
        def f32(w, s, out):
            out[:] = w
        return f32
    return None


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _gemm_panels(xp, T, W, scale, b, y, pans, cbs):  # pragma: no cover - compiled
    """y = x @ widen(W).T [* scale] + b from the packed tokens xp [NT, n_in, 64] of x [T, n_in]
    (see the section comment).  W [n_out, n_in] uint16 (bf16) or int8 with scale [n_out];
    b [n_out] (zeros for no bias: one compiled specialization less); y [T, n_out].  Scratch,
    one of each per thread part (part p takes the panels j0 = _NR (p + P m)): pans [P, _NR, _KC]
    the widened chunk of the panel, cbs [P, NT, _NR, 64] its sums for every block of tokens."""
    n_out, n_in = W.shape
    NT = xp.shape[0]
    P = pans.shape[0]
    NK = (n_in + _KC - 1) // _KC
    n_pan = (n_out + _NR - 1) // _NR
    for part in prange(P):
        pan = pans[part]
        cb = cbs[part]
        for pb in range(part, n_pan, P):
            j0 = pb * _NR
            nr = min(_NR, n_out - j0)
            for k in range(NK):
                k0 = k * _KC
                kn = min(_KC, n_in - k0)
                for r in range(nr):
                    s = scale[j0 + r] if scale is not None else np.float32(1.0)
                    _widen_into(W[j0 + r, k0:k0 + kn], s, pan[r, :kn])
                if k == 0:  # (rows past n_out: computed, never written out)
                    pan[nr:] = 0.0
                for blk in range(NT):
                    xk = xp[blk, k0:k0 + kn]
                    for g in range(0, nr, _U):
                        _matmul_rows(pan[g:g + _U], xk, kn, _NB, cb[blk, g:g + _U], k > 0)
            for blk in range(NT):
                t0 = blk * _NB
                nt = min(_NB, T - t0)
                for c0 in range(0, nt, 16):
                    for r0 in range(0, nr, 16):
                        if c0 + 16 <= nt and r0 + 16 <= nr:  # y[t0 + c, j0 + r] = cb[blk, r, c] + b[j0 + r]
                            _transpose_add16(cb[blk], r0, c0, b, j0 + r0, y, t0 + c0, j0 + r0)
                        else:
                            for c in range(c0, min(c0 + 16, nt)):
                                for r in range(r0, min(r0 + 16, nr)):
                                    y[t0 + c, j0 + r] = cb[blk, r, c] + b[j0 + r]


_ZEROS16 = np.zeros(16, np.float32)
_ZEROS16.flags.writeable = False


def _prefill_linear(x2: np.ndarray, W: np.ndarray, scale: np.ndarray | None,
                   b: np.ndarray | None) -> np.ndarray:
    """``x2 @ widen(W).T [* scale] + b`` for many rows (a prompt) and bf16 (uint16) or int8
    weights (with ``scale``): x2 [T, n_in] float32 -> [T, n_out].  Checked and read-only
    arguments are the callers' (linear_bf16, linear_int8); see the section comment."""
    T, n_in = x2.shape
    NT = -(-T // _NB)
    P = get_threads()
    n_xp, n_pan = NT * n_in * _NB, P * _NR * _KC
    buf = _tile_buffer(n_xp + n_pan + P * NT * _NR * _NB)
    xp = buf[:n_xp].reshape(NT, n_in, _NB)
    pans = buf[n_xp:n_xp + n_pan].reshape(P, _NR, _KC)
    cbs = buf[n_xp + n_pan:].reshape(P, NT, _NR, _NB)
    _pack_tokens(_ro(x2), xp, _ZEROS16)
    y = np.empty((T, W.shape[0]), np.float32)
    b = b if b is not None else _ro(np.zeros(W.shape[0], np.float32))
    _gemm_panels(_ro(xp), T, W, scale, b, y, pans, cbs)
    return y
