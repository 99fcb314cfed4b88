"""Softmax attention of new queries over the KV cache: ``attend_cached`` and its kernels.

Fewer than ``ATTEND_BLOCK_MIN_T`` queries (decode): ``_attend``, one query at a time
(``_attend_query`` scores four keys at a time with ``simd._dot`` and prefetches keys and
values).  A prompt: ``_attend_prompt``, blocks of 4 queries as two small matrix products
(``simd._matmul_rows``) around a softmax.  Both take the softmax from ``_softmax_row``
(``_row_max``, ``simd._exp_f32``), a prompt row without padding from ``_softmax_dense`` (the
same values in two passes fewer); ``_mask_arrays`` turns a key mask into (allowed, bias).
The output's memory is [B, T, H * D], heads merged, as ``out_proj`` reads it.

Tested against (tests/test_kernels_attention.py): the definition as an explicit float64 loop
(softmax of q.k / sqrt(D) + mask over the visible keys, times the values; zeros for a query
that sees no key; masked keys weigh exactly 0), and ``ops.attention`` with ``ops.causal_mask``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .arrays import _ro, _tile_buffer
from .simd import _FM, _LANES, _U, _dot, _exp_f32, _matmul_rows, _prefetch, _transpose_add16

# Added to the keys as _transpose_add16 transposes them: x + -0.0 is x, bit for bit (-0.0 too).
_MINUS_ZEROS = np.full(16, -0.0, np.float32)

# A float additive attention mask marks a key as masked when its value is at or
# below this (covers -inf, float32 min as used by transformers, and -1e9).
_MASKED_AT_OR_BELOW = -1e9

# ---------------------------------------------------------------------------
# Attention of T new tokens over the KV cache.
# ---------------------------------------------------------------------------


# Rows of keys and values _attend_query prefetches ahead of the key it works on.  Decode of the
# 350M shape reads 8 KB of cache per position and block (16 heads x 64 x 4 bytes, keys and
# values): at 100 positions that is 16 MB a token, which ran at about 19 GB/s, against 28-31
# for the weights.  Scoring four keys at a time, p.v four rows at a time and asking for every
# line of keys and values 8 rows ahead took an int8 step from 12.46 to 12.26 ms (medians of 15
# interleaved runs of 10 steps at S = 100; the two loops without the prefetches: 12.44 ms,
# 16 rows ahead: 12.38 ms).
_KV_AHEAD = 8


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _attend_query(qt, k, v, last, allowed, bias, p, o, acc):  # pragma: no cover - compiled
    """o = softmax attention of one query qt [D] over keys/values k, v [>= last+1, D]
    at positions 0..last allowed by allowed [>= last+1] (+ additive bias, or None);
    p [>= last+1] and acc [16] are scratch.  No visible key: o = 0.  Scores four keys at a
    time (_dot, qt loaded once), prefetching keys and values _KV_AHEAD rows ahead.

    Keys before the first allowed one (a row's left padding) are skipped: the groups of four
    start at that key, so a row gets the same bits behind any amount of padding as alone."""
    D = qt.shape[0]
    n = last + 1
    j0 = 0
    while j0 < n and not allowed[j0]:
        j0 += 1
    ahead = min(_KV_AHEAD, n - j0)
    for j in range(j0, j0 + ahead):  # the first rows: the loop below asks for rows j + _KV_AHEAD on
        for d in range(0, D, 16):
            _prefetch(k, j * D + d)
            _prefetch(v, j * D + d)
    j = j0
    while j + 4 <= n:
        for d in range(0, min(4, n - (j0 + ahead) - (j - j0)) * D, 16):  # rows j+8 .. j+11 (those that exist)
            _prefetch(k, (j + _KV_AHEAD) * D + d)
            _prefetch(v, (j + _KV_AHEAD) * D + d)
        p[j], p[j + 1], p[j + 2], p[j + 3] = _dot(qt, (k[j], k[j + 1], k[j + 2], k[j + 3]), 0)
        j += 4
    for j in range(j, n):
        p[j] = _dot(qt, k[j], 0)
    _softmax_row(p, j0, n, allowed, bias, np.float32(math.sqrt(D)), acc)
    o[:] = 0.0
    j = j0
    while j + 4 <= n:
        w0, w1, w2, w3 = p[j], p[j + 1], p[j + 2], p[j + 3]
        if w0 != 0.0 and w1 != 0.0 and w2 != 0.0 and w3 != 0.0:
            for d in range(D):  # (v[j, d], not views of rows: with views the loop did not vectorize, 6x slower)
                o[d] += (w0 * v[j, d] + w1 * v[j + 1, d]) + (w2 * v[j + 2, d] + w3 * v[j + 3, d])
        else:
            _add_weighted_rows(o, p, v, j, j + 4)
        j += 4
    _add_weighted_rows(o, p, v, j, n)


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _add_weighted_rows(o, p, v, j0, j1):  # pragma: no cover - compiled
    """o += p[j] * v[j] for j0 <= j < j1, skipping weights that are exactly 0: masked keys
    add exactly nothing, whatever their values hold."""
    for j in range(j0, j1):
        w = p[j]
        if w != 0.0:
            for d in range(o.shape[0]):
                o[d] += w * v[j, d]


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _attend(q, k, v, S, allowed, bias, out):  # pragma: no cover - compiled
    """Causal softmax attention over the first S cached positions.

    q [B, H, T, D], k/v [B, H, S_cap, D], allowed [B, S] bool, bias [B, S] f32
    or None, out [B, T, H * D] (heads merged: head h at columns h * D .. h * D + D - 1).  Query t sits at position S - T + t and sees
    keys j <= S - T + t with allowed[b, j]; score = q.k / sqrt(D) (+ bias[b, j]);
    weights = softmax over the visible keys (exactly 0 elsewhere).  A query with
    no visible key gets a zero output.
    """
    B, H, T, D = q.shape
    for bh in prange(B * H):
        bi = bh // H
        h = bh % H
        p = np.empty(S, np.float32)  # scores, then weights, of one query
        acc = np.empty(16, np.float32)
        bias_row = None if bias is None else bias[bi]
        for t in range(T):
            _attend_query(q[bi, h, t], k[bi, h], v[bi, h], S - T + t, allowed[bi], bias_row, p,
                          out[bi, t, h * D:(h + 1) * D], acc)


def _mask_arrays(key_mask: np.ndarray | None, B: int, S: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(allowed bool [B, S], bias float32 [B, S] or None) from a key mask.

    bool / integer masks: nonzero = attend.  Float masks are additive: the value
    is added to the score, and a value <= -1e9 (or -inf) masks the key.
    """
    if key_mask is None:
        return _ro(np.ones((B, S), np.bool_)), None
    m = np.asarray(key_mask)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] < S or m.shape[0] not in (1, B):
        raise ValueError(f"key_mask must be [B={B}, >= S={S}], got {m.shape}")
    m = np.broadcast_to(m[:, :S], (B, S))
    if m.dtype.kind == "f":
        m32 = m.astype(np.float32)
        allowed = m32 > _MASKED_AT_OR_BELOW
        bias = np.where(allowed, m32, np.float32(0.0)).astype(np.float32)
        return _ro(allowed), _ro(bias)
    if m.dtype != np.bool_:
        m = m != 0
    return _ro(np.ascontiguousarray(m)), None


