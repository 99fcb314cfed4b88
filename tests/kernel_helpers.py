"""What the tests of the kernels (tests/test_kernels_*.py) share: error bounds, strategies,
bf16 conversions.

References are closed forms evaluated in float64 (and, where they exist, the readable functions
of ``minicodegen.ops``).  Tolerances for dot products are the classical error bound of a float32
sum of n products, gamma_n * sum|x_i * w_i| with gamma_n = n u / (1 - n u), u = 2^-24: whichever
order the kernel adds in (SIMD partial sums, FMA, BLAS blocking), it stays inside that bound.
Shapes include sizes that are not multiples of the SIMD width, T on both sides of the streaming /
BLAS switch, read-only and memory-mapped weights.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from minicodegen import kernels as K

try:
    from minicodegen import ops
except ImportError:  # pragma: no cover - ops is written alongside
    ops = None

U = 2.0**-24
SETTINGS = settings(max_examples=25, deadline=None, derandomize=False)

odd_sizes = st.sampled_from([1, 2, 3, 7, 16, 17, 31, 63, 64, 65, 130])
Ts = st.integers(1, K.STREAM_MAX_T + 1)  # 1..9: streaming kernel and the BLAS / tile path
seeds = st.integers(0, 2**32 - 1)


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def to_bf16(w: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (round to nearest even), as uint16."""
    u = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def widen(w16: np.ndarray) -> np.ndarray:
    return (w16.astype(np.uint32) << 16).view(np.float32)


def check_linear(y, x, Wf64, b, extra_terms: int = 0):
    """|y - ref| <= gamma_{n+2} (|x| @ |W|.T + |b|) elementwise, ref in float64."""
    x64 = x.astype(np.float64)
    ref = x64 @ Wf64.T
    mag = np.abs(x64) @ np.abs(Wf64).T
    if b is not None:
        ref = ref + b
        mag = mag + np.abs(b)
    tol = gamma(x.shape[-1] + 2 + extra_terms) * mag + 1e-30
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max err/tol {np.max(err / tol):.3g}"
