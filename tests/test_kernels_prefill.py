"""The prompt path of linear_bf16 / linear_int8 (minicodegen.kernels.prefill: packed tokens, panels
of widened weights) against the float64 product of the widened or dequantized weights."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, check_linear, odd_sizes, seeds, to_bf16, widen

from minicodegen import kernels as K


@SETTINGS
@given(seeds, st.integers(K.STREAM_MAX_T + 1, 200), odd_sizes, st.sampled_from([1, 17, 127, 128, 129, 300]),
       st.booleans(), st.booleans())
def test_prefill_linear_bf16_int8(seed, T, n_out, n_in, with_bias, int8):
    """The prompt path (_prefill_linear): several blocks of 64 tokens and chunks of 128 inputs,
    partial blocks, chunks and panels at every edge."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if with_bias else None
    if int8:
        Wq = rng.integers(-128, 128, (n_out, n_in)).astype(np.int8)
        scale = (rng.random(n_out) * 0.1 + 1e-3).astype(np.float32)
        y = K.linear_int8(x, Wq, scale, b, int8_activations=False)  # (int8 activations: test_kernels_integer.py)
        check_linear(y, x, Wq.astype(np.float64) * scale[:, None].astype(np.float64), b, extra_terms=1)
    else:
        W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
        y = K.linear_bf16(x, W16, b)
        check_linear(y, x, widen(W16).astype(np.float64), b)


def test_prefill_linear_ignores_stale_scratch():
    """The scratch buffer is reused between calls: a call with fewer tokens or inputs than the
    one before must not pick up the earlier call's sums, panel rows or packed tokens (a
    kernel that adds to the sums of the first chunk of inputs fails here)."""
    rng = np.random.default_rng(7)
    big = to_bf16(rng.standard_normal((130, 300)).astype(np.float32))
    K.linear_bf16(np.full((150, 300), np.nan, np.float32), big)  # fills the scratch with NaN
    for T, n_out, n_in in [(10, 70, 129), (65, 3, 5), (9, 64, 128)]:
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        W16 = to_bf16(rng.standard_normal((n_out, n_in)).astype(np.float32))
        check_linear(K.linear_bf16(x, W16), x, widen(W16).astype(np.float64), None)
