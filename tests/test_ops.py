"""Each op in minicodegen.ops against its closed-form definition (float64, random shapes and values)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minicodegen import ops

settings.register_profile("ops", max_examples=60, deadline=None)
settings.load_profile("ops")

dims = st.integers(1, 9)
seeds = st.integers(0, 2**32 - 1)


def rand(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@given(seeds, dims, st.integers(2, 70), st.floats(1e-6, 1e-3))
@example(seed=4495, rows=4, n=2, eps=0.00010460620053374726)  # nearly equal values: see err below
def test_layer_norm_is_standardize_then_affine(seed, rows, n, eps):
    x = rand(seed, rows, n, scale=3.0) + 5.0
    g, b = rand(seed + 1, n), rand(seed + 2, n)
    y = ops.layer_norm(x, g, b, eps)
    assert y.dtype == np.float32
    z = ops.layer_norm(x, np.ones(n, np.float32), np.zeros(n, np.float32), eps).astype(np.float64)
    x64 = x.astype(np.float64)
    var = x64.var(axis=-1)
    # float32 rounds x - mean(x) by up to a few ulps of |x|: after the division that is an
    # absolute error of about u |x| / std per element, large for a row of nearly equal values
    # (hypothesis found one: n = 2, values near 5, std 0.01, error 2e-5).
    err = 8 * 2.0**-24 * np.abs(x64).max(axis=-1) / np.sqrt(var + eps)  # [rows]
    assert np.all(np.abs(z.mean(axis=-1)) <= 1e-5 + err)
    assert np.all(np.abs(z.var(axis=-1) - var / (var + eps)) <= 1e-4 * var / (var + eps) + 1e-5 + 4 * err)  # 1 when eps ≪ var
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(var[:, None] + eps) * g + b
    assert np.all(np.abs(y - expected) <= 1e-4 * np.abs(expected) + 1e-4 + err[:, None] * np.abs(g))


@given(arrays(np.float32, st.integers(1, 50), elements=st.floats(-20, 20, width=32)))
def test_gelu_new_formula(x):
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    np.testing.assert_allclose(ops.gelu_new(x), expected, rtol=1e-5, atol=1e-6)


@given(seeds, dims, st.integers(1, 40), st.floats(-50, 50))
def test_softmax_sums_to_one_and_ignores_shift(seed, rows, n, shift):
    x = rand(seed, rows, n, scale=5.0)
    p = ops.softmax(x)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (p >= 0).all()
    np.testing.assert_allclose(ops.softmax(x + np.float32(shift)), p, rtol=1e-4, atol=1e-6)
    e = np.exp(x.astype(np.float64))
    np.testing.assert_allclose(p, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


@given(st.integers(1, 300), st.sampled_from([2, 8, 16, 32, 64]))
def test_sinusoid_table_matches_formula(n_pos, d):
    table = ops.sinusoid_table(n_pos, d)
    assert table.shape == (n_pos, d) and table.dtype == np.float32
    inv_freq = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
    theta = np.arange(n_pos)[:, None] * inv_freq[None, :]
    np.testing.assert_allclose(table, np.concatenate([np.sin(theta), np.cos(theta)], 1), atol=2e-4)


def test_sinusoid_table_matches_transformers_within_one_ulp():
    from transformers.models.codegen.modeling_codegen import create_sinusoidal_positions

    for d in (8, 32, 64, 80, 256):
        ours, theirs = ops.sinusoid_table(2048, d), create_sinusoidal_positions(2048, d).numpy()
        ulp = np.spacing(np.abs(theirs).astype(np.float32))
        assert (np.abs(ours - theirs) <= 2 * ulp).all(), d
        assert (ours == theirs).mean() > 0.9, d


@given(seeds, dims, dims, st.integers(1, 4), st.sampled_from([(2, 2), (4, 8), (8, 8), (16, 20)]))
def test_rotary_is_complex_rotation_of_each_pair(seed, B, T, H, dims_):
    rotary_dim, D = dims_
    x = rand(seed, B, T, H, D)
    pos = np.random.default_rng(seed).integers(0, 500, size=(B, T))
    table = ops.sinusoid_table(500, rotary_dim)
    y = ops.apply_rotary(x, table[pos], rotary_dim)
    # pair (2i, 2i+1) as a complex number times e^{iθ}, θ = pos / 10000^(2i/rotary_dim)
    z = x[..., :rotary_dim:2].astype(np.float64) + 1j * x[..., 1:rotary_dim:2]
    theta = pos[:, :, None, None] / 10000 ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    w = z * np.exp(1j * theta)
    np.testing.assert_allclose(y[..., :rotary_dim:2], w.real, atol=2e-4)
    np.testing.assert_allclose(y[..., 1:rotary_dim:2], w.imag, atol=2e-4)
    np.testing.assert_array_equal(y[..., rotary_dim:], x[..., rotary_dim:])  # the rest passes through
    np.testing.assert_allclose(np.abs(y[..., :rotary_dim:2] + 1j * y[..., 1:rotary_dim:2]), np.abs(z), rtol=1e-4)


@given(seeds, st.sampled_from([4, 8, 12]), st.sampled_from([2, 3, 8]))
def test_split_qkv_follows_the_mp4_layout(seed, H, D):
    E = H * D
    qkv = rand(seed, 2, 3, 3 * E)
    q, k, v = ops.split_qkv(qkv, H)
    local = E // 4
    for h in range(H):  # head h lives in mp block h // (H/4), as [q | v | k] there
        block, j = divmod(h, H // 4)
        base = block * 3 * local + j * D
        np.testing.assert_array_equal(q[:, :, h], qkv[:, :, base : base + D])
        np.testing.assert_array_equal(v[:, :, h], qkv[:, :, base + local : base + local + D])
        np.testing.assert_array_equal(k[:, :, h], qkv[:, :, base + 2 * local : base + 2 * local + D])


@given(seeds, st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(0, 5), st.integers(1, 8))
def test_attention_equals_explicit_loop(seed, B, H, T, past, D):
    S = past + T
    q, k, v = rand(seed, B, H, T, D), rand(seed + 1, B, H, S, D), rand(seed + 2, B, H, S, D)
    rng = np.random.default_rng(seed)
    key_mask = np.ones((B, S), np.int8)
    pads = rng.integers(0, S, size=B)  # left padding per row
    for b in range(B):
        key_mask[b, : pads[b]] = 0
    mask = ops.causal_mask(key_mask, T)
    out, probs = ops.attention(q, k, v, mask)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                keys = [s for s in range(S) if s <= past + t and key_mask[b, s]]
                if not keys:
                    continue  # a padding query: never read
                sc = np.array([q[b, h, t].astype(np.float64) @ k[b, h, s] / math.sqrt(D) for s in keys])
                w = np.exp(sc - sc.max())
                w /= w.sum()
                np.testing.assert_allclose(out[b, h, t], w @ v[b, h, keys].astype(np.float64), rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(probs[b, h, t, keys], w, rtol=1e-4, atol=1e-6)
                assert (np.delete(probs[b, h, t], keys) == 0).all()  # masked keys get exactly 0


@given(seeds, dims, st.integers(2, 40), st.integers(2, 60))
def test_mlp_is_fc_out_gelu_fc_in(seed, rows, E, F):
    x, w_in, b_in = rand(seed, rows, E), rand(seed + 1, F, E), rand(seed + 2, F)
    w_out, b_out = rand(seed + 3, E, F), rand(seed + 4, E)
    h = x.astype(np.float64) @ w_in.T + b_in
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(ops.mlp(x, w_in, b_in, w_out, b_out), h @ w_out.T + b_out, rtol=1e-4, atol=1e-4)
