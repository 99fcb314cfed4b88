"""Element-wise ops in one pass over memory: ``layer_norm``, ``gelu_new``, ``apply_rotary``,
``rope_into_cache`` (a prompt's fused projection split into heads, rotated, keys and values
stored in the KV cache).

Kernels: ``_layer_norm`` (``_layer_norm_row``; statistics in float64), ``_gelu_new``
(``_gelu_scalar``: the tanh GELU as x / (1 + exp(-2u)) with ``simd._exp_f32``), ``_rotary``
(``_rotate``: one head, no fused multiply-add), ``_rope_into_cache`` (``_rope_head``: one
token's head).  The fused decode block reuses ``_layer_norm``, ``_gelu_new`` and ``_rope_head``.

Tested against (tests/test_kernels_elementwise.py): ``ops.layer_norm`` and the float64
``(x - mean) / sqrt(var + eps) * g + b``; ``ops.gelu_new`` and the float64
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; ``ops.apply_rotary`` bit for bit, and the
rotation written with complex numbers; ``rope_into_cache`` bit for bit against ``ops.split_qkv``,
``ops.apply_rotary`` and the cache written with NumPy.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .arrays import _prep_vec, _ro
from .simd import _FM, _exp_f32


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _layer_norm(x, g, b, eps, y):  # pragma: no cover - compiled
    """Row-wise (x - mean) / sqrt(var + eps) * g + b; x, y [N, E]; stats in float64."""
    for r in prange(x.shape[0]):
        _layer_norm_row(x[r], g, b, eps, y[r])


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _layer_norm_row(xr, g, b, eps, yr):  # pragma: no cover - compiled
    """One row of _layer_norm: xr, yr [E]."""
    E = xr.shape[0]
    mean = 0.0
    for i in range(E):
        mean += xr[i]
    mean /= E
    var = 0.0
    for i in range(E):
        d = xr[i] - mean
        var += d * d
    var /= E
    rstd = 1.0 / math.sqrt(var + eps)
    for i in range(E):
        yr[i] = np.float32((xr[i] - mean) * rstd) * g[i] + b[i]


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Layer norm over the last axis: ``(x - mean) / sqrt(var + eps) * g + b``
    (biased variance, like torch.nn.LayerNorm).  x [..., E] f32 -> same shape."""
    x = np.asarray(x)
    E = x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, E), dtype=np.float32)
    g = _prep_vec(g, E, "g")
    b = _prep_vec(b, E, "b")
    y = np.empty_like(x2)
    _layer_norm(_ro(x2), g, b, float(eps), y)
    return y.reshape(x.shape)


_GELU_C2 = np.float32(2.0 * 0.7978845608028654)  # 2 sqrt(2/pi)
_GELU_A = np.float32(0.044715)


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _gelu_scalar(xi):  # pragma: no cover - compiled
    """0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 * x**3), computed as
    x / (1 + exp(-2u)): the same function (0.5 (1 + tanh u) is the logistic
    sigmoid of 2u), with the vectorizable _exp_f32: one exp and one division
    instead of a scalar libm tanh."""
    u2 = _GELU_C2 * (xi + _GELU_A * (xi * xi * xi))
    return xi / (np.float32(1.0) + _exp_f32(-u2))


@njit(parallel=True, fastmath={"contract"}, error_model="numpy", cache=True)
def _gelu_new(x, y):  # pragma: no cover - compiled
    """y = gelu_new(x) element-wise (see _gelu_scalar); x, y flat float32."""
    for i in prange(x.shape[0]):
        y[i] = _gelu_scalar(x[i])


def gelu_new(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GPT-2 / CodeGen tanh GELU, ``0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))``.

    x float32, any shape; ``out`` may be ``x`` itself (in place)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array shaped like x")
    _gelu_new(x.reshape(-1), out.reshape(-1))
    return out


@njit(error_model="numpy", cache=True)
def _rotate(xr, sc, rotary_dim, o):  # pragma: no cover - compiled
    """One head: o = xr with channel pairs (2i, 2i+1), i < rotary_dim / 2, rotated by
    the angle whose sin, cos are sc[i], sc[rotary_dim/2 + i]; other channels copied.
    No fused multiply-add (no fastmath), so it rounds exactly as ops.apply_rotary."""
    half = rotary_dim // 2
    for i in range(half):
        s = sc[i]
        c = sc[half + i]
        a = xr[2 * i]
        b2 = xr[2 * i + 1]
        o[2 * i] = a * c - b2 * s
        o[2 * i + 1] = b2 * c + a * s
    for d in range(rotary_dim, xr.shape[0]):
        o[d] = xr[d]


@njit(parallel=True, error_model="numpy", cache=True)
def _rotary(x, sincos, rotary_dim, out):  # pragma: no cover - compiled
    """GPT-J rotary embedding, like ops.apply_rotary (bit for bit: no fused
    multiply-add, so every product and sum rounds as NumPy's do).

    x [B, T, H, D] (any strides), sincos [B, T, rotary_dim] = [sin | cos],
    out [B, T, H, D].  Channel pair (2i, 2i+1) is rotated by angle i:
    (a, b) -> (a cos - b sin, b cos + a sin); channels >= rotary_dim are copied.
    """
    B, T, H, D = x.shape
    for bt in prange(B * T):
        bi = bt // T
        t = bt % T
        for h in range(H):
            _rotate(x[bi, t, h], sincos[bi, t], rotary_dim, out[bi, t, h])


