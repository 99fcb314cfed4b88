"""The fused decode step (minicodegen.kernels.decode) against model.block's NumPy path, and its
last loop, _gemv_sum_into, against its float64 definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import gamma, ops, seeds, to_bf16, widen

from minicodegen import kernels as K
from minicodegen.kernels.arrays import _ro
from minicodegen.kernels.decode import _gemv_sum_into
from minicodegen.npz import quantize_int4


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 23), st.integers(1, 70), st.sampled_from(["float32", "bfloat16", "int8"]))
def test_gemv_sum_into_equals_its_definition(seed, B, E, n_inner, dtype):
    """The last loop of a decode step: x += a @ W1.T [* s1] + (hidden @ W2.T [* s2] + b2), four
    output rows a step; E not a multiple of 4 takes the rows of the last steps one by one (the
    model's E always is one, so only this test reaches that branch)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, E)).astype(np.float32)
    a = rng.standard_normal((B, E)).astype(np.float32)
    hidden = rng.standard_normal((B, n_inner)).astype(np.float32)
    W1 = rng.standard_normal((E, E)).astype(np.float32)
    W2 = rng.standard_normal((E, n_inner)).astype(np.float32)
    b2 = rng.standard_normal(E).astype(np.float32)
    s1 = s2 = None
    if dtype == "bfloat16":
        W1, W2 = to_bf16(W1), to_bf16(W2)
        V1, V2 = widen(W1).astype(np.float64), widen(W2).astype(np.float64)
    elif dtype == "int8":
        W1, W2 = (rng.integers(-127, 128, W.shape).astype(np.int8) for W in (W1, W2))
        s1, s2 = (rng.uniform(0.01, 0.1, E).astype(np.float32) for _ in range(2))
        V1, V2 = W1 * s1[:, None].astype(np.float64), W2 * s2[:, None].astype(np.float64)
    else:
        V1, V2 = W1.astype(np.float64), W2.astype(np.float64)
    want = x + a.astype(np.float64) @ V1.T + (hidden.astype(np.float64) @ V2.T + b2)
    bound = (np.abs(x) + np.abs(a).astype(np.float64) @ np.abs(V1).T + np.abs(hidden).astype(np.float64) @ np.abs(V2).T
             + np.abs(b2)) * gamma(max(E, n_inner) + 4)
    got = x.copy()
    _gemv_sum_into(got, _ro(a), _ro(W1), _ro(s1), _ro(hidden), _ro(W2), _ro(s2), _ro(b2), 4096)
    assert np.all(np.abs(got - want) <= bound + 1e-30)


def _random_layer(rng, E, n_inner, dtype):
    def mat(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)

    w = {
        "ln_1.weight": (1 + 0.1 * rng.standard_normal(E)).astype(np.float32),
        "ln_1.bias": (0.1 * rng.standard_normal(E)).astype(np.float32),
        "attn.qkv_proj.weight": mat(3 * E, E),
        "attn.out_proj.weight": mat(E, E),
        "mlp.fc_in.weight": mat(n_inner, E),
        "mlp.fc_in.bias": (0.1 * rng.standard_normal(n_inner)).astype(np.float32),
        "mlp.fc_out.weight": mat(E, n_inner),
        "mlp.fc_out.bias": (0.1 * rng.standard_normal(E)).astype(np.float32),
    }
    for name in [n for n in w if n.endswith(".weight") and w[n].ndim == 2]:
        if dtype == "bfloat16":
            w[name] = to_bf16(w[name])
        elif dtype == "int8":
            scale = np.abs(w[name]).max(axis=1) / 127
            w[name], w[name + ".scale"] = np.round(w[name] / scale[:, None]).astype(np.int8), scale.astype(np.float32)
        elif dtype == "int4":  # (groups of 32: n_in a multiple of 32)
            w[name], w[name + ".scale"] = quantize_int4(w[name], group=32)
    return w


@pytest.mark.parametrize("dtype,E,H,rotary_dim,n_inner", [
    *((dt, *shape) for dt in ("float32", "bfloat16", "int8") for shape in ((64, 8, 4, 256), (96, 4, 24, 200), (40, 4, 10, 17))),
    ("int4", 64, 8, 4, 256), ("int4", 96, 4, 24, 224),  # (int4: n_in a multiple of the group)
])
def test_decode_block_equals_the_numpy_block(dtype, E, H, rotary_dim, n_inner):
    from minicodegen import model as M

    rng = np.random.default_rng(E + n_inner)
    B, past = 3, 9
    cfg = M.Config(vocab_size=10, n_embd=E, n_layer=1, n_head=H, rotary_dim=rotary_dim, n_positions=32, n_inner=n_inner)
    layer = _random_layer(rng, E, n_inner, dtype)
    weights = {f"transformer.h.0.{k}": v for k, v in layer.items()}
    mask = np.ones((B, past + 1), np.int8)
    mask[1, :4] = 0  # row 1 is left-padded
    mask[2, :past] = 0  # row 2 sees only the new token
    caches = []
    for _ in range(2):
        c = M.new_cache(cfg, B, past + 4)
        for kv in (c.k[0], c.v[0]):
            kv[:, :, :past] = rng.standard_normal((B, H, past, E // H)).astype(np.float32)
        c.mask[:, : past + 1] = mask
        c.length = past
        caches.append(c)
    caches[1].k[0][:] = caches[0].k[0]
    caches[1].v[0][:] = caches[0].v[0]
    x = rng.standard_normal((B, 1, E)).astype(np.float32)
    sincos = ops.sinusoid_table(32, rotary_dim)[np.array([[past], [past - 4], [0]])]  # [B, 1, rotary_dim]
    slow = M.block(x, weights, 0, cfg, sincos, caches[0], fast=False, trace=None)
    fast = M.block(x, weights, 0, cfg, sincos, caches[1], fast=True, trace=None)  # T = 1: decode_block
    assert fast.shape == slow.shape == (B, 1, E)
    assert np.abs(fast - slow).max() <= 1e-4 * max(1.0, np.abs(slow).max())
    for a, b in ((caches[0].k[0], caches[1].k[0]), (caches[0].v[0], caches[1].v[0])):
        assert np.abs(a - b).max() <= 1e-5  # the new key (rotated) and value went to slot `past`
    assert not np.shares_memory(fast, x) and np.abs(x).max() > 0  # the input stays as it was


def test_decode_block_argument_checks():
    rng = np.random.default_rng(0)
    layer = _random_layer(rng, 16, 32, "int8")
    k = np.zeros((1, 4, 4, 4), np.float32)
    allowed = np.ones((1, 4), bool)
    sc = np.zeros((1, 2), np.float32)
    del layer["mlp.fc_in.weight.scale"]
    with pytest.raises(ValueError, match="scale"):
        K.decode_block(np.zeros((1, 16), np.float32), layer, 1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    layer = _random_layer(rng, 16, 32, "float32")
    with pytest.raises(ValueError, match="cache"):
        K.decode_block(np.zeros((1, 16), np.float32), layer, 1e-5, sc, 2, 4, k, k.copy(), 5, allowed)
    with pytest.raises(ValueError, match="float32"):
        K.decode_block(np.zeros((1, 16), np.float64), layer, 1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    with pytest.raises(ValueError, match="fc_out.weight has shape"):  # the kernels do not check bounds
        K.decode_block(np.zeros((1, 16), np.float32), layer | {"mlp.fc_out.weight": np.zeros((16, 31), np.float32)},
                       1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    with pytest.raises(ValueError, match="ln_1.bias"):
        K.decode_block(np.zeros((1, 16), np.float32), layer | {"ln_1.bias": np.zeros(15, np.float32)},
                       1e-5, sc, 2, 4, k, k.copy(), 2, allowed)
    with pytest.raises(ValueError, match="sincos"):
        K.decode_block(np.zeros((1, 16), np.float32), layer, 1e-5, np.zeros((1, 4), np.float32), 2, 4, k, k.copy(), 2,
                       allowed)
    with pytest.raises(ValueError, match="2 layers, 1 key caches"):
        K.decode_layers(np.zeros((1, 16), np.float32), [layer, layer], 1e-5, sc, 2, 4, [k], [k.copy()], 2, allowed)
    with pytest.raises(ValueError, match="cache"):  # every block's cache is checked
        K.decode_layers(np.zeros((1, 16), np.float32), [layer, layer], 1e-5, sc, 2, 4, [k, k[:, :2]],
                        [k.copy(), k[:, :2].copy()], 2, allowed)


@pytest.mark.parametrize("dtype,int8_activations", [("float32", True), ("bfloat16", True), ("int8", True), ("int8", False),
                                                    ("int4", True)])
def test_a_row_of_a_batch_decodes_as_it_would_alone(dtype, int8_activations):
    """decode_layers on B = 7 rows (groups of 4, 2 and 1 rows of the batch per row of W) gives each
    row, bit for bit, what B = 1 gives it: the sums run in the same order whatever the batch (and
    the int8 path quantizes each row on its own and sums integers exactly; int4 adds its groups'
    sums in the same lanes and order for every row)."""
    rng = np.random.default_rng(11)
    E, H, n_inner, B, S = 64, 4, 256, 7, 5
    layer = K.decode_weights(_random_layer(rng, E, n_inner, dtype), E, int8_activations)
    x = rng.standard_normal((B, E)).astype(np.float32)
    sincos = rng.standard_normal((B, 8)).astype(np.float32)
    kv = rng.standard_normal((2, B, H, S, E // H)).astype(np.float32)
    allowed = np.ones((B, S), bool)
    allowed[2, :2] = False
    batch = K.decode_layers(x.copy(), [layer, layer], 1e-5, sincos, 8, H, [kv[0].copy()] * 2, [kv[1].copy()] * 2, S,
                            allowed)
    for t in range(B):
        alone = K.decode_layers(x[t:t + 1].copy(), [layer, layer], 1e-5, sincos[t:t + 1], 8, H,
                                [kv[0][t:t + 1].copy()] * 2, [kv[1][t:t + 1].copy()] * 2, S, allowed[t:t + 1])
        np.testing.assert_array_equal(batch[t], alone[0])


@pytest.mark.parametrize("pad", [1, 2, 3, 6])
def test_a_row_behind_left_padding_decodes_as_it_would_alone(pad):
    """A row whose cache starts with ``pad`` masked slots (left padding, or a request that joined a
    running batch) gets, bit for bit, what it gets with those slots gone: attention scores and sums
    its keys in groups of four from its first visible key, whatever the padding (the padding's
    keys hold garbage here, large enough to show if they were read)."""
    rng = np.random.default_rng(5)
    E, H, n_inner, S = 64, 4, 256, 11
    layer = K.decode_weights(_random_layer(rng, E, n_inner, "float32"), E, True)
    x = rng.standard_normal((1, E)).astype(np.float32)
    sincos = rng.standard_normal((1, 8)).astype(np.float32)
    kv = rng.standard_normal((2, 1, H, S, E // H)).astype(np.float32)
    garbage = np.full((2, 1, H, pad, E // H), 1e4, np.float32)
    padded = np.concatenate([garbage, kv], axis=3)
    allowed = np.concatenate([np.zeros((1, pad), bool), np.ones((1, S), bool)], axis=1)
    alone = K.decode_layers(x.copy(), [layer], 1e-5, sincos, 8, H, [kv[0].copy()], [kv[1].copy()], S,
                            np.ones((1, S), bool))
    behind = K.decode_layers(x.copy(), [layer], 1e-5, sincos, 8, H, [padded[0].copy()], [padded[1].copy()], S + pad,
                             allowed)
    np.testing.assert_array_equal(behind, alone)
