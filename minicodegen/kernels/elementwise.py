"""Element-wise ops in one pass over memory: ``layer_norm``, ``gelu_new``, ``apply_rotary``.

Kernels: ``_layer_norm`` (``_layer_norm_row``; statistics in float64), ``_gelu_new``
(``_gelu_scalar``: the tanh GELU as x / (1 + exp(-2u)) with ``simd._exp_f32``), ``_rotary``
(``_rotate``: one head, no fused multiply-add).  The fused decode block reuses
``_layer_norm``, ``_gelu_new`` and ``_rotate``.

Tested against (tests/test_kernels_elementwise.py): ``ops.layer_norm`` and the float64
``(x - mean) / sqrt(var + eps) * g + b``; ``ops.gelu_new`` and the float64
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; ``ops.apply_rotary`` bit for bit, and the
rotation written with complex numbers.
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
    if rotary_dim % 2 or not 0 <= rotary_dim <= D:
        raise ValueError(f"rotary_dim must be even and <= D={D}, got {rotary_dim}")
    sincos = np.asarray(sincos, dtype=np.float32)
    if sincos.shape != (B, T, rotary_dim):
        sincos = np.ascontiguousarray(np.broadcast_to(sincos, (B, T, rotary_dim)))
    if out is None:
        out = np.empty((B, T, H, D), np.float32)
    _rotary(_ro(x), _ro(sincos), rotary_dim, out)
    return out
