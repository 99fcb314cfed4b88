"""layer_norm, gelu_new, apply_rotary and rope_into_cache (minicodegen.kernels.elementwise) against
float64 closed forms and ops.layer_norm / ops.gelu_new / ops.apply_rotary / ops.split_qkv (the last
two bit for bit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_helpers import SETTINGS, U, odd_sizes, ops, readonly, seeds

from minicodegen import kernels as K


@SETTINGS
@given(seeds, st.integers(1, 9), odd_sizes, st.floats(1e-6, 1e-3))
def test_layer_norm(seed, rows, E, eps):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, E)) * 3 + 5).astype(np.float32)
    g = rng.standard_normal(E).astype(np.float32)
    b = rng.standard_normal(E).astype(np.float32)
    y = K.layer_norm(readonly(x), readonly(g), readonly(b), eps)
    x64 = x.astype(np.float64)
    xhat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
    ref = xhat * g + b
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * (np.abs(xhat * g).max() + np.abs(b).max()))
    if ops is not None and hasattr(ops, "layer_norm"):
        np.testing.assert_allclose(y, ops.layer_norm(x, g, b, eps), rtol=0,
                                   atol=2e-5 * (np.abs(xhat * g).max() + np.abs(b).max()))


@SETTINGS
@given(seeds, st.integers(1, 5), odd_sizes, st.booleans())
def test_gelu_new(seed, rows, n, in_place):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    y = K.gelu_new(x, out=x) if in_place else K.gelu_new(readonly(x))
    assert y.dtype == np.float32 and y.shape == x.shape
    # float32 evaluation of the formula: 1 + tanh(u) carries an absolute error of a few ulp of 1,
    # so for very negative x (result near 0) the error is relative to |x|, not to the result
    tol = 2e-6 * np.abs(ref) + 4 * U * np.abs(x64) + 1e-30
    assert np.all(np.abs(y - ref) <= tol)
    if ops is not None and hasattr(ops, "gelu_new") and not in_place:
        assert np.all(np.abs(y - ops.gelu_new(x)) <= 2 * tol)


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 9), st.integers(1, 5), st.sampled_from([2, 8, 17, 64, 80]), st.data())
def test_apply_rotary(seed, B, T, H, D, data):
    rd = data.draw(st.sampled_from([r for r in (0, 2, 4, 8, 16, 32, 64) if r <= D]))
    rng = np.random.default_rng(seed)
    wide = rng.standard_normal((B, T, H, 2 * D)).astype(np.float32)
    x = wide[..., ::2]  # a strided view, like the heads split out of the fused projection
    theta = rng.uniform(-50, 50, (B, T, rd // 2))
    sincos = np.concatenate([np.sin(theta), np.cos(theta)], -1).astype(np.float32)
    y = K.apply_rotary(x, readonly(sincos), rd)
    # closed form: pair (2i, 2i+1) as a complex number times e^{i theta}
    x64, s64, c64 = x.astype(np.float64), sincos[..., : rd // 2, None], sincos[..., rd // 2 :, None]
    z = (x64[..., 0:rd:2] + 1j * x64[..., 1:rd:2]) * (c64 + 1j * s64).transpose(0, 1, 3, 2)
    ref = x64.copy()
    ref[..., 0:rd:2], ref[..., 1:rd:2] = z.real, z.imag
    np.testing.assert_allclose(y, ref, rtol=0, atol=4 * U * (np.abs(x).max() + 1))
    if ops is not None and hasattr(ops, "apply_rotary"):
        np.testing.assert_array_equal(y, ops.apply_rotary(x, sincos, rd))  # bit for bit


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 9), st.sampled_from([4, 8, 12]), st.sampled_from([2, 8, 64, 80]),
       st.integers(0, 5), st.data())
def test_rope_into_cache_equals_split_rotary_and_cache_writes(seed, B, T, H, D, S0, data):
    """One pass, the same bits as ops.split_qkv, ops.apply_rotary on q and k, and the cache slots
    S0 .. S0 + T - 1 written with NumPy; the cache's other slots untouched."""
    rd = data.draw(st.sampled_from([r for r in (0, 2, 8, 32, 64) if r <= D]))
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    theta = rng.uniform(-50, 50, (B, T, rd // 2))
    sincos = np.concatenate([np.sin(theta), np.cos(theta)], -1).astype(np.float32)
    S_cap = S0 + T + data.draw(st.integers(0, 3))
    k_cache = rng.standard_normal((B, H, S_cap, D)).astype(np.float32)
    v_cache = rng.standard_normal((B, H, S_cap, D)).astype(np.float32)
    k_ref, v_ref = k_cache.copy(), v_cache.copy()

    q = K.rope_into_cache(readonly(qkv), readonly(sincos), rd, H, k_cache, v_cache, S0)

    q_ref, k, v = ops.split_qkv(qkv, H)
    k_ref[:, :, S0:S0 + T] = ops.apply_rotary(k, sincos, rd).transpose(0, 2, 1, 3)
    v_ref[:, :, S0:S0 + T] = v.transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(q, ops.apply_rotary(q_ref, sincos, rd).transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(k_cache, k_ref)
    np.testing.assert_array_equal(v_cache, v_ref)


def test_rope_into_cache_argument_checks():
    qkv = np.zeros((1, 2, 96), np.float32)
    kv = np.zeros((1, 4, 3, 8), np.float32)
    for bad, message in (
        (dict(qkv=np.zeros((1, 2, 95), np.float32)), "last axis"),
        (dict(rotary_dim=3), "rotary_dim"),
        (dict(S0=2), "k_cache must be"),
        (dict(k_cache=np.zeros((1, 4, 3, 4), np.float32)), "k_cache must be"),
        (dict(v_cache=np.zeros((1, 4, 3, 8), np.float64)), "v_cache must be"),
        (dict(v_cache=readonly(kv.copy())), "v_cache must be"),
    ):
        args = dict(qkv=qkv, sincos=np.zeros((1, 2, 4), np.float32), rotary_dim=4, n_head=4, k_cache=kv.copy(),
                    v_cache=kv.copy(), S0=1) | bad
        with pytest.raises(ValueError, match=message):
            K.rope_into_cache(**args)