def apply_rotary(x: np.ndarray, sincos: np.ndarray, rotary_dim: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Rotary embedding of the first ``rotary_dim`` channels of every head, equal
    bit for bit to ``ops.apply_rotary``; one pass instead of NumPy's temporaries.

    x [B, T, H, D] float32 (may be a strided view, e.g. from ops.split_qkv),
    sincos [B, T, rotary_dim] -> out [B, T, H, D] (new C-contiguous array, or
    ``out``)."""
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    B, T, H, D = x.shape
    sincos = _sincos_rows(sincos, B, T, rotary_dim, D)
    if out is None:
        out = np.empty((B, T, H, D), np.float32)
    _rotary(_ro(x), sincos, rotary_dim, out)
    return out


def _sincos_rows(sincos: np.ndarray, B: int, T: int, rotary_dim: int, D: int) -> np.ndarray:
    """sincos as the rotary kernels take it: read-only C-contiguous float32 [B, T, rotary_dim]
    (broadcast if given for fewer rows or tokens), once rotary_dim is checked against D."""
    if rotary_dim % 2 or not 0 <= rotary_dim <= D:
        raise ValueError(f"rotary_dim must be even and <= D={D}, got {rotary_dim}")
    sincos = np.asarray(sincos, dtype=np.float32)
    if sincos.shape != (B, T, rotary_dim):
        sincos = np.broadcast_to(sincos, (B, T, rotary_dim))
    return _ro(np.ascontiguousarray(sincos))


@njit(inline="always")
def _rope_head(qkv_row, sc, rotary_dim, n_head, mp_num, h, q, k, v):  # pragma: no cover - compiled
    """Head h of one token's qkv_proj output qkv_row [3E] (mp_num blocks of [q | v | k], see
    ops.split_qkv): q, k [D] = its query and key rotated by sc [rotary_dim] (see _rotate), v [D]
    = its value."""
    E = qkv_row.shape[0] // 3
    D = E // n_head
    part = E // mp_num
    base = (h // (n_head // mp_num)) * 3 * part + (h % (n_head // mp_num)) * D
    _rotate(qkv_row[base:base + D], sc, rotary_dim, q)
    _rotate(qkv_row[base + 2 * part:base + 2 * part + D], sc, rotary_dim, k)
    v[:] = qkv_row[base + part:base + part + D]


@njit(parallel=True, error_model="numpy", cache=True)
def _rope_into_cache(qkv, sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S0, q):  # pragma: no cover - compiled
    """For each row b, head h and token t: q[b, h, t] and k_cache[b, h, S0 + t] = the rotated
    query and key, v_cache[b, h, S0 + t] = the value (_rope_head).  qkv [B, T, 3E], sincos
    [B, T, rotary_dim], k_cache / v_cache [B, H, S_cap, D], q [B, H, T, D]."""
    B, T, _ = qkv.shape
    for bh in prange(B * n_head):
        b = bh // n_head
        h = bh % n_head
        for t in range(T):
            _rope_head(qkv[b, t], sincos[b, t], rotary_dim, n_head, mp_num, h, q[b, h, t],
                       k_cache[b, h, S0 + t], v_cache[b, h, S0 + t])


def rope_into_cache(qkv: np.ndarray, sincos: np.ndarray, rotary_dim: int, n_head: int,
                    k_cache: np.ndarray, v_cache: np.ndarray, S0: int, mp_num: int = 4) -> np.ndarray:
    """Split the fused projection into heads, rotate queries and keys, and store keys and values
    in the cache, in one pass; returns the rotated queries.  qkv [B, T, 3E], sincos [B, T,
    rotary_dim] -> q [B, H, T, D]; writes k_cache / v_cache [B, H, S_cap, D] at slots S0 .. S0 +
    T - 1.  The same bits as ``ops.split_qkv``, then ``ops.apply_rotary`` on q and k, then
    ``k_cache[:, :, S0:S0 + T] = k.transpose(0, 2, 1, 3)`` (and v)."""
    qkv = np.ascontiguousarray(qkv, dtype=np.float32)
    B, T, three_e = qkv.shape
    E = three_e // 3
    if three_e % 3 or E % n_head or n_head % mp_num:
        raise ValueError(f"qkv's last axis ({three_e}) must be 3 x n_head ({n_head}) x D, "
                         f"in mp_num ({mp_num}) blocks of whole heads")
    D = E // n_head
    sincos = _sincos_rows(sincos, B, T, rotary_dim, D)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if (c.dtype != np.float32 or not c.flags.c_contiguous or not c.flags.writeable
                or c.shape[:2] != (B, n_head) or c.shape[3] != D or not 0 <= S0 <= c.shape[2] - T):
            raise ValueError(f"{name} must be a writeable C-contiguous float32 [B={B}, H={n_head}, "
                             f">= S0 + T = {S0 + T}, D={D}] array, got {c.dtype} {c.shape}")
    q = np.empty((B, n_head, T, D), np.float32)
    _rope_into_cache(_ro(qkv), sincos, rotary_dim, n_head, mp_num, k_cache, v_cache, S0, q)
    return q