def attend_cached(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, S: int,
                  key_mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax attention of T new queries over the first S cached keys/values.

    q [B, H, T, D], k_cache / v_cache [B, H, S_cap, D] (float32, first S filled),
    key_mask [B, S] (or [B, >= S]; bool/int: True = attend; float: additive) or
    None -> out [B, H, T, D].

    Definition (float32): query t is at position S - T + t and attends to keys
    j <= S - T + t that the mask allows; ``scores = q @ k.T / sqrt(D) + mask``;
    ``out = softmax(scores) @ v`` with masked keys weighted exactly 0; a query
    with no allowed key returns zeros.  Parallel over (B, H).

    The result is a view: its memory holds [B, T, H * D], the heads merged, so that
    ``out.transpose(0, 2, 1, 3).reshape(B, T, H * D)`` (the input of ``out_proj``) copies nothing.
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    B, H, T, D = q.shape
    if k_cache.shape[:2] != (B, H) or k_cache.shape[3] != D or v_cache.shape != k_cache.shape:
        raise ValueError(f"cache shapes {k_cache.shape} / {v_cache.shape} do not fit q {q.shape}")
    if not (T <= S <= k_cache.shape[2]):
        raise ValueError(f"need T={T} <= S={S} <= S_cap={k_cache.shape[2]}")
    k_cache = np.ascontiguousarray(k_cache, dtype=np.float32)
    v_cache = np.ascontiguousarray(v_cache, dtype=np.float32)
    allowed, bias = _mask_arrays(key_mask, B, S)
    out = np.empty((B, T, H * D), np.float32)  # heads merged
    if T < ATTEND_BLOCK_MIN_T:
        _attend(_ro(q), _ro(k_cache), _ro(v_cache), S, allowed, bias, out)
        return out.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    # Many queries (a prompt): blocks of 4 queries against a transposed copy of the keys.
    Dp, NK = -(-D // _LANES) * _LANES, -(-S // 32) * 32
    scratch = _tile_buffer(2 * B * H * Dp * NK)  # reused: no fresh pages at every layer
    kts = scratch[: B * H * Dp * NK].reshape(B * H, Dp, NK)
    vps = scratch[B * H * Dp * NK:].reshape(B * H, NK, Dp)
    _attend_prompt(_ro(q), _ro(k_cache), _ro(v_cache), S, allowed, bias, out, kts, vps)
    return out.reshape(B, T, H, D).transpose(0, 2, 1, 3)


# attend_cached with at least this many queries uses _attend_prompt, fewer _attend's one query
# at a time (measured with 16 heads of 64, S = 512, _attend_prompt against _attend: T = 8 1.2 ms
# against 0.7, T = 16 1.4 against 2.0; and T = 512 7.5 ms against 14 for the BLAS products
# _attend_prompt replaced).
ATTEND_BLOCK_MIN_T = 16


@njit(inline="always", error_model="numpy")
def _row_max(row, j0, n, acc):  # pragma: no cover - compiled
    """max(row[j0:n]), NaN ignored (-inf for n = j0), over 16 running maxima in acc [16]
    (scratch): one chain of compares, whose latency bounds the loop, becomes 16."""
    acc[:] = -np.inf
    n16 = n - (n - j0) % 16
    for j in range(j0, n16, 16):
        for lane in range(16):
            v = row[j + lane]
            acc[lane] = v if v > acc[lane] else acc[lane]
    m = np.float32(-np.inf)
    for lane in range(16):
        m = acc[lane] if acc[lane] > m else m
    for j in range(n16, n):
        m = row[j] if row[j] > m else m
    return m


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _softmax_row(row, j0, n, allowed, bias, scale, acc):  # pragma: no cover - compiled
    """In place: row[j0:n] holds the scores q.k_j of keys j0 <= j < n; becomes the softmax over
    the keys with allowed[j] of row / scale (+ bias[j]), exactly 0 for the others; all 0 when
    no key is allowed.  A NaN score makes its row NaN.  acc [16] is scratch."""
    visible = 0
    for j in range(j0, n):
        s = row[j] / scale
        if bias is not None:
            s += bias[j]
        row[j] = s if allowed[j] else np.float32(-np.inf)
        visible += allowed[j]
    if visible == 0:
        row[j0:n] = 0.0
        return
    m = _row_max(row, j0, n, acc)
    tot = np.float32(0.0)
    for j in range(j0, n):
        e = _exp_f32(row[j] - m)  # exactly 0 for masked keys (exp(-inf))
        row[j] = e
        tot += e
    inv = np.float32(1.0) / tot
    for j in range(j0, n):
        row[j] *= inv


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _softmax_dense(row, n, scale, acc):  # pragma: no cover - compiled
    """_softmax_row(row, 0, n, ...) where all n keys are allowed and there is no bias: the
    same values in two passes fewer.  max(row / scale) = max(row) / scale (rounding is
    monotone), so the scores are divided by scale where they are exponentiated."""
    if n == 0:
        return
    m = _row_max(row, 0, n, acc) / scale
    tot = np.float32(0.0)
    for j in range(n):
        e = _exp_f32(row[j] / scale - m)
        row[j] = e
        tot += e
    inv = np.float32(1.0) / tot
    for j in range(n):
        row[j] *= inv


# ---------------------------------------------------------------------------
# Attention of a prompt: blocks of 4 queries, written as explicit SIMD code.
#
# For each (row, head), in parallel: copy the keys transposed, kt [Dp, NK]
# (Dp = D rounded up to 16, its extra rows zero; NK = S rounded up to 32; in
# 16 x 16 blocks transposed in registers where D = Dp), and the values, vp
# [NK, Dp] (only where D < Dp: else the cache's rows are read in place); then
# for each block of 4 queries t0..t0+3 with n keys visible to the last of them,
# two small matrix products (_matmul_rows) around a softmax (_softmax_dense
# where the row has no padding and no bias):
#
#     p[u, j] = sum_d q[t0+u, d] * kt[d, j]        4 queries x 64 keys at a time
#     p[u] = softmax of p[u] / sqrt(D) (+ mask) over the keys query u sees
#     o[u, :] = sum_{j < n} p[u, j] * vp[j, :]     4 queries x 64 of D at a time
#
# Everything stays in L1/L2; the sums run in a fixed order (over d, then over
# j), so results do not depend on thread count.  This replaced two BLAS calls
# per chunk of queries, whose thread wake-ups and 4-8 MB score buffers made
# them twice as slow at T = 512.
# ---------------------------------------------------------------------------


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _attend_prompt(q, k, v, S, allowed, bias, out, kts, vps):  # pragma: no cover - compiled
    """The same function as _attend (see there), in blocks of 4 queries (see the section
    comment).  kts [B*H, Dp, NK], vps [B*H, NK, Dp] are scratch; Dp = D rounded up to 16,
    NK = S rounded up to 32."""
    B, H, T, D = q.shape
    Dp = kts.shape[1]
    NK = kts.shape[2]
    scale = np.float32(math.sqrt(D))
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        kt = kts[bh]
        vp = vps[bh]
        kt[D:] = 0.0  # (columns past S and vp's extra columns are never used)
        j16 = S - S % 16 if D == Dp else 0  # keys transposed in 16 x 16 blocks in registers
        for j in range(0, j16, 16):
            for d in range(0, D, 16):
                _transpose_add16(k[b, h], j, d, _MINUS_ZEROS, 0, kt, d, j)
        for j in range(j16, S):
            for d in range(D):
                kt[d, j] = k[b, h, j, d]
        for j in range(S if D < Dp else 0):  # (D a multiple of 16: the values are read in place)
            vp[j, :D] = v[b, h, j]
        acc = np.empty(16, np.float32)
        qb = np.zeros((_U, Dp), np.float32)
        p = np.empty((_U, NK), np.float32)
        ob = np.empty((_U, Dp), np.float32)
        bias_row = None if bias is None else bias[b]
        dense = bias is None  # every key allowed, no bias (a row without padding): _softmax_dense
        for j in range(S):
            dense = dense and allowed[b, j]
        for t0 in range(0, T, _U):
            nq = min(_U, T - t0)
            for u in range(nq):
                qb[u, :D] = q[b, h, t0 + u]
            n = S - T + t0 + nq  # keys up to the position of the block's last query
            _matmul_rows(qb, kt, Dp, (n + 15) // 16 * 16, p, False)  # scores (NK >= n rounded up to 16)
            for u in range(_U):
                nu = S - T + t0 + u + 1 if u < nq else 0  # keys query u may see
                if dense:
                    _softmax_dense(p[u], nu, scale, acc)
                else:
                    _softmax_row(p[u], 0, nu, allowed[b], bias_row, scale, acc)
                p[u, nu:n] = 0.0
            if D == Dp:  # weights x values
                _matmul_rows(p, v[b, h], n, Dp, ob, False)
            else:
                _matmul_rows(p, vp, n, Dp, ob, False)
            for u in range(nq):
                out[b, t0 + u, h * D:(h + 1) * D] = ob[u, :D]
